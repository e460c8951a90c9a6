package e2e

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ferrymigrate/ferry"
)

var bin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "ferry-e2e-bin")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	bin = filepath.Join(dir, "ferry")
	args := []string{"build", "-o", bin}
	if raceEnabled {
		args = append(args, "-race")
	}
	out, err := exec.Command("go", append(args, "../cmd/ferry")...).CombinedOutput()
	if err != nil {
		fmt.Fprintf(os.Stderr, "build ferry: %v\n%s", err, out)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

func freePort(t testing.TB) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// server is a running `ferry server --dev`.
type server struct {
	cmd         *exec.Cmd
	addr        string
	dataAddr    string // the data plane's listening address
	token       string
	fingerprint string
	log         *bytes.Buffer
	done        chan error
}

func startServer(t testing.TB, data string) *server {
	t.Helper()
	api, dp := freePort(t), freePort(t)
	s := &server{addr: "https://" + api, dataAddr: dp, log: &bytes.Buffer{}, done: make(chan error, 1)}
	s.cmd = exec.Command(bin, "server", "--dev", "--data", data, "--listen", api, "--data-listen", dp, "--advertise", "127.0.0.1")
	s.cmd.Stderr = s.log
	stdout, err := s.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := s.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		s.cmd.Process.Kill()
		<-s.done
		if t.Failed() {
			t.Logf("server log:\n%s", s.log)
		}
	})
	banner := make(chan string, 1)
	go func() {
		var all strings.Builder
		sent := false
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			all.WriteString(sc.Text() + "\n")
			if !sent && strings.Contains(all.String(), "CA fingerprint") && strings.Count(all.String(), "\n") >= 8 {
				banner <- all.String()
				sent = true
			}
		}
		if !sent {
			banner <- all.String()
		}
		s.done <- s.cmd.Wait()
	}()
	var out string
	select {
	case out = <-banner:
	case <-time.After(60 * time.Second):
		t.Fatalf("server printed no banner; log:\n%s", s.log)
	}
	if m := regexp.MustCompile(`fyt_[a-z0-9_]+`).FindString(out); m != "" {
		s.token = m
	}
	if m := regexp.MustCompile(`(?m)^\s+([0-9a-f]{64})\s*$`).FindStringSubmatch(out); m != nil {
		s.fingerprint = m[1]
	}
	if s.fingerprint == "" {
		t.Fatalf("no CA fingerprint in banner:\n%s", out)
	}
	// Wait until the API answers.
	deadline := time.Now().Add(30 * time.Second)
	for {
		if c, err := net.Dial("tcp", api); err == nil {
			c.Close()
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("API never listened; log:\n%s", s.log)
		}
		time.Sleep(50 * time.Millisecond)
	}
	return s
}

