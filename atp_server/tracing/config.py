"""The [tracing] section: whether to trace, where spans go, what share of new traces to keep."""
from dataclasses import dataclass

# "otlp": OTLP/HTTP protobuf to `endpoint` (an OpenTelemetry collector, Jaeger >= 1.35, Tempo);
# "console": one JSON span per line on stdout (a quick look without a collector);
# "memory": the newest spans kept in process (tests read them; nothing leaves the process).
EXPORTERS = ("otlp", "console", "memory")


@dataclass(frozen=True, slots=True)
class TracingConfig:
    enabled: bool = False
    exporter: str = "otlp"
    # The OTLP/HTTP traces path of a collector on this host (OpenTelemetry's own default port).
    endpoint: str = "http://127.0.0.1:4318/v1/traces"
    service_name: str = "atp"
    # Share of traces *started here* that are kept; a client's traceparent decides for its own
    # trace (parent-based sampling), so a trace is never kept at one hop and dropped at the next.
    sample_ratio: float = 1.0


# Range rules in config.py's _check notation.
CHECKS = {"exporter": ("one_of", *EXPORTERS), "endpoint": ("http_url",),
          "service_name": ("nonempty",), "sample_ratio": ("in", 0, 1)}


def parse_tracing(table, typed, check) -> TracingConfig:
    """The [tracing] section, with config.py's `_typed` (unknown keys, types) and `_check` (ranges);
    both raise the ConfigError naming the key."""
    values = typed("tracing", table, TracingConfig)
    check("tracing", values, CHECKS)
    return TracingConfig(**values)
