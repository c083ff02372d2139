"""Test support shared by unit tests, e2e tests and benchmarks (fakes and helpers)."""
