"""[[models]] snippets that several test modules add to the embedded default configuration."""

# An embeddings model on the simulated provider, priced high for output and rated low so that
# chat routing never picks it.
EMBED_MODEL = """
[[models]]
id = "sim-embed"
provider = "sim"
price_in_per_mtok = 0.02
price_out_per_mtok = 99.0
quality = 0.01
latency_ms = 9000
capabilities = ["embeddings"]
"""

# A provider whose every call fails and its one model, rated high and free so routing tries it:
# its breaker opens (failover tests, the dashboard's red row, breaker events for webhooks).
BROKEN_MODEL = """
[[providers]]
name = "broken"
type = "simulated"
failure_rate = 1.0

[[models]]
id = "sim-broken"
provider = "broken"
quality = 0.9
latency_ms = 1
price_in_per_mtok = 0.0
price_out_per_mtok = 0.0
"""