// ferryCmd runs the CLI with the given environment and returns stdout, or
// stderr in the error.
func ferryCmd(t *testing.T, env []string, args ...string) (string, error) {
	t.Helper()
	cmd := exec.Command(bin, args...)
	cmd.Env = append(os.Environ(), env...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	if err != nil {
		return stdout.String(), fmt.Errorf("ferry %s: %v: %s\n%s", strings.Join(args, " "), err, stderr.String(), stdout.String())
	}
	return stdout.String(), nil
}

// run is ferryCmd that fails the test on error.
func run(t *testing.T, env []string, args ...string) string {
	t.Helper()
	out, err := ferryCmd(t, env, args...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// loopDevice makes a sparse file on a loop device, or skips loudly when
// not root (CI runs as root, so there it always runs).
func loopDevice(t *testing.T, size string) string {
	t.Helper()
	if os.Geteuid() != 0 {
		skip(t, "loop devices need root")
	}
	img := filepath.Join(t.TempDir(), "disk.img")
	if out, err := exec.Command("truncate", "-s", size, img).CombinedOutput(); err != nil {
		t.Fatalf("truncate: %v %s", err, out)
	}
	out, err := exec.Command("losetup", "--find", "--show", img).CombinedOutput()
	if err != nil {
		skip(t, fmt.Sprintf("losetup failed: %v %s", err, out))
	}
	dev := strings.TrimSpace(string(out))
	t.Cleanup(func() { exec.Command("losetup", "-d", dev).Run() })
	return dev
}

func skip(t *testing.T, why string) {
	t.Helper()
	if os.Getenv("FERRY_TEST_REQUIRE_ALL") == "1" {
		t.Fatalf("required integration test cannot run: %s", why)
	}
	t.Skipf("SKIPPED (set up what is missing to run it): %s", why)
}

// TestMainJob is the README's main job: server, login, install token,
// agent pairing with a real block device, and the server listed with its
// facts; then the operator disconnects it and its certificate stops
// working, and the server shuts down cleanly on SIGTERM.
func TestMainJob(t *testing.T) {
	dev := loopDevice(t, "256M")
	dir := t.TempDir()
	s := startServer(t, filepath.Join(dir, "server"))
	if s.token == "" {
		t.Fatal("dev server printed no admin token")
	}
	env := []string{"FERRY_CONFIG=" + filepath.Join(dir, "cli.json"), "FERRY_ADDR=", "FERRY_TOKEN=", "FERRY_CA_FINGERPRINT="}

	// A wrong pin is refused before any token is sent.
	_, err := ferryCmd(t, env, "login", "--addr", s.addr, "--token", s.token, "--ca-fingerprint", strings.Repeat("ab", 32))
	if err == nil {
		t.Fatal("login with a wrong CA fingerprint succeeded")
	}
	run(t, env, "login", "--addr", s.addr, "--token", s.token, "--ca-fingerprint", s.fingerprint)
	if fi, err := os.Stat(filepath.Join(dir, "cli.json")); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("CLI config mode: %v %v", fi, err)
	}

	out := run(t, env, "install-tokens", "create", "--name", "wave-1", "--max-uses", "1", "--tag", "env=e2e", "-o", "json")
	var it struct {
		ID     string `json:"id"`
		Secret string `json:"secret"`
	}
	if err := json.Unmarshal([]byte(out), &it); err != nil || !strings.HasPrefix(it.Secret, "fyi_") {
		t.Fatalf("install token output %q: %v", out, err)
	}

	state := filepath.Join(dir, "agent")
	agentArgs := []string{"agent", "--server", s.addr, "--install-token", it.Secret, "--ca-fingerprint", s.fingerprint,
		"--state-dir", state, "--disk", dev, "--once"}
	out = run(t, nil, agentArgs...)
	if !strings.Contains(out, "accepted this agent") {
		t.Fatalf("agent output: %s", out)
	}
	for _, f := range []string{"agent.key", "agent.crt", "ca.crt", "state.json"} {
		fi, err := os.Stat(filepath.Join(state, f))
		if err != nil || fi.Mode().Perm() != 0o600 {
			t.Fatalf("agent state %s: %v %v", f, fi, err)
		}
	}

	out = run(t, env, "servers", "list", "-o", "json")
	var servers []ferry.SourceServer
	if err := json.Unmarshal([]byte(out), &servers); err != nil {
		t.Fatalf("servers list json: %v\n%s", err, out)
	}
	host, _ := os.Hostname()
	if len(servers) != 1 || servers[0].Hostname != host || servers[0].Lifecycle != ferry.LifecycleNotReady ||
		len(servers[0].Disks) != 1 || servers[0].Disks[0].Name != filepath.Base(dev) || servers[0].Disks[0].SizeBytes != 256<<20 ||
		servers[0].Tags["env"] != "e2e" || servers[0].CPUs < 1 || servers[0].RAMBytes == 0 {
		t.Fatalf("servers list: %+v", servers)
	}
	id := servers[0].ID
	table := run(t, env, "servers", "list")
	if !strings.Contains(table, id) || !strings.Contains(table, "NOT_READY") {
		t.Fatalf("table output:\n%s", table)
	}

	// The install token had one use: a second machine is refused.
	_, err = ferryCmd(t, nil, "agent", "--server", s.addr, "--install-token", it.Secret, "--ca-fingerprint", s.fingerprint,
		"--state-dir", filepath.Join(dir, "agent2"), "--disk", dev, "--machine-id", "other-machine", "--once")
	if err == nil || !strings.Contains(err.Error(), "used up") {
		t.Fatalf("second pairing with a one-use token: %v", err)
	}

	// Restarting the agent reuses its identity, no token needed.
	run(t, nil, "agent", "--state-dir", state, "--once")

	// Replication controls from the CLI.
	if out := run(t, env, "replication", "pause", id); !strings.Contains(out, "set to PAUSE") {
		t.Fatalf("pause: %s", out)
	}
	if _, err := ferryCmd(t, env, "replication", "pause", id); err == nil || !strings.Contains(err.Error(), "409") {
		t.Fatalf("pausing twice: %v", err)
	}
	run(t, env, "replication", "resume", id)
	run(t, env, "replication", "throttle", id, "1000000")
	var shown ferry.SourceServer
	if err := json.Unmarshal([]byte(run(t, env, "servers", "show", id, "-o", "json")), &shown); err != nil ||
		shown.ReplicationSetup.BandwidthBytesPerSec != 1000000 || shown.Desired != ferry.DesiredRun {
		t.Fatalf("after throttle: %+v %v", shown.ReplicationSetup, err)
	}

	// Disconnect: the agent's certificate stops working at once.
	tok := run(t, env, "tokens", "create", "--name", "ops", "--role", "operator", "-o", "json")
	var opTok struct{ Secret string }
	_ = json.Unmarshal([]byte(tok), &opTok)
	if err := apiPost(s, opTok.Secret, "/servers/"+id+"/disconnect"); err != nil {
		t.Fatal(err)
	}
	if _, err := ferryCmd(t, nil, "agent", "--state-dir", state, "--once"); err == nil {
		t.Fatal("a disconnected agent's certificate still works")
	}

	// A viewer token cannot create tokens.
	vt := run(t, env, "tokens", "create", "--name", "ro", "--role", "viewer", "-o", "json")
	var viewer struct{ Secret string }
	_ = json.Unmarshal([]byte(vt), &viewer)
	_, err = ferryCmd(t, append(env, "FERRY_TOKEN="+viewer.Secret), "tokens", "create", "--name", "x")
	if err == nil || !strings.Contains(err.Error(), "403") {
		t.Fatalf("viewer created a token: %v", err)
	}

	// Graceful shutdown on SIGTERM.
	if err := s.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-s.done:
		s.done <- err
		if err != nil {
			t.Fatalf("server exit after SIGTERM: %v\n%s", err, s.log)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("server did not stop within 20 s of SIGTERM")
	}
	if !strings.Contains(s.log.String(), "ferry server stopping") {
		t.Fatalf("no shutdown log:\n%s", s.log)
	}
	if strings.Contains(s.log.String(), s.token) || strings.Contains(s.log.String(), it.Secret) {
		t.Fatal("a secret appears in the server log")
	}
}

// TestServerWithoutDevNeedsEverything: a clear start-up error naming what
// is missing.
func TestServerWithoutDevNeedsEverything(t *testing.T) {
	_, err := ferryCmd(t, []string{"FERRY_DEV=", "FERRY_DATA_DIR=", "FERRY_DATABASE="}, "server", "--data", t.TempDir())
	if err == nil {
		t.Fatal("server without --dev started with nothing configured")
	}
	for _, want := range []string{"database", "ca_cert", "ca_key", "tls_cert", "tls_key"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error does not name %s: %v", want, err)
		}
	}
}

func apiPost(s *server, token, path string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := clientFor(s, token)
	if err != nil {
		return err
	}
	return c.Do(ctx, "POST", path, nil, nil, nil)
}
