"""The in-cluster dispatcher: queued Buildkite jobs become Kubernetes Jobs."""
