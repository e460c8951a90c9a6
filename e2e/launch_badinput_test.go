package e2e

import (
	"bufio"
	"bytes"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ferrymigrate/ferry"
	"github.com/ferrymigrate/ferry/api"
	"github.com/ferrymigrate/ferry/internal/testimage"
)

// TestLaunchBadInput is issue 3's "Bad input" against the real server,
// replica store, job runner and qemu target, with an agent replicating a
// real bootable disk: each launch that cannot work ends FAILED with a
// reason naming what is wrong, leaves the server's lifecycle and
// replication as they were, and leaks nothing (no QEMU process, no
// instance files, no open NBD connection, the taken port still only the
// test's). A second launch while one runs is refused naming the running
// job; a repeated test launch replaces the previous instance.
func TestLaunchBadInput(t *testing.T) {
	realQEMU, err := exec.LookPath("qemu-system-x86_64")
	if err != nil {
		skip(t, "qemu-system-x86_64 is not installed")
	}
	img := testimage.ForTest(t)
	dir := t.TempDir()
	src := filepath.Join(dir, "source.img")
	mustRun(t, "cp", "--sparse=always", img.Path, src)
	dev := loopDeviceFile(t, src)

	// The server runs QEMU through a link the test can remove: "QEMU
	// missing" is the server's qemu_binary setting naming nothing.
	qemuLink := filepath.Join(dir, "bin", "qemu-system-x86_64")
	if err := os.MkdirAll(filepath.Dir(qemuLink), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(realQEMU, qemuLink); err != nil {
		t.Fatal(err)
	}
	t.Setenv("FERRY_QEMU_BINARY", qemuLink)

	start := time.Now()
	data := filepath.Join(dir, "server")
	s := startServer(t, data)
	ctx := t.Context()
	admin, err := clientFor(s, s.token)
	if err != nil {
		t.Fatal(err)
	}
	it, err := admin.CreateInstallToken(ctx, &api.CreateInstallTokenRequest{Name: "badinput", ExpiresInSeconds: 600})
	if err != nil {
		t.Fatal(err)
	}
	// Initial sync throttled to a crawl: the server stays without a
	// snapshot until the test lifts the throttle.
	var def ferry.Template
	if err := admin.Do(ctx, "GET", "/templates/default", nil, nil, &def); err != nil {
		t.Fatal(err)
	}
	slow := def.Replication
	slow.BandwidthBytesPerSec = 64 << 10
	if err := admin.Do(ctx, "PATCH", "/templates/default", nil, api.UpdateTemplateRequest{Replication: &slow}, nil); err != nil {
		t.Fatal(err)
	}
	agentLog := &bytes.Buffer{}
	agent := exec.Command(bin, "agent", "--server", s.addr, "--install-token", it.Secret, "--ca-fingerprint", s.fingerprint,
		"--state-dir", filepath.Join(dir, "agent"), "--disk", dev, "--machine-id", "launch-badinput")
	agent.Stdout, agent.Stderr = agentLog, agentLog
	if err := agent.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		agent.Process.Kill()
		agent.Wait()
		if t.Failed() {
			t.Logf("agent log:\n%s", agentLog)
		}
	}()
	srv := waitServer(t, admin, time.Minute, func(s *ferry.SourceServer) bool { return s.Replication.State == ferry.ReplicationInitialSync })

	// No snapshot yet. While the initial sync runs, a launch is refused
	// with the reason; marked READY_FOR_TEST by hand (as an operator may),
	// a launch from the latest snapshot fails the job naming the disk.
	err = admin.Do(ctx, "POST", "/jobs/start-test", nil, api.StartJobRequest{SourceServerIDs: []string{srv.ID}}, nil)
	if err == nil || !strings.Contains(err.Error(), "NOT_READY") || !strings.Contains(err.Error(), "initial sync must finish first") {
		t.Fatalf("launch during the initial sync: %v, want a refusal naming NOT_READY", err)
	}
	if err := admin.Do(ctx, "POST", "/servers/"+srv.ID+"/lifecycle", nil, api.ChangeLifecycleRequest{State: ferry.LifecycleReadyForTest}, nil); err != nil {
		t.Fatal(err)
	}
	var job ferry.Job
	if err := admin.Do(ctx, "POST", "/jobs/start-test", nil, api.StartJobRequest{SourceServerIDs: []string{srv.ID}, UseLatestSnapshot: true}, &job); err != nil {
		t.Fatal(err)
	}
	jl := waitJob(t, admin, job.ID, time.Minute)
	if jl.Servers[0].LaunchStatus != ferry.LaunchFailed || !strings.Contains(failureLine(jl), "has no snapshot yet") {
		t.Fatalf("launch from the latest snapshot with none: %s, want FAILED naming the missing snapshot; log:\n%s", jl.Servers[0].LaunchStatus, jobLog(jl))
	}
	t.Logf("no snapshot yet: %s", failureLine(jl))
	after := waitServer(t, admin, 5*time.Second, func(*ferry.SourceServer) bool { return true })
	if after.Lifecycle != ferry.LifecycleReadyForTest || after.Launched != nil || after.Replication.State != ferry.ReplicationInitialSync {
		t.Fatalf("after the failed launch: lifecycle %s, replication %s, launched %+v", after.Lifecycle, after.Replication.State, after.Launched)
	}
	checkNoLaunchLeaks(t, data, 0, nil)

	fast := slow
	fast.BandwidthBytesPerSec = 0
	if err := admin.Do(ctx, "PATCH", "/servers/"+url.PathEscape(srv.ID), nil, api.UpdateServerRequest{Replication: &fast}, nil); err != nil {
		t.Fatal(err)
	}
	srv = waitServer(t, admin, 3*time.Minute, func(s *ferry.SourceServer) bool {
		return s.Lifecycle == ferry.LifecycleReadyForTest && s.Replication.State == ferry.ReplicationContinuous
	})
	t.Logf("initial sync to CONTINUOUS once the throttle was lifted: %.1fs", time.Since(start).Seconds())

	base := srv.LaunchSetup
	base.RightSizing, base.CPUs, base.MemoryMiB, base.Convert = ferry.RightSizingNone, 1, 256, false
	base.PostLaunchActions = []ferry.PostLaunchAction{{ID: "boot", Name: "boot marker", Active: true, Order: 1, TimeoutSeconds: 120,
		Deployment: "TEST_AND_CUTOVER", Category: "VALIDATION", Parameters: map[string]string{"type": "boot_marker", "pattern": testimage.BootMarker}}}
	setLaunch := func(edit func(*ferry.LaunchSettings)) {
		t.Helper()
		ls := base
		ls.PostLaunchActions = append([]ferry.PostLaunchAction(nil), base.PostLaunchActions...)
		if edit != nil {
			edit(&ls)
		}
		if err := admin.Do(ctx, "PATCH", "/servers/"+url.PathEscape(srv.ID), nil, api.UpdateServerRequest{Launch: &ls}, nil); err != nil {
			t.Fatal(err)
		}
	}
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	takenPort := taken.Addr().(*net.TCPAddr).Port

	for _, tc := range []struct {
		name string
		req  api.StartJobRequest
		edit func(*ferry.LaunchSettings)
		// before and after run around the launch.
		before, after func()
		want          string // in the job log's failure line
	}{
		{name: "unknown launch template", req: api.StartJobRequest{LaunchTemplateID: "no-such-template"}, want: `unknown launch template "no-such-template"`},
		{name: "unknown launch target", edit: func(l *ferry.LaunchSettings) { l.Target = "nope" }, want: `unknown launch target "nope"`},
		{name: "QEMU missing",
			before: func() { os.Remove(qemuLink) },
			after: func() {
				if err := os.Symlink(realQEMU, qemuLink); err != nil {
					t.Fatal(err)
				}
			},
			want: "QEMU binary " + qemuLink + " not found"},
		{name: "host port taken", edit: func(l *ferry.LaunchSettings) {
			l.Network.Forwards = []ferry.PortForward{{HostPort: takenPort, GuestPort: 80}}
		}, want: fmt.Sprintf("host port in use: 127.0.0.1:%d (forward to guest port 80)", takenPort)},
		{name: "more memory than the host has", edit: func(l *ferry.LaunchSettings) { l.MemoryMiB = 1 << 20 },
			want: "not enough memory: the instance wants 1048576 MiB"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			setLaunch(tc.edit)
			before := waitServer(t, admin, 30*time.Second, func(s *ferry.SourceServer) bool { return s.Replication.State == ferry.ReplicationContinuous })
			if tc.before != nil {
				tc.before()
			}
			if tc.after != nil {
				defer tc.after()
			}
			req := tc.req
			req.SourceServerIDs = []string{srv.ID}
			began := time.Now()
			var job ferry.Job
			if err := admin.Do(ctx, "POST", "/jobs/start-test", nil, req, &job); err != nil {
				t.Fatalf("start: %v", err)
			}
			jl := waitJob(t, admin, job.ID, time.Minute)
			if got := jl.Servers[0].LaunchStatus; got != ferry.LaunchFailed {
				t.Fatalf("launch status %s, want FAILED; log:\n%s", got, jobLog(jl))
			}
			if !strings.Contains(failureLine(jl), tc.want) {
				t.Fatalf("failure reason %q does not contain %q; log:\n%s", failureLine(jl), tc.want, jobLog(jl))
			}
			t.Logf("failed in %.1fs: %s", time.Since(began).Seconds(), failureLine(jl))
			after := waitServer(t, admin, 30*time.Second, func(s *ferry.SourceServer) bool { return s.Replication.State == ferry.ReplicationContinuous })
			if after.Lifecycle != before.Lifecycle || after.Desired != before.Desired || after.Launched != nil || after.Replication.ErrorCode != before.Replication.ErrorCode {
				t.Errorf("server changed: lifecycle %s → %s, desired %s → %s, launched %+v, replication error %q → %q",
					before.Lifecycle, after.Lifecycle, before.Desired, after.Desired, after.Launched, before.Replication.ErrorCode, after.Replication.ErrorCode)
			}
			checkNoLaunchLeaks(t, data, takenPort, taken)
		})
	}

	// A second launch while one runs is refused naming the running job.
	setLaunch(nil)
	var first ferry.Job
	if err := admin.Do(ctx, "POST", "/jobs/start-test", nil, api.StartJobRequest{SourceServerIDs: []string{srv.ID}}, &first); err != nil {
		t.Fatal(err)
	}
	err = admin.Do(ctx, "POST", "/jobs/start-test", nil, api.StartJobRequest{SourceServerIDs: []string{srv.ID}}, nil)
	if err == nil || !strings.Contains(err.Error(), "is in job "+first.ID) {
		t.Fatalf("second launch while %s runs: %v, want a refusal naming it", first.ID, err)
	}
	jl = waitJob(t, admin, first.ID, 3*time.Minute)
	if jl.Servers[0].LaunchStatus != ferry.LaunchLaunched {
		t.Fatalf("first launch: %s; log:\n%s", jl.Servers[0].LaunchStatus, jobLog(jl))
	}
	srv = waitServer(t, admin, 10*time.Second, func(s *ferry.SourceServer) bool { return s.Lifecycle == ferry.LifecycleTesting })
	firstInst := srv.Launched.ID
	t.Logf("first test launch booted: %.1fs", time.Since(start).Seconds())

	// Launching again from TESTING replaces the instance: the previous one
	// is terminated, not left running without a record.
	var again ferry.Job
	if err := admin.Do(ctx, "POST", "/jobs/start-test", nil, api.StartJobRequest{SourceServerIDs: []string{srv.ID}}, &again); err != nil {
		t.Fatal(err)
	}
	jl = waitJob(t, admin, again.ID, 3*time.Minute)
	if jl.Servers[0].LaunchStatus != ferry.LaunchLaunched || !strings.Contains(jobLog(jl), "previous instance "+firstInst+" terminated") {
		t.Fatalf("repeated test launch: %s; log:\n%s", jl.Servers[0].LaunchStatus, jobLog(jl))
	}
	srv = waitServer(t, admin, 10*time.Second, func(s *ferry.SourceServer) bool { return s.Launched != nil && s.Launched.ID != firstInst })
	if pids := qemuProcesses(t, data); len(pids) != 1 {
		t.Errorf("QEMU processes after the repeated launch: %v, want only the new instance's", pids)
	}
	if _, err := os.Stat(filepath.Join(data, "instances", firstInst+".json")); !os.IsNotExist(err) {
		t.Errorf("the replaced instance left its state file: %v", err)
	}
	var term ferry.Job
	if err := admin.Do(ctx, "POST", "/jobs/terminate", nil, api.StartJobRequest{SourceServerIDs: []string{srv.ID}}, &term); err != nil {
		t.Fatal(err)
	}
	if jl := waitJob(t, admin, term.ID, time.Minute); jl.Servers[0].LaunchStatus != ferry.LaunchTerminated {
		t.Fatalf("terminate: %s; log:\n%s", jl.Servers[0].LaunchStatus, jobLog(jl))
	}
	checkNoLaunchLeaks(t, data, takenPort, taken)
	t.Logf("total: %.1fs", time.Since(start).Seconds())
}

