module stackgen.local/pause

go 1.24
