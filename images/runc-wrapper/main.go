// Command stackgen-runc runs the real runc after removing, from the container's OCI
// configuration, every capability that the calling process's capability bounding set lacks.
//
// Why: some virtual machines (and containers) run without CAP_SYS_RESOURCE in their bounding
// set. A privileged container asks for every capability, so runc fails with "unable to apply
// caps: operation not permitted". A capability outside the bounding set can never be granted
// anyway, so dropping it from the request changes nothing but the failure. Where the bounding
// set is complete the wrapper changes nothing.
//
// It edits:
//   - create/run: <bundle>/config.json (--bundle/-b, default the working directory)
//   - exec:       the --process/-p file (docker exec --privileged and kubectl exec into a
//     privileged container pass one)
//
// and then replaces itself with the real runc, with the same arguments. The real runc is
// $STACKGEN_REAL_RUNC, else the first of /usr/local/sbin/runc, /usr/local/bin/runc,
// /usr/sbin/runc, /usr/bin/runc that is not this program.
package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

// capNames maps Linux capability names to their numbers (linux/capability.h).
var capNames = map[string]uint{
	"CAP_CHOWN": 0, "CAP_DAC_OVERRIDE": 1, "CAP_DAC_READ_SEARCH": 2, "CAP_FOWNER": 3,
	"CAP_FSETID": 4, "CAP_KILL": 5, "CAP_SETGID": 6, "CAP_SETUID": 7, "CAP_SETPCAP": 8,
	"CAP_LINUX_IMMUTABLE": 9, "CAP_NET_BIND_SERVICE": 10, "CAP_NET_BROADCAST": 11,
	"CAP_NET_ADMIN": 12, "CAP_NET_RAW": 13, "CAP_IPC_LOCK": 14, "CAP_IPC_OWNER": 15,
	"CAP_SYS_MODULE": 16, "CAP_SYS_RAWIO": 17, "CAP_SYS_CHROOT": 18, "CAP_SYS_PTRACE": 19,
	"CAP_SYS_PACCT": 20, "CAP_SYS_ADMIN": 21, "CAP_SYS_BOOT": 22, "CAP_SYS_NICE": 23,
	"CAP_SYS_RESOURCE": 24, "CAP_SYS_TIME": 25, "CAP_SYS_TTY_CONFIG": 26, "CAP_MKNOD": 27,
	"CAP_LEASE": 28, "CAP_AUDIT_WRITE": 29, "CAP_AUDIT_CONTROL": 30, "CAP_SETFCAP": 31,
	"CAP_MAC_OVERRIDE": 32, "CAP_MAC_ADMIN": 33, "CAP_SYSLOG": 34, "CAP_WAKE_ALARM": 35,
	"CAP_BLOCK_SUSPEND": 36, "CAP_AUDIT_READ": 37, "CAP_PERFMON": 38, "CAP_BPF": 39,
	"CAP_CHECKPOINT_RESTORE": 40,
}

var realRuncCandidates = []string{"/usr/local/sbin/runc", "/usr/local/bin/runc", "/usr/sbin/runc", "/usr/bin/runc"}

// globalFlagsWithValue are runc's global flags that take a value (runc --help).
var globalFlagsWithValue = map[string]bool{
	"--root": true, "--log": true, "--log-format": true, "--criu": true, "--rootless": true,
}

func main() {
	args := os.Args[1:]
	real, err := findRealRunc()
	if err != nil {
		fail(err)
	}
	if bounding, err := boundingSet(); err == nil {
		if err := adjust(args, bounding); err != nil {
			fail(err)
		}
	}
	// If the bounding set cannot be read, pass everything through unchanged.
	if err := syscall.Exec(real, append([]string{real}, args...), os.Environ()); err != nil {
		fail(fmt.Errorf("exec %s: %w", real, err))
	}
}

func fail(err error) {
	fmt.Fprintf(os.Stderr, "stackgen-runc: %v\n", err)
	os.Exit(1)
}

