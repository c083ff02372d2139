module stackgen.local/runc-wrapper

go 1.24
