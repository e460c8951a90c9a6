package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
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
	"github.com/ferrymigrate/ferry/connector"
	"github.com/ferrymigrate/ferry/qmp"
)

// qemuVM is a stopped QEMU process (no guest OS) with one qcow2 disk on a
// device that shares writes, and a second QMP socket for the test.
type qemuVM struct {
	disk, sock string
	c          *qmp.Client
}

func startQEMUVM(t *testing.T, dir, name string, size int64) *qemuVM {
	t.Helper()
	for _, b := range []string{"qemu-system-x86_64", "qemu-img"} {
		if _, err := exec.LookPath(b); err != nil {
			skip(t, b+" is not installed")
		}
	}
	v := &qemuVM{disk: filepath.Join(dir, name+".qcow2"), sock: filepath.Join(dir, name+".qmp")}
	mustRun(t, "qemu-img", "create", "-q", "-f", "qcow2", v.disk, fmt.Sprint(size))
	test := filepath.Join(dir, name+"-test.qmp")
	cmd := exec.Command("qemu-system-x86_64", "-machine", "pc,accel=tcg", "-S", "-m", "64", "-smp", "1", "-nodefaults",
		"-nographic", "-display", "none", "-name", name,
		"-qmp", "unix:"+v.sock+",server=on,wait=off", "-qmp", "unix:"+test+",server=on,wait=off",
		"-blockdev", "driver=qcow2,node-name=disk0,file.driver=file,file.filename="+v.disk,
		"-device", "virtio-blk-pci,drive=disk0,share-rw=on")
	log := &bytes.Buffer{}
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	t.Cleanup(func() {
		if v.c != nil {
			v.c.Execute(context.Background(), "quit", nil, nil)
			v.c.Close()
		}
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			cmd.Process.Kill()
			<-done
		}
	})
	deadline := time.Now().Add(20 * time.Second)
	for {
		c, err := qmp.Dial(t.Context(), test)
		if err == nil {
			v.c = c
			return v
		}
		if time.Now().After(deadline) {
			t.Fatalf("QMP never answered: %v\n%s", err, log)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// write writes n random bytes at off into the disk through qemu-io in
// the QEMU process, and flushes.
func (v *qemuVM) write(t *testing.T, off, n int64) {
	t.Helper()
	src := v.disk + ".data"
	mustRun(t, "dd", "if=/dev/urandom", "of="+src, "bs=64k", fmt.Sprintf("count=%d", n/(64<<10)), "status=none")
	for _, line := range []string{fmt.Sprintf(`qemu-io disk0 "write -s %s %d %d"`, src, off, n), `qemu-io disk0 "flush"`} {
		var out string
		if err := v.c.Execute(t.Context(), "human-monitor-command", map[string]any{"command-line": line}, &out); err != nil || strings.Contains(out, "rror") {
			t.Fatalf("%s: %v %s", line, err, out)
		}
	}
}

// The connector as an operator runs it: 'ferry connector run' beside a
// QEMU VM registers it with a dev server as a DISCOVERED source server;
// 'ferry connector jobs create' gives it a job; its first run makes it
// READY_FOR_TEST with a replica equal to the disk (qemu-img compare); a
// test launch's FLUSH gets a run at once, so the launched instance runs
// from a snapshot that has the writes made just before it.
func TestConnectorRunAndTestLaunch(t *testing.T) {
	dir := t.TempDir()
	v := startQEMUVM(t, dir, "conn-e2e", 32<<20)
	v.write(t, 0, 4<<20)
	s := startServer(t, filepath.Join(dir, "server"))
	ctx := t.Context()
	admin, err := clientFor(s, s.token)
	if err != nil {
		t.Fatal(err)
	}
	state := filepath.Join(dir, "connector")
	runConnector(t, s, admin, state, "--qmp", "unix:"+v.sock)
	srv := waitServer(t, admin, 30*time.Second, func(s *ferry.SourceServer) bool { return s.Lifecycle == ferry.LifecycleDiscovered })
	if srv.Hostname != "conn-e2e" || srv.CPUs != 1 || srv.RAMBytes != 64<<20 || len(srv.Disks) != 1 || srv.Disks[0].SizeBytes != 32<<20 {
		t.Fatalf("registered VM: %+v", srv)
	}
	stateFlag := "--state-dir=" + state
	if out := run(t, nil, "connector", "vms", stateFlag); !strings.Contains(out, srv.ID) || !strings.Contains(out, "no job") {
		t.Fatalf("connector vms:\n%s", out)
	}
	if _, err := ferryCmd(t, nil, "connector", "jobs", "create", "conn-e2e", stateFlag); err == nil || !strings.Contains(err.Error(), "Try:") {
		t.Fatalf("a job without a frequency: %v", err)
	}
	// Keep enough recent snapshots that the first run's is still there when
	// every point is compared at the end (test launch and cutover add two each).
	run(t, nil, "connector", "jobs", "create", "conn-e2e", "--frequency", "1h", "--keep", "6", stateFlag)
	waitServer(t, admin, 60*time.Second, func(s *ferry.SourceServer) bool { return s.Lifecycle == ferry.LifecycleReadyForTest })
	jobs := func() []connector.Job {
		t.Helper()
		var js []connector.Job
		if err := json.Unmarshal([]byte(run(t, nil, "connector", "jobs", stateFlag, "-o", "json")), &js); err != nil {
			t.Fatal(err)
		}
		if len(js) != 1 {
			t.Fatalf("%d jobs", len(js))
		}
		return js
	}
	var first connector.RunRecord
	eventually(t, 10*time.Second, "the first run recorded", func() bool {
		j := jobs()[0]
		if len(j.Runs) == 0 || j.Runs[0].State != connector.RunCompleted {
			return false
		}
		first = j.Runs[0]
		return j.State == connector.JobActive
	})
	if got := first.Result.Disks[0].RawSentBytes; got != 4<<20 {
		t.Fatalf("first run sent %d bytes for 4 MiB of data", got)
	}
	// The store is the server's while it runs: the snapshots are
	// exported and compared once it is stopped, with copies of the disk
	// as it was at each point.
	type point struct {
		seq  uint64
		copy string
	}
	points := []point{{first.Result.Disks[0].SnapshotSeq, v.copyDisk(t, "first")}}

	// Test launch: its FLUSH makes the connector run now (the job's next
	// run is an hour away).
	v.write(t, 8<<20, 1<<20)
	atLaunch := v.copyDisk(t, "launch")
	ls := srv.LaunchSetup
	// No guest OS to convert: the instance boots the bare disk.
	ls.RightSizing, ls.CPUs, ls.MemoryMiB, ls.PostLaunchActions, ls.Convert = ferry.RightSizingNone, 1, 128, nil, false
	if err := admin.Do(ctx, "PATCH", "/servers/"+url.PathEscape(srv.ID), nil, api.UpdateServerRequest{Launch: &ls}, nil); err != nil {
		t.Fatal(err)
	}
	env := []string{"FERRY_CONFIG=" + filepath.Join(dir, "cli.json"), "FERRY_ADDR=" + s.addr, "FERRY_TOKEN=" + s.token, "FERRY_CA_FINGERPRINT=" + s.fingerprint}
	out := run(t, env, "launch", "test", srv.ID)
	if strings.Contains(out, "USING_PREVIOUS_SNAPSHOT") || !strings.Contains(out, "SNAPSHOT_END") || !strings.Contains(out, "JOB_END") {
		t.Fatalf("test launch did not get a drained point:\n%s", out)
	}
	srv = waitServer(t, admin, 10*time.Second, func(s *ferry.SourceServer) bool {
		return s.Lifecycle == ferry.LifecycleTesting && s.Launched != nil
	})
	j := jobs()[0]
	flushRun := j.Runs[len(j.Runs)-1]
	if !strings.Contains(flushRun.Reason, "FLUSH") || flushRun.State != connector.RunCompleted || flushRun.Result.Disks[0].RawSentBytes != 1<<20 {
		t.Fatalf("the run that answered the test launch's FLUSH: %+v", flushRun)
	}
	launched := srv.Launched.Snapshots["disk0"]
	var seq uint64
	if _, err := fmt.Sscanf(launched, "%x", &seq); err != nil {
		t.Fatalf("launched snapshot id %q: %v", launched, err)
	}
	points = append(points, point{seq, atLaunch})
	run(t, env, "launch", "terminate", srv.ID)
	waitServer(t, admin, 30*time.Second, func(s *ferry.SourceServer) bool { return s.Launched != nil && !s.Launched.TerminatedAt.IsZero() })

	// Cutover works as for an agent: its drain is a FLUSH the connector
	// answers with a run at once, carrying what was written since.
	if err := admin.Do(ctx, "POST", "/servers/"+url.PathEscape(srv.ID)+"/lifecycle", nil, api.ChangeLifecycleRequest{State: ferry.LifecycleReadyForCutover}, nil); err != nil {
		t.Fatal(err)
	}
	v.write(t, 12<<20, 1<<20)
	atCutover := v.copyDisk(t, "cutover")
	out = run(t, env, "launch", "cutover", srv.ID)
	if strings.Contains(out, "USING_PREVIOUS_SNAPSHOT") || !strings.Contains(out, "SNAPSHOT_END") || !strings.Contains(out, "JOB_END") {
		t.Fatalf("cutover did not get a drained point:\n%s", out)
	}
	srv = waitServer(t, admin, 10*time.Second, func(s *ferry.SourceServer) bool {
		return s.Lifecycle == ferry.LifecycleCuttingOver && s.Launched != nil && s.Launched.TerminatedAt.IsZero()
	})
	j = jobs()[0]
	if r := j.Runs[len(j.Runs)-1]; !strings.Contains(r.Reason, "FLUSH") || r.State != connector.RunCompleted || r.Result.Disks[0].RawSentBytes != 1<<20 {
		t.Fatalf("the run that answered the cutover's FLUSH: %+v", r)
	}
	if _, err := fmt.Sscanf(srv.Launched.Snapshots["disk0"], "%x", &seq); err != nil {
		t.Fatalf("cutover snapshot id %q: %v", srv.Launched.Snapshots["disk0"], err)
	}
	points = append(points, point{seq, atCutover})
	run(t, env, "cutover", "finalize", srv.ID)
	waitServer(t, admin, 10*time.Second, func(s *ferry.SourceServer) bool { return s.Lifecycle == ferry.LifecycleCutover })
	// The cutover instance is kept by design: stop it ourselves.
	exec.Command("pkill", "-f", srv.Launched.ID).Run()

	run(t, nil, "connector", "jobs", "delete", "conn-e2e", stateFlag)
	eventually(t, 10*time.Second, "DELETED", func() bool { return jobs()[0].State == connector.JobDeleted })

	s.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-s.done:
		s.done <- err
	case <-time.After(30 * time.Second):
		t.Fatal("the server did not stop on SIGTERM")
	}
	for _, p := range points {
		compareSnapshot(t, filepath.Join(dir, "server"), srv.ID, p.seq, p.copy)
	}
}

// copyDisk copies the VM's disk as it is now to a raw file.
func (v *qemuVM) copyDisk(t *testing.T, name string) string {
	t.Helper()
	out := v.disk + "." + name + ".raw"
	mustRun(t, "qemu-img", "convert", "-U", "-f", "qcow2", "-O", "raw", v.disk, out)
	return out
}

// compareSnapshot exports a stopped server's snapshot at seq and compares
// it with a raw image (qemu-img compare).
func compareSnapshot(t *testing.T, data, serverID string, seq uint64, image string) {
	t.Helper()
	out := filepath.Join(t.TempDir(), "snap.raw")
	snap := fmt.Sprintf("%016x", seq)
	run(t, nil, "snapshots", "export", "--data", data, "--disk", serverID+".disk0", "--snapshot", snap, "--format", "raw", "--output-file", out)
	if o, err := exec.Command("qemu-img", "compare", "-f", "raw", "-F", "raw", out, image).CombinedOutput(); err != nil {
		t.Fatalf("snapshot %s differs from the disk at its point in time: %v\n%s", snap, err, o)
	}
	t.Logf("snapshot %s equals the disk at its point in time (qemu-img compare)", snap)
	os.Remove(out)
}

func eventually(t *testing.T, d time.Duration, what string, f func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !f() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// runConnector starts 'ferry connector run' against s with a new install
// token, its state in state and the given VM sources (--qmp, --libvirt,
// --domain ...). It is killed when the test ends, and its log shown if the
// test failed.
func runConnector(t *testing.T, s *server, admin *api.Client, state string, sources ...string) {
	t.Helper()
	it, err := admin.CreateInstallToken(t.Context(), &api.CreateInstallTokenRequest{Name: "connector", ExpiresInSeconds: 600})
	if err != nil {
		t.Fatal(err)
	}
	clog := &bytes.Buffer{}
	args := append([]string{"connector", "run", "--server", s.addr, "--install-token", it.Secret, "--ca-fingerprint", s.fingerprint, "--state-dir", state}, sources...)
	conn := exec.Command(bin, args...)
	conn.Stdout, conn.Stderr = clog, clog
	if err := conn.Start(); err != nil {
		t.Fatal(err)
	}
	connDone := make(chan error, 1)
	go func() { connDone <- conn.Wait() }()
	t.Cleanup(func() {
		conn.Process.Kill()
		<-connDone
		if t.Failed() {
			t.Logf("connector log:\n%s", clog)
		}
	})
}
