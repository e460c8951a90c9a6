package e2e

import (
	"bytes"
	"context"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ferrymigrate/ferry"
	"github.com/ferrymigrate/ferry/api"
	"github.com/ferrymigrate/ferry/internal/testimage"
)

// TestLaunchTestAndCutover is issue 3's end-to-end: a small real bootable
// Linux disk on a loop device is replicated by the agent, test-launched
// (post-launch checks see the boot marker and the guest's HTTP service),
// terminated; new data is written on the source; a cutover launches an
// instance that serves the new data; finalize; disconnect; archive.
func TestLaunchTestAndCutover(t *testing.T) {
	if _, err := exec.LookPath("qemu-system-x86_64"); err != nil {
		skip(t, "qemu-system-x86_64 is not installed")
	}
	img := testimage.ForTest(t)
	dir := t.TempDir()
	src := filepath.Join(dir, "source.img")
	mustRun(t, "cp", "--sparse=always", img.Path, src)
	dev := loopDeviceFile(t, src)

	phase := time.Now()
	lap := func(what string) {
		t.Logf("%-42s %6.1fs", what, time.Since(phase).Seconds())
		phase = time.Now()
	}
	s := startServer(t, filepath.Join(dir, "server"))
	ctx := t.Context()
	admin, err := clientFor(s, s.token)
	if err != nil {
		t.Fatal(err)
	}
	it, err := admin.CreateInstallToken(ctx, &api.CreateInstallTokenRequest{Name: "launch", ExpiresInSeconds: 600})
	if err != nil {
		t.Fatal(err)
	}
	agentLog := &bytes.Buffer{}
	agent := exec.Command(bin, "agent", "--server", s.addr, "--install-token", it.Secret, "--ca-fingerprint", s.fingerprint,
		"--state-dir", filepath.Join(dir, "agent"), "--disk", dev, "--machine-id", "launch-e2e")
	agent.Stdout, agent.Stderr = agentLog, agentLog
	if err := agent.Start(); err != nil {
		t.Fatal(err)
	}
	agentDone := make(chan error, 1)
	go func() { agentDone <- agent.Wait() }()
	defer func() {
		agent.Process.Kill()
		<-agentDone
		if t.Failed() {
			t.Logf("agent log:\n%s", agentLog)
		}
	}()
	srv := waitServer(t, admin, 3*time.Minute, func(s *ferry.SourceServer) bool { return s.Lifecycle == ferry.LifecycleReadyForTest })
	lap("initial sync to READY_FOR_TEST")

	// Launch settings: small instance, checks for the boot marker and HTTP.
	ls := srv.LaunchSetup
	ls.RightSizing, ls.CPUs, ls.MemoryMiB = ferry.RightSizingNone, 1, 256
	ls.PostLaunchActions = []ferry.PostLaunchAction{
		{ID: "boot", Name: "boot marker", Active: true, Order: 1, TimeoutSeconds: 120, Deployment: "TEST_AND_CUTOVER", Category: "VALIDATION",
			Parameters: map[string]string{"type": "boot_marker", "pattern": testimage.BootMarker}},
		{ID: "web", Name: "web answers", Active: true, Order: 2, TimeoutSeconds: 60, Deployment: "TEST_ONLY", Category: "VALIDATION",
			Parameters: map[string]string{"type": "http", "guest_port": "80", "path": "/", "contains": strings.TrimSpace(testimage.HTTPBody)}},
		{ID: "new-data", Name: "cutover serves the new data", Active: true, Order: 2, TimeoutSeconds: 60, Deployment: "CUTOVER_ONLY", Category: "VALIDATION",
			Parameters: map[string]string{"type": "http", "guest_port": "80", "path": "/", "contains": "cutover data v2"}},
		{ID: "script", Name: "script in the guest", Active: true, Order: 3, TimeoutSeconds: 60, Deployment: "TEST_ONLY", Category: "VALIDATION",
			Parameters: map[string]string{"type": "script", "script": "cat /www/index.html; hostname"}},
	}
	if err := admin.Do(ctx, "PATCH", "/servers/"+url.PathEscape(srv.ID), nil, api.UpdateServerRequest{Launch: &ls}, nil); err != nil {
		t.Fatal(err)
	}
	env := []string{"FERRY_CONFIG=" + filepath.Join(dir, "cli.json"), "FERRY_ADDR=" + s.addr, "FERRY_TOKEN=" + s.token, "FERRY_CA_FINGERPRINT=" + s.fingerprint}

	// A launch while none is possible yet fails cleanly: cutover before test.
	if _, err := ferryCmd(t, env, "launch", "cutover", srv.ID); err == nil || !strings.Contains(err.Error(), "READY_FOR_CUTOVER") {
		t.Fatalf("cutover from READY_FOR_TEST: %v", err)
	}

	out := run(t, env, "launch", "test", srv.ID)
	lap("test launch: snapshot, boot, checks")
	for _, want := range []string{"SNAPSHOT_END", "LAUNCH_START", "POST_LAUNCH_ACTION_END", "JOB_END"} {
		if !strings.Contains(out, want) {
			t.Fatalf("test launch log lacks %s:\n%s", want, out)
		}
	}
	srv = waitServer(t, admin, 5*time.Second, func(s *ferry.SourceServer) bool { return s.Lifecycle == ferry.LifecycleTesting })
	if srv.Launched == nil || srv.Launched.FirstBoot != ferry.FirstBootSucceeded || len(srv.Launched.PostLaunch) != 3 {
		t.Fatalf("launched instance after test: %+v", srv.Launched)
	}
	for _, r := range srv.Launched.PostLaunch {
		if r.ActionID == "script" && (!strings.Contains(r.Output, strings.TrimSpace(testimage.HTTPBody)) || !strings.Contains(r.Output, "ferry-test")) {
			t.Fatalf("script action output %q, want the guest's index.html and hostname", r.Output)
		}
	}
	console, err := os.ReadFile(srv.Launched.ConsoleLog)
	if err != nil || !bytes.Contains(console, []byte(testimage.BootMarker)) {
		t.Fatalf("console log %s: %v", srv.Launched.ConsoleLog, err)
	}
	// Replication never paused.
	if srv.Replication.State == ferry.ReplicationPaused || srv.Replication.State == ferry.ReplicationStopped {
		t.Fatalf("replication %s during the test", srv.Replication.State)
	}
	testInst := srv.Launched.ID

	run(t, env, "launch", "terminate", srv.ID)
	lap("terminate")
	srv = waitServer(t, admin, 5*time.Second, func(s *ferry.SourceServer) bool { return s.Launched != nil && !s.Launched.TerminatedAt.IsZero() })
	if _, err := os.Stat(filepath.Join(dir, "server", "instances", testInst+".json")); !os.IsNotExist(err) {
		t.Fatalf("terminated instance left its state file: %v", err)
	}
	if err := admin.Do(ctx, "POST", "/servers/"+srv.ID+"/lifecycle", nil, api.ChangeLifecycleRequest{State: ferry.LifecycleReadyForCutover}, nil); err != nil {
		t.Fatal(err)
	}

	// New data on the source, while replicating; the cutover must carry it.
	wctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	if err := testimage.WriteFile(wctx, dev, "/www/index.html", []byte("cutover data v2\n")); err != nil {
		t.Fatal(err)
	}
	mustRun(t, "sync")
	out = run(t, env, "launch", "cutover", srv.ID)
	lap("cutover: drain, snapshot, boot, checks")
	if !strings.Contains(out, "cutover serves the new data") {
		t.Fatalf("cutover log:\n%s", out)
	}
	srv = waitServer(t, admin, 5*time.Second, func(s *ferry.SourceServer) bool { return s.Lifecycle == ferry.LifecycleCuttingOver })
	run(t, env, "cutover", "finalize", srv.ID)
	srv = waitServer(t, admin, 5*time.Second, func(s *ferry.SourceServer) bool { return s.Lifecycle == ferry.LifecycleCutover })
	if srv.Desired != ferry.DesiredStop {
		t.Fatalf("after finalize replication is set to %q, want STOP", srv.Desired)
	}
	// The cutover instance is kept: terminating it is refused.
	if _, err := ferryCmd(t, env, "launch", "terminate", srv.ID); err == nil {
		t.Fatal("terminating the cutover instance after finalize succeeded")
	}
	run(t, env, "servers", "disconnect", srv.ID)
	run(t, env, "servers", "archive", srv.ID)
	lap("finalize, disconnect, archive")
	select {
	case <-agentDone:
		agentDone <- nil
	case <-time.After(30 * time.Second):
		t.Error("the agent did not stop after its server was disconnected")
	}
	if fi, err := os.Stat(filepath.Join(dir, "agent")); err == nil && fi.IsDir() {
		t.Error("the disconnected agent left its state directory")
	}
	// Clean up the kept cutover instance ourselves.
	exec.Command("pkill", "-f", srv.Launched.ID).Run()
	s.cmd.Process.Signal(syscall.SIGTERM)
}

// loopDeviceFile puts an existing image file on a loop device.
func loopDeviceFile(t *testing.T, path string) string {
	t.Helper()
	if os.Geteuid() != 0 {
		skip(t, "loop devices need root")
	}
	out, err := exec.Command("losetup", "--find", "--show", path).CombinedOutput()
	if err != nil {
		skip(t, "losetup failed: "+string(out))
	}
	dev := strings.TrimSpace(string(out))
	t.Cleanup(func() { exec.Command("losetup", "-d", dev).Run() })
	return dev
}