// waitJob polls a job until it has ended.
func waitJob(t testing.TB, c *api.Client, id string, within time.Duration) *api.JobWithLog {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		var jl api.JobWithLog
		err := c.Do(t.Context(), "GET", "/jobs/"+url.PathEscape(id), nil, nil, &jl)
		if err == nil && jl.Status == ferry.JobCompleted {
			return &jl
		}
		if time.Now().After(deadline) {
			t.Fatalf("job %s did not end within %s (%v); log:\n%s", id, within, err, jobLog(&jl))
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func jobLog(jl *api.JobWithLog) string {
	var b strings.Builder
	for _, l := range jl.Log {
		fmt.Fprintf(&b, "  %s %-24s %s\n", l.Time.Format("15:04:05.000"), l.Event, l.Message)
	}
	return b.String()
}

// failureLine is the message of the job log's first failure event.
func failureLine(jl *api.JobWithLog) string {
	for _, l := range jl.Log {
		switch l.Event {
		case ferry.EventLaunchFailed, ferry.EventSnapshotFail, ferry.EventConversionFail, ferry.EventPostLaunchFail:
			return l.Message
		}
	}
	return ""
}

// qemuProcesses lists the pids of processes running with a path under the
// server's data directory on their command line (its instances' QEMUs).
func qemuProcesses(t *testing.T, data string) []int {
	t.Helper()
	var pids []int
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		cmd, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err == nil && bytes.Contains(cmd, []byte("qemu")) && bytes.Contains(cmd, []byte(data+"/")) {
			pids = append(pids, pid)
		}
	}
	return pids
}

// checkNoLaunchLeaks checks that no instance is left: no QEMU process,
// no instance files or state files, no NBD client connected to the
// server's launch socket, and the taken port still listened on by the
// test alone.
func checkNoLaunchLeaks(t *testing.T, data string, port int, taken net.Listener) {
	t.Helper()
	if pids := qemuProcesses(t, data); len(pids) > 0 {
		t.Errorf("QEMU processes left: %v", pids)
	}
	if ents, _ := os.ReadDir(filepath.Join(data, "instances")); len(ents) > 0 {
		var names []string
		for _, e := range ents {
			names = append(names, e.Name())
		}
		t.Errorf("instance files left: %v", names)
	}
	// /proc/net/unix lists the listening socket and each accepted
	// connection with the socket's path.
	sock := filepath.Join(data, "run", "nbd.sock")
	if n := countLines(t, "/proc/net/unix", func(f []string) bool { return len(f) >= 8 && f[7] == sock }); n != 1 {
		t.Errorf("%d entries for %s in /proc/net/unix, want 1 (the listener): an NBD connection is still open", n, sock)
	}
	if taken == nil {
		return
	}
	hexPort := fmt.Sprintf(":%04X", port)
	listening := func(f []string) bool { return len(f) > 3 && strings.HasSuffix(f[1], hexPort) && f[3] == "0A" }
	if n := countLines(t, "/proc/net/tcp", listening) + countLines(t, "/proc/net/tcp6", listening); n != 1 {
		t.Errorf("%d listeners on port %d, want only the test's", n, port)
	}
	c, err := net.DialTimeout("tcp", taken.Addr().String(), 5*time.Second)
	if err != nil {
		t.Errorf("the test's listener on port %d: %v", port, err)
		return
	}
	c.Close()
	taken.(*net.TCPListener).SetDeadline(time.Now().Add(5 * time.Second))
	if a, err := taken.Accept(); err != nil {
		t.Errorf("the test's listener did not get the connection to port %d: %v", port, err)
	} else {
		a.Close()
	}
}

func countLines(t *testing.T, path string, match func([]string) bool) int {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		return 0
	}
	defer f.Close()
	n := 0
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if match(strings.Fields(sc.Text())) {
			n++
		}
	}
	return n
}
