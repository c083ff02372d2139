package main

import (
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"
)

// The test binary re-runs itself as the pause process.
func TestMain(m *testing.M) {
	if os.Getenv("PAUSE_TEST_RUN") == "1" {
		main()
		return
	}
	os.Exit(m.Run())
}

func TestVersion(t *testing.T) {
	cmd := exec.Command(os.Args[0], "-v")
	cmd.Env = append(os.Environ(), "PAUSE_TEST_RUN=1")
	out, err := cmd.Output()
	if err != nil || !strings.HasPrefix(string(out), "pause version ") {
		t.Fatalf("-v: %q, %v", out, err)
	}
}

func TestExitsZeroOnTerm(t *testing.T) {
	cmd := exec.Command(os.Args[0])
	cmd.Env = append(os.Environ(), "PAUSE_TEST_RUN=1")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(200 * time.Millisecond)
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("exit after SIGTERM: %v", err)
		}
	case <-time.After(5 * time.Second):
		_ = cmd.Process.Kill()
		t.Fatal("pause did not exit on SIGTERM")
	}
}

func TestReapsExitedChildren(t *testing.T) {
	child := exec.Command("true")
	if err := child.Start(); err != nil {
		t.Skip("no true command:", err)
	}
	time.Sleep(100 * time.Millisecond)
	reap()
	// After reap, waiting again finds no such child.
	var status syscall.WaitStatus
	if pid, _ := syscall.Wait4(child.Process.Pid, &status, syscall.WNOHANG, nil); pid > 0 {
		t.Fatalf("child %d was still waitable after reap", pid)
	}
}
