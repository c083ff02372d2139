package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

const allButSysResource = uint64(0x1fffeffffff) // CAP_SYS_RESOURCE (24) missing

func TestParseCapBnd(t *testing.T) {
	got, err := parseCapBnd([]byte("Name:\tx\nCapBnd:\t000001fffeffffff\nCapAmb:\t0\n"))
	if err != nil || got != allButSysResource {
		t.Fatalf("parseCapBnd = %x, %v", got, err)
	}
	if _, err := parseCapBnd([]byte("Name:\tx\n")); err == nil {
		t.Fatal("want an error without CapBnd")
	}
}

func TestSubcommand(t *testing.T) {
	cases := []struct {
		args []string
		cmd  string
		rest []string
	}{
		{[]string{"--root", "/run/runc", "--log", "x.log", "create", "--bundle", "/b", "id"}, "create", []string{"--bundle", "/b", "id"}},
		{[]string{"--root=/r", "--systemd-cgroup", "exec", "--process", "/p.json", "id"}, "exec", []string{"--process", "/p.json", "id"}},
		{[]string{"--version"}, "", nil},
	}
	for _, c := range cases {
		cmd, rest := subcommand(c.args)
		if cmd != c.cmd || !reflect.DeepEqual(rest, c.rest) {
			t.Errorf("subcommand(%q) = %q %q, want %q %q", c.args, cmd, rest, c.cmd, c.rest)
		}
	}
}

func TestFlagValue(t *testing.T) {
	for _, args := range [][]string{
		{"--bundle", "/b", "id"}, {"--bundle=/b", "id"}, {"-b", "/b", "id"}, {"-bundle", "/b"},
	} {
		if got := flagValue(args, "--bundle", "-b"); got != "/b" {
			t.Errorf("flagValue(%q) = %q", args, got)
		}
	}
	if got := flagValue([]string{"--", "--bundle", "/b"}, "--bundle", "-b"); got != "" {
		t.Errorf("flagValue after -- = %q", got)
	}
}

func TestFilterSpecDropsOnlyMissingCapabilities(t *testing.T) {
	in := `{"ociVersion":"1.0.2","process":{"user":{"uid":0,"gid":0},
	  "rlimits":[{"type":"RLIMIT_NOFILE","hard":18446744073709551615,"soft":18446744073709551615}],
	  "capabilities":{"bounding":["CAP_CHOWN","CAP_SYS_RESOURCE","CAP_SYS_ADMIN"],
	  "effective":["CAP_SYS_RESOURCE"],"permitted":["CAP_CHOWN","CAP_SYS_RESOURCE"]}}}`
	out, changed, err := filterJSON([]byte(in), allButSysResource, true)
	if err != nil || !changed {
		t.Fatalf("filterJSON: changed=%v err=%v", changed, err)
	}
	if strings.Contains(string(out), "CAP_SYS_RESOURCE") {
		t.Fatalf("CAP_SYS_RESOURCE still present: %s", out)
	}
	if !strings.Contains(string(out), "18446744073709551615") {
		t.Fatalf("64-bit rlimit was not kept exactly: %s", out)
	}
	var doc struct {
		Process struct {
			Capabilities map[string][]string
		}
	}
	if err := json.Unmarshal(out, &doc); err != nil {
		t.Fatal(err)
	}
	want := map[string][]string{
		"bounding":  {"CAP_CHOWN", "CAP_SYS_ADMIN"},
		"effective": {},
		"permitted": {"CAP_CHOWN"},
	}
	if !reflect.DeepEqual(doc.Process.Capabilities, want) {
		t.Fatalf("capabilities = %v, want %v", doc.Process.Capabilities, want)
	}
}

func TestFilterLeavesCompleteBoundingSetAlone(t *testing.T) {
	in := `{"process":{"capabilities":{"bounding":["CAP_SYS_RESOURCE"]}}}`
	_, changed, err := filterJSON([]byte(in), ^uint64(0), true)
	if err != nil || changed {
		t.Fatalf("changed=%v err=%v, want untouched", changed, err)
	}
}

func TestAdjustRewritesBundleAndProcessFiles(t *testing.T) {
	dir := t.TempDir()
	cfg := filepath.Join(dir, "config.json")
	proc := filepath.Join(dir, "process.json")
	must(t, os.WriteFile(cfg, []byte(`{"process":{"capabilities":{"bounding":["CAP_SYS_RESOURCE","CAP_KILL"]}}}`), 0o600))
	must(t, os.WriteFile(proc, []byte(`{"args":["sh"],"capabilities":{"effective":["CAP_SYS_RESOURCE"]}}`), 0o600))

	must(t, adjust([]string{"--root", "/r", "create", "--bundle", dir, "c1"}, allButSysResource))
	must(t, adjust([]string{"exec", "--process", proc, "c1"}, allButSysResource))
	for _, f := range []string{cfg, proc} {
		data, err := os.ReadFile(f)
		must(t, err)
		if strings.Contains(string(data), "CAP_SYS_RESOURCE") {
			t.Errorf("%s still has CAP_SYS_RESOURCE: %s", f, data)
		}
	}
	if st, _ := os.Stat(cfg); st.Mode().Perm() != 0o600 {
		t.Errorf("mode changed to %v", st.Mode().Perm())
	}
	// Other subcommands leave files alone.
	must(t, adjust([]string{"state", "c1"}, allButSysResource))
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}
