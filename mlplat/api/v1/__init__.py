"""Generated from proto/mlplat/v1 by scripts/gen_proto.py: do not edit."""
