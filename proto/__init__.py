"""Generated gRPC contracts. Source: proto/<pkg>/<ver>/*.proto; regenerate with `python scripts/gen_proto.py`."""
