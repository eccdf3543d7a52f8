"""`python -m bench load`: the load generator for ATP's transports (see bench/load/cli.py)."""
