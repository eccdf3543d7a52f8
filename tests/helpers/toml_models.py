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