func findRealRunc() (string, error) {
	self, _ := os.Executable()
	if self != "" {
		if resolved, err := filepath.EvalSymlinks(self); err == nil {
			self = resolved
		}
	}
	candidates := realRuncCandidates
	if env := os.Getenv("STACKGEN_REAL_RUNC"); env != "" {
		candidates = []string{env}
	}
	for _, c := range candidates {
		resolved, err := filepath.EvalSymlinks(c)
		if err != nil || resolved == self {
			continue
		}
		if st, err := os.Stat(resolved); err == nil && st.Mode().IsRegular() && st.Mode()&0o111 != 0 {
			return c, nil
		}
	}
	return "", fmt.Errorf("no real runc found (tried %s; set STACKGEN_REAL_RUNC)", strings.Join(candidates, ", "))
}

// boundingSet reads CapBnd from /proc/self/status.
func boundingSet() (uint64, error) {
	data, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0, err
	}
	return parseCapBnd(data)
}

func parseCapBnd(status []byte) (uint64, error) {
	for _, line := range strings.Split(string(status), "\n") {
		if rest, ok := strings.CutPrefix(line, "CapBnd:"); ok {
			return strconv.ParseUint(strings.TrimSpace(rest), 16, 64)
		}
	}
	return 0, fmt.Errorf("no CapBnd line in /proc/self/status")
}

// adjust finds the OCI file the runc command line refers to and removes the capabilities
// outside bounding from it.
func adjust(args []string, bounding uint64) error {
	cmd, rest := subcommand(args)
	switch cmd {
	case "create", "run":
		bundle := flagValue(rest, "--bundle", "-b")
		if bundle == "" {
			bundle = "."
		}
		return filterFile(filepath.Join(bundle, "config.json"), bounding, true)
	case "exec":
		if process := flagValue(rest, "--process", "-p"); process != "" {
			return filterFile(process, bounding, false)
		}
	}
	return nil
}

// subcommand splits runc's arguments into the subcommand and what follows it.
func subcommand(args []string) (string, []string) {
	for i := 0; i < len(args); i++ {
		a := args[i]
		if !strings.HasPrefix(a, "-") {
			return a, args[i+1:]
		}
		if !strings.Contains(a, "=") && globalFlagsWithValue[a] {
			i++
		}
	}
	return "", nil
}

// flagValue returns the value of a flag given as "--name v", "--name=v", "-n v" or "-n=v".
func flagValue(args []string, long, short string) string {
	for i, a := range args {
		if a == "--" {
			break
		}
		for _, name := range []string{long, short, strings.TrimPrefix(long, "-")} {
			if a == name && i+1 < len(args) {
				return args[i+1]
			}
			if v, ok := strings.CutPrefix(a, name+"="); ok {
				return v
			}
		}
	}
	return ""
}

// filterFile rewrites an OCI config (spec=true: the capabilities are under "process") or an
// OCI process file (spec=false) when it asks for capabilities outside bounding.
func filterFile(path string, bounding uint64, spec bool) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	out, changed, err := filterJSON(data, bounding, spec)
	if err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	if !changed {
		return nil
	}
	st, err := os.Stat(path)
	if err != nil {
		return err
	}
	tmp := path + ".stackgen-runc.tmp"
	if err := os.WriteFile(tmp, out, st.Mode().Perm()); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

func filterJSON(data []byte, bounding uint64, spec bool) ([]byte, bool, error) {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber() // rlimits and ids are 64-bit integers: never round-trip them as floats
	var doc map[string]any
	if err := dec.Decode(&doc); err != nil {
		return nil, false, err
	}
	process := doc
	if spec {
		p, ok := doc["process"].(map[string]any)
		if !ok {
			return nil, false, nil
		}
		process = p
	}
	caps, ok := process["capabilities"].(map[string]any)
	if !ok {
		return nil, false, nil
	}
	changed := false
	for set, v := range caps {
		list, ok := v.([]any)
		if !ok {
			continue
		}
		kept := make([]any, 0, len(list))
		for _, c := range list {
			name, _ := c.(string)
			if n, known := capNames[strings.ToUpper(name)]; known && bounding&(1<<n) == 0 {
				changed = true
				continue
			}
			kept = append(kept, c)
		}
		caps[set] = kept
	}
	if !changed {
		return nil, false, nil
	}
	out, err := json.Marshal(doc)
	return out, true, err
}
