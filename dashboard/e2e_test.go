package dashboard_test

import (
	"bufio"
	"context"
	"crypto/rand"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ferrymigrate/ferry"
	"github.com/ferrymigrate/ferry/agent"
	"github.com/ferrymigrate/ferry/api"
	"github.com/ferrymigrate/ferry/config"
	"github.com/ferrymigrate/ferry/controlplane"
	"github.com/ferrymigrate/ferry/pki"
	"github.com/ferrymigrate/ferry/server"
)

// skipOrFail skips when a tool the browser test needs is missing, or fails
// when FERRY_TEST_REQUIRE_ALL=1 says nothing may be skipped.
func skipOrFail(t *testing.T, format string, args ...any) {
	t.Helper()
	msg := fmt.Sprintf(format, args...)
	if os.Getenv("FERRY_TEST_REQUIRE_ALL") == "1" {
		t.Fatalf("%s (FERRY_TEST_REQUIRE_ALL=1 forbids skipping)", msg)
	}
	t.Skipf("SKIPPED, NOT PASSED: %s; run scripts/setup.sh", msg)
}

// TestDashboardInChromium starts a real server and drives the dashboard in
// headless Chromium with Playwright: sign in, live progress, filters,
// sorting, the server page, pausing replication as operator, a test launch
// of a server an agent really replicates (snapshot, QEMU) and its job log,
// no action buttons for a viewer, a token revoked and one expired while
// the page is open.
// Screenshots at 1280×800 and 390×844 are kept in the test's directory
// (FERRY_SCREENSHOT_DIR overrides it, to keep them after the test).
func TestDashboardInChromium(t *testing.T) {
	if testing.Short() {
		t.Skip("browser test skipped in -short mode")
	}
	node, err := exec.LookPath("node")
	if err != nil {
		skipOrFail(t, "node is not installed")
	}
	chromium := "/usr/bin/chromium"
	if _, err := os.Stat(chromium); err != nil {
		skipOrFail(t, "%s is not installed (apt-get install chromium)", chromium)
	}
	script, _ := filepath.Abs("e2e/ui.mjs")
	if _, err := os.Stat("e2e/node_modules/playwright-core"); err != nil {
		skipOrFail(t, "playwright-core is not installed (npm install --prefix dashboard/e2e)")
	}

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	dir := t.TempDir()
	shots := os.Getenv("FERRY_SCREENSHOT_DIR")
	if shots == "" {
		shots = filepath.Join(dir, "screenshots")
	}
	if err := os.MkdirAll(shots, 0o755); err != nil {
		t.Fatal(err)
	}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	srv, err := server.Start(ctx, config.Server{Dev: true, DataDir: filepath.Join(dir, "data"), Listen: "127.0.0.1:0", DataListen: "127.0.0.1:0"}, log, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	// The control plane's clock, set before it serves: the test moves it
	// forward to expire a token while its page is open, without sleeping.
	var skew atomic.Int64
	srv.ControlPlane().Now = func() time.Time { return time.Now().Add(time.Duration(skew.Load())) }
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ctx) }()
	defer func() {
		cancel()
		if err := <-served; err != nil {
			t.Errorf("serve: %v", err)
		}
	}()
	st := srv.Store()
	now := time.Now().UTC()
	op, err := controlplane.CreateToken(ctx, st, "ui-operator", ferry.RoleOperator, now, 0)
	if err != nil {
		t.Fatal(err)
	}
	viewer, err := controlplane.CreateToken(ctx, st, "ui-viewer", ferry.RoleViewer, now, 0)
	if err != nil {
		t.Fatal(err)
	}
	seed(t, st, now)
	began := time.Now()
	realID, admin := startRealReplica(ctx, t, srv, filepath.Join(dir, "agent"))
	t.Logf("real replica %s READY_FOR_TEST in %.1fs", realID, time.Since(began).Seconds())
	// Before the server stops (defers run last first), even if the test
	// fails: no QEMU outlives the test.
	defer terminateInstance(ctx, t, srv, admin, realID)

	cmd := exec.CommandContext(ctx, node, script)
	cmd.Dir = filepath.Dir(script)
	cmd.Env = append(os.Environ(),
		"FERRY_URL=https://"+srv.APIAddr, "OP_TOKEN="+op.Secret, "VIEWER_TOKEN="+viewer.Secret,
		"SHOT_DIR="+shots, "CHROMIUM="+chromium, "REAL_ID="+realID)
	stdin, _ := cmd.StdinPipe()
	stdout, _ := cmd.StdoutPipe()
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var out []string
	sc := bufio.NewScanner(stdout)
	for sc.Scan() {
		line := sc.Text()
		out = append(out, line)
		t.Log(line)
		what, ok := strings.CutPrefix(line, "need: ")
		if !ok {
			continue
		}
		if id, ok := strings.CutPrefix(what, "job-ended "); ok {
			waitJob(ctx, t, st, id)
			fmt.Fprintln(stdin, "done "+what)
			continue
		}
		if what == "expiring-token" {
			// A token that will run out while its page is open.
			tok, err := controlplane.CreateToken(ctx, st, "ui-expiring", ferry.RoleViewer, time.Now().UTC(), time.Hour)
			if err != nil {
				t.Error(err)
			}
			fmt.Fprintf(stdin, "done %s %s\n", what, tok.Secret)
			continue
		}
		switch what {
		case "progress":
			if _, err := st.UpdateServer(ctx, "s-1", func(s *ferry.SourceServer) error {
				s.Disks[0].ReplicatedBytes = s.Disks[0].SizeBytes * 8 / 10
				s.Disks[1].ReplicatedBytes = s.Disks[1].SizeBytes * 8 / 10
				return nil
			}); err != nil {
				t.Error(err)
			}
		case "history":
			cp := srv.ControlPlane()
			for i := range 6 {
				if _, err := st.UpdateServer(ctx, "s-3", func(s *ferry.SourceServer) error {
					s.Replication.LagSeconds = 420 + 30*float64(i)
					return nil
				}); err != nil {
					t.Error(err)
				}
				if err := cp.SampleHistory(ctx); err != nil {
					t.Error(err)
				}
				time.Sleep(200 * time.Millisecond)
			}
		case "expire":
			// Two hours later for the control plane: the hour is up.
			skew.Store(int64(2 * time.Hour))
		case "revoke-viewer":
			if err := st.RevokeToken(ctx, viewer.ID, time.Now().UTC()); err != nil {
				t.Error(err)
			}
		}
		fmt.Fprintln(stdin, "done "+what)
	}
	err = cmd.Wait()
	if err != nil || len(out) == 0 || out[len(out)-1] != "ok" {
		t.Fatalf("browser script failed: %v\nstdout:\n%s\nstderr:\n%s", err, strings.Join(out, "\n"), stderr.String())
	}
	s1, err := st.Server(ctx, "s-1")
	if err != nil {
		t.Fatal(err)
	}
	if s1.Desired != ferry.DesiredPause {
		t.Errorf("s-1 desired replication %q after the pause click, want PAUSE", s1.Desired)
	}
	for _, f := range []string{"servers-1280x800.png", "server-1280x800.png", "applications-1280x800.png", "servers-390x844.png", "server-390x844.png",
		"server-lagging-1280x800.png", "server-joblog-1280x800.png", "usage-1280x800.png", "server-real-viewer-390x844.png", "session-expired-1280x800.png"} {
		if fi, err := os.Stat(filepath.Join(shots, f)); err != nil || fi.Size() == 0 {
			t.Errorf("screenshot %s missing", f)
		}
	}
	t.Logf("screenshots in %s", shots)
}

