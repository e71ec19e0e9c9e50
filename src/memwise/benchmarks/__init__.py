"""Benchmarks that compare memwise with its peers in one run; see ``memwise bench``."""
