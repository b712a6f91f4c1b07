"""Benchmarks of the daemon (not part of the test suite): run them with `scripts/bench`."""
