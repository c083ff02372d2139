"""End-to-end tests on a real local control plane (kwokctl --runtime binary; see conftest.py)."""
