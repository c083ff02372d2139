// A stand-in for drjosh.dev/zzglob, written for stackgen: the Go module proxy refuses that
// module, and github.com/buildkite/agent/v3 needs it. It provides exactly the names the agent
// uses (see README.md); bin/setup points the agent build at it with a replace directive.
module drjosh.dev/zzglob

go 1.24