// startRealReplica pairs an agent (in this process) with a file-backed
// disk, replicates it over the real data plane into the real replica store
// until the server is READY_FOR_TEST, and sets launch settings that boot
// it under QEMU quickly (no conversion, no post-launch checks: the launch
// end to end is e2e's job; this one is about the dashboard). It returns
// the server's id and an admin API client; the agent runs until ctx ends.
func startRealReplica(ctx context.Context, t *testing.T, srv *server.Server, dir string) (string, *api.Client) {
	t.Helper()
	if _, err := exec.LookPath("qemu-system-x86_64"); err != nil {
		skipOrFail(t, "qemu-system-x86_64 is not installed")
	}
	st := srv.Store()
	admin, err := controlplane.CreateToken(ctx, st, "ui-admin", ferry.RoleAdmin, time.Now().UTC(), 0)
	if err != nil {
		t.Fatal(err)
	}
	pin, err := pki.ParseFingerprint(srv.CAFingerprint())
	if err != nil {
		t.Fatal(err)
	}
	cl, err := api.NewClient("https://"+srv.APIAddr, admin.Secret, pki.ClientTLSConfig(pin, nil))
	if err != nil {
		t.Fatal(err)
	}
	it, err := cl.CreateInstallToken(ctx, &api.CreateInstallTokenRequest{Name: "ui-real", ExpiresInSeconds: 600})
	if err != nil {
		t.Fatal(err)
	}
	// A 16 MiB disk: 4 MiB of random data, some text, zeros.
	disk := filepath.Join(dir, "realdisk")
	img := make([]byte, 16<<20)
	rand.Read(img[:4<<20])
	copy(img[8<<20:], strings.Repeat("ferry dashboard test ", 10000))
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(disk, img, 0o600); err != nil {
		t.Fatal(err)
	}
	state := filepath.Join(dir, "state")
	paired, err := agent.PairFacts(ctx, agent.PairOptions{ServerURL: "https://" + srv.APIAddr, InstallToken: it.Secret, CAFingerprint: srv.CAFingerprint(), StateDir: state},
		&agent.Facts{MachineID: "m-real", Hostname: "real-1", OS: "Debian GNU/Linux 12", Kernel: "6.1.0-28-amd64", CPUs: 1, RAMBytes: 1 << 30,
			Disks: []api.PairDisk{{Name: "realdisk", SizeBytes: int64(len(img)), LogicalBlockSize: 512}}})
	if err != nil {
		t.Fatal(err)
	}
	conf, err := agent.DataPlaneTLS(state)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		done <- agent.Replicate(ctx, agent.Options{StateDir: state, Devices: []string{disk}, Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
			Dial: func(ctx context.Context) (net.Conn, error) {
				d := tls.Dialer{Config: conf}
				return d.DialContext(ctx, "tcp", srv.DataAddr)
			}})
	}()
	t.Cleanup(func() {
		if err := <-done; err != nil && !errors.Is(err, context.Canceled) {
			t.Errorf("agent: %v", err)
		}
	})
	deadline := time.Now().Add(time.Minute)
	for {
		s, err := st.Server(ctx, paired.SourceServerID)
		if err == nil && s.Lifecycle == ferry.LifecycleReadyForTest && s.Replication.State == ferry.ReplicationContinuous {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the real replica did not reach READY_FOR_TEST within a minute: %+v, %v", s, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
	if _, err := st.UpdateServer(ctx, paired.SourceServerID, func(s *ferry.SourceServer) error {
		s.LaunchSetup.Convert, s.LaunchSetup.PostLaunchActions = false, nil
		s.LaunchSetup.RightSizing, s.LaunchSetup.CPUs, s.LaunchSetup.MemoryMiB = ferry.RightSizingNone, 1, 128
		s.ApplicationID, s.WaveID = "app-1", "wave-1"
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return paired.SourceServerID, cl
}

// terminateInstance ends the test instance the browser launched, so no
// QEMU outlives the test.
func terminateInstance(ctx context.Context, t *testing.T, srv *server.Server, cl *api.Client, id string) {
	t.Helper()
	s, err := srv.Store().Server(ctx, id)
	if err != nil || s.Launched == nil || !s.Launched.TerminatedAt.IsZero() {
		return
	}
	// The disk boots nothing, so no guest answers the ACPI power button
	// and a terminate would wait its 30 s for one: stop the instance's
	// QEMU first (only the process whose command line names the
	// instance), then terminate through the API, which finds it gone and
	// removes its files.
	if b, err := os.ReadFile(filepath.Join(filepath.Dir(s.Launched.ConsoleLog), "qemu.pid")); err == nil {
		if pid, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil && pid > 0 {
			if cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid)); err == nil && strings.Contains(string(cmdline), s.Launched.ID) {
				if p, err := os.FindProcess(pid); err == nil {
					_ = p.Kill()
				}
			}
		}
	}
	var j ferry.Job
	if err := cl.Do(ctx, "POST", "/jobs/terminate", nil, api.StartJobRequest{SourceServerIDs: []string{id}}, &j); err != nil {
		t.Errorf("terminate the test instance: %v", err)
		return
	}
	waitJob(ctx, t, srv.Store(), j.ID)
}

// waitJob waits up to a minute for a job to end.
func waitJob(ctx context.Context, t *testing.T, st ferry.Store, id string) {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for time.Now().Before(deadline) {
		j, err := st.Job(ctx, id)
		if err == nil && j.Status == ferry.JobCompleted {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Errorf("job %s did not end within a minute", id)
}

// seed stores three servers, an application and a wave.
func seed(t *testing.T, st ferry.Store, now time.Time) {
	t.Helper()
	ctx := context.Background()
	w := &ferry.Wave{ID: "wave-1", Name: "wave 1", CreatedAt: now, UpdatedAt: now}
	a := &ferry.Application{ID: "app-1", Name: "billing", WaveID: "wave-1", Description: "invoices and payments", CreatedAt: now, UpdatedAt: now}
	if err := st.CreateWave(ctx, w); err != nil {
		t.Fatal(err)
	}
	if err := st.CreateApplication(ctx, a); err != nil {
		t.Fatal(err)
	}
	const gib = 1 << 30
	servers := []*ferry.SourceServer{
		{ID: "s-1", Hostname: "web-1", Lifecycle: ferry.LifecycleNotReady,
			Replication: ferry.ReplicationInfo{State: ferry.ReplicationInitialSync, ETASeconds: 1800, ReplicationServer: "rs-a"},
			Disks:       []ferry.Disk{{Name: "vda", SizeBytes: 40 * gib, ReplicatedBytes: 16 * gib, Boot: true}, {Name: "vdb", SizeBytes: 10 * gib, ReplicatedBytes: 4 * gib}}},
		{ID: "s-2", Hostname: "db-1", Lifecycle: ferry.LifecycleReadyForTest,
			Replication: ferry.ReplicationInfo{State: ferry.ReplicationContinuous, LagSeconds: 2, LastSnapshotAt: now.Add(-4 * time.Minute), ReplicationServer: "rs-a"},
			Disks:       []ferry.Disk{{Name: "sda", SizeBytes: 200 * gib, ReplicatedBytes: 200 * gib}}},
		{ID: "s-3", Hostname: "app-1", Lifecycle: ferry.LifecycleReadyForTest,
			Replication: ferry.ReplicationInfo{State: ferry.ReplicationBacklog, LagSeconds: 420, LastSnapshotAt: now.Add(-20 * time.Minute), ReplicationServer: "rs-b"},
			Disks:       []ferry.Disk{{Name: "vda", SizeBytes: 80 * gib, ReplicatedBytes: 80 * gib, BackloggedBytes: 3 * gib}}},
	}
	for _, s := range servers {
		s.MachineID = "m-" + s.ID
		s.OS, s.Kernel, s.CPUs, s.RAMBytes = "Debian GNU/Linux 12", "6.1.0-28-amd64", 4, 8*gib
		s.ApplicationID, s.WaveID = "app-1", "wave-1"
		s.ReplicationSetup, s.LaunchSetup = ferry.DefaultReplicationSettings(), ferry.DefaultLaunchSettings()
		s.CreatedAt, s.UpdatedAt, s.LastSeenAt = now, now, now
		if err := st.CreateServer(ctx, s); err != nil {
			t.Fatal(err)
		}
	}
}
