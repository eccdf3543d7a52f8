"""OpenTelemetry traces, an optional extra: a span per request, per stage and per upstream attempt.

Three parts, so that a server without the extra never imports OpenTelemetry:

- `config.py`  — the `[tracing]` section (TracingConfig), checked at load like every section;
- `context.py` — W3C trace context without OpenTelemetry: the client's `traceparent` /
  `tracestate` onto the request, its trace id for the access log, and the header block the shared
  HTTP client adds to an upstream call (a context variable the attempt sets);
- `otel.py`    — the spans (OpenTelemetry SDK, the `otel` extra); `build()` imports it only when
  `[tracing] enabled = true`, and says which extra to install when it is missing.

With tracing off the pipeline holds `tracer = None`: one None check per request picks the
untraced stage scope, so no span object exists and no stage pays anything.
"""
from .config import TracingConfig

__all__ = ["TracingConfig", "build", "check", "INSTALL_HINT"]

INSTALL_HINT = "pip install 'atp[otel]'"


def build(cfg: TracingConfig, provider_types: dict[str, str]):
    """The pipeline's tracer for `cfg` (None when tracing is off). `provider_types` maps each
    configured provider name to its adapter type (for gen_ai.system on attempt spans)."""
    if not cfg.enabled:
        return None
    return _otel().Tracer(cfg, provider_types)


def check(cfg: TracingConfig) -> None:
    """The ConfigError build() would raise, without building anything (`atp serve --workers N`
    checks once, before the workers fork and each builds its own tracer)."""
    if cfg.enabled:
        _otel()


def _otel():
    try:
        from . import otel
    except ImportError as exc:
        from ..config import ConfigError    # here, not above: config.py imports this package
        raise ConfigError(f"tracing.enabled: true needs the OpenTelemetry extra, which is not "
                          f"installed (no module {exc.name or exc}): {INSTALL_HINT}") from None
    return otel
