package e2e

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ferrymigrate/ferry"
	"github.com/ferrymigrate/ferry/api"
)

// TestContinuousReplication replicates an ext4 loop device with the real
// agent and its real change tracker while fio writes with verification,
// then takes a drained snapshot and checks that the snapshot, exported
// after the server stopped, is byte-identical to the device.
func TestContinuousReplication(t *testing.T) {
	for _, tracker := range []string{"ebpf", "rescan"} {
		t.Run(tracker, func(t *testing.T) {
			testContinuousReplication(t, tracker)
		})
	}
}

func testContinuousReplication(t *testing.T, tracker string) {
	for _, tool := range []string{"fio", "mkfs.ext4", "mount", "umount"} {
		if _, err := exec.LookPath(tool); err != nil {
			skip(t, tool+" is not installed")
		}
	}
	dev := loopDevice(t, "256M")
	mustRun(t, "mkfs.ext4", "-q", "-F", dev)
	mnt := t.TempDir()
	mustRun(t, "mount", dev, mnt)
	mounted := true
	defer func() {
		if mounted {
			exec.Command("umount", mnt).Run()
		}
	}()
	mustRun(t, "dd", "if=/dev/urandom", "of="+filepath.Join(mnt, "before.bin"), "bs=1M", "count=16", "conv=fsync", "status=none")

	dir := t.TempDir()
	data := filepath.Join(dir, "server")
	s := startServer(t, data)
	ctx := t.Context()
	admin, err := clientFor(s, s.token)
	if err != nil {
		t.Fatal(err)
	}
	it, err := admin.CreateInstallToken(ctx, &api.CreateInstallTokenRequest{Name: "e2e", ExpiresInSeconds: 600})
	if err != nil {
		t.Fatal(err)
	}
	agentLog := &bytes.Buffer{}
	agentCmd := exec.Command(bin, "agent", "--server", s.addr, "--install-token", it.Secret, "--ca-fingerprint", s.fingerprint,
		"--state-dir", filepath.Join(dir, "agent"), "--disk", dev, "--tracker", tracker, "--machine-id", "e2e-"+tracker)
	agentCmd.Stdout, agentCmd.Stderr = agentLog, agentLog
	if err := agentCmd.Start(); err != nil {
		t.Fatal(err)
	}
	agentDone := make(chan error, 1)
	go func() { agentDone <- agentCmd.Wait() }()
	defer func() {
		agentCmd.Process.Kill()
		<-agentDone
		if t.Failed() {
			t.Logf("agent log:\n%s", agentLog)
		}
	}()

	start := time.Now()
	srv := waitServer(t, admin, 3*time.Minute, func(s *ferry.SourceServer) bool { return s.Lifecycle == ferry.LifecycleReadyForTest })
	t.Logf("initial sync of %s (256 MiB, ext4 + 16 MiB of data) done in %.1fs; replication %s", dev, time.Since(start).Seconds(), srv.Replication.State)

	// Writes while replicating, verified by fio itself.
	fio := exec.Command("fio", "--name=e2e", "--filename="+filepath.Join(mnt, "fio.dat"), "--size=24M", "--rw=randwrite",
		"--bs=4k", "--ioengine=psync", "--direct=1", "--verify=crc32c", "--do_verify=1", "--fsync=64", "--output-format=terse")
	if out, err := fio.CombinedOutput(); err != nil {
		t.Fatalf("fio: %v\n%s", err, out)
	}
	mustRun(t, "dd", "if=/dev/urandom", "of="+filepath.Join(mnt, "after.bin"), "bs=1M", "count=8", "conv=fsync", "status=none")
	mustRun(t, "umount", mnt)
	mounted = false
	// The device's page cache may hold blocks from before the file system
	// wrote around it (mkfs wrote through it; ext4 writes file data with
	// its own bios): drop it, or the buffered read below sees old blocks.
	mustRun(t, "blockdev", "--flushbufs", dev)
	devSum := sha256File(t, dev)

	// A drained snapshot covers everything written before it.
	var taken api.TakenSnapshots
	sctx, cancel := context.WithTimeout(ctx, 3*time.Minute)
	defer cancel()
	if err := admin.Do(sctx, "POST", "/servers/"+url.PathEscape(srv.ID)+"/snapshots", nil, api.TakeSnapshotRequest{Drain: true, TimeoutSeconds: 170}, &taken); err != nil {
		t.Fatalf("take snapshot: %v", err)
	}
	disk := filepath.Base(dev)
	snapID := taken.Snapshots[disk]
	if snapID == "" {
		t.Fatalf("no snapshot of %s in %v", disk, taken.Snapshots)
	}
	// The CLI lists it through the running server's API.
	env := []string{"FERRY_CONFIG=" + filepath.Join(dir, "cli.json"), "FERRY_ADDR=" + s.addr, "FERRY_TOKEN=" + s.token, "FERRY_CA_FINGERPRINT=" + s.fingerprint}
	var listed []api.Snapshot
	if err := json.Unmarshal([]byte(run(t, env, "snapshots", "list", "--server", srv.ID, "--disk", disk, "-o", "json")), &listed); err != nil {
		t.Fatalf("snapshots list --server: %v", err)
	}
	if !slices.ContainsFunc(listed, func(sn api.Snapshot) bool { return sn.ID == snapID && sn.Disk == disk }) {
		t.Fatalf("snapshots list --server %s does not show snapshot %s of %s: %+v", srv.ID, snapID, disk, listed)
	}
	// The record follows the session about once a second; a rescan
	// tracker's drain compares hashes (RESCAN) before going back.
	srv = waitServer(t, admin, 30*time.Second, func(s *ferry.SourceServer) bool {
		return s.Replication.State == ferry.ReplicationContinuous
	})

	// Stop everything; the store is then free for the offline export.
	agentCmd.Process.Signal(syscall.SIGTERM)
	s.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-s.done:
		s.done <- err
	case <-time.After(30 * time.Second):
		t.Fatal("server did not stop")
	}
	out := filepath.Join(dir, "replica.raw")
	run(t, nil, "snapshots", "export", "--data", data, "--disk", srv.ID+"."+disk, "--snapshot", snapID, "--format", "raw", "--output-file", out)
	if got := sha256File(t, out); got != devSum {
		t.Fatalf("replica snapshot sha256 %s, device %s: the replica differs", got, devSum)
	}
	verify := run(t, nil, "store", "verify", "--data", data)
	if !strings.Contains(verify, "No problems") {
		t.Fatalf("store verify:\n%s", verify)
	}
	t.Logf("tracker %s: snapshot %s equals the device (sha256 %s…)", tracker, snapID, devSum[:16])
}

func mustRun(t *testing.T, name string, args ...string) {
	t.Helper()
	if out, err := exec.Command(name, args...).CombinedOutput(); err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
}

func sha256File(t *testing.T, path string) string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(h.Sum(nil))
}

// waitServer polls the only server until cond holds.
func waitServer(t testing.TB, c *api.Client, within time.Duration, cond func(*ferry.SourceServer) bool) *ferry.SourceServer {
	t.Helper()
	deadline := time.Now().Add(within)
	var last string
	for {
		l, err := c.ListServers(t.Context(), nil)
		if err == nil && len(l.Items) == 1 {
			s := l.Items[0]
			last = fmt.Sprintf("%s/%s %+v", s.Lifecycle, s.Replication.State, s.Disks)
			if cond(&s) {
				return &s
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("server did not reach the wanted state within %s; last %s (err %v)", within, last, err)
		}
		time.Sleep(250 * time.Millisecond)
	}
}
