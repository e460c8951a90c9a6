package dataplane_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ferrymigrate/ferry"
	"github.com/ferrymigrate/ferry/agent"
	"github.com/ferrymigrate/ferry/api"
	"github.com/ferrymigrate/ferry/config"
	"github.com/ferrymigrate/ferry/controlplane"
	"github.com/ferrymigrate/ferry/dataplane"
	"github.com/ferrymigrate/ferry/pki"
	"github.com/ferrymigrate/ferry/replica"
	"github.com/ferrymigrate/ferry/server"
)

// TestMain doubles as the agent process of TestLoopDeviceReplication, so
// the test can kill -9 a real agent: FERRY_TEST_AGENT=STATEDIR:DEVICE.
func TestMain(m *testing.M) {
	if v := os.Getenv("FERRY_TEST_AGENT"); v != "" {
		state, dev, _ := strings.Cut(v, ":")
		err := agent.Replicate(context.Background(), agent.Options{StateDir: state, Devices: []string{dev},
			Logger: slog.New(slog.NewTextHandler(os.Stderr, nil))})
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() == 0 {
		return
	}
	if os.Getenv("FERRY_TEST_REQUIRE_ALL") == "1" {
		t.Fatal("this test needs root (loop devices) and FERRY_TEST_REQUIRE_ALL=1 forbids skipping")
	}
	t.Skip("SKIPPED: needs root for loop devices")
}

func sh(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return strings.TrimSpace(string(out))
}

func fileSHA(t *testing.T, r io.ReaderAt, size int64) [32]byte {
	t.Helper()
	h := sha256.New()
	if _, err := io.Copy(h, io.NewSectionReader(r, 0, size)); err != nil {
		t.Fatal(err)
	}
	var s [32]byte
	copy(s[:], h.Sum(nil))
	return s
}

// nonZeroBytes counts the bytes of the 1 MiB chunks of dev that are not
// all zeros: what an initial sync must send.
func nonZeroBytes(t *testing.T, dev string) int64 {
	f, err := os.Open(dev)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, 1<<20)
	var n int64
	for {
		k, err := io.ReadFull(f, buf)
		if k > 0 && !bytes.Equal(buf[:k], make([]byte, k)) {
			n += int64(k)
		}
		if err != nil {
			return n
		}
	}
}

type liveServer struct {
	s      *server.Server
	cancel context.CancelFunc
	done   chan error
}

func startServer(t *testing.T, dataDir, api, data string) *liveServer {
	t.Helper()
	cfg := config.Server{Dev: true, DataDir: dataDir, Listen: api, DataListen: data, Database: "sqlite:" + filepath.Join(dataDir, "ferry.db"), Advertise: "127.0.0.1"}
	s, err := server.Start(t.Context(), cfg, slog.New(slog.NewTextHandler(io.Discard, nil)), io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	ls := &liveServer{s: s, cancel: cancel, done: make(chan error, 1)}
	go func() { ls.done <- s.Serve(ctx) }()
	return ls
}

func (ls *liveServer) stop(t *testing.T) {
	ls.cancel()
	if err := <-ls.done; err != nil {
		t.Errorf("server: %v", err)
	}
}

func startAgent(t *testing.T, state, dev string) *exec.Cmd {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), "FERRY_TEST_AGENT="+state+":"+dev)
	var log bytes.Buffer
	cmd.Stderr = &log
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
		if t.Failed() {
			t.Logf("agent log:\n%s", log.String())
		}
	})
	return cmd
}

// The whole data path with the real server and a real agent process over
// TLS against a loop device with ext4: initial sync with a kill -9 in the
// middle, untracked writes found by the rescan after an agent restart, a
// server restart, and a snapshot byte-identical to the device.
func TestLoopDeviceReplication(t *testing.T) {
	requireRoot(t)
	dir := t.TempDir()
	const size = 1 << 30
	img := filepath.Join(dir, "disk.img")
	sh(t, "truncate", "-s", fmt.Sprint(size), img)
	dev := sh(t, "losetup", "-f", "--show", img)
	t.Cleanup(func() { exec.Command("losetup", "-d", dev).Run() })
	sh(t, "mkfs.ext4", "-q", "-F", dev)
	sh(t, "dd", "if=/dev/urandom", "of="+dev, "bs=1M", "seek=100", "count=256", "oflag=direct", "status=none")
	want := nonZeroBytes(t, dev)

	ls := startServer(t, filepath.Join(dir, "server"), "127.0.0.1:0", "127.0.0.1:0")
	apiAddr, dataAddr := ls.s.APIAddr, ls.s.DataAddr
	ctx := t.Context()
	admin, err := controlplane.CreateToken(ctx, ls.s.Store(), "test", ferry.RoleAdmin, time.Now().UTC(), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	pin, _ := pki.ParseFingerprint(ls.s.CAFingerprint())
	cl, err := api.NewClient("https://"+apiAddr, admin.Secret, pki.ClientTLSConfig(pin, nil))
	if err != nil {
		t.Fatal(err)
	}
	it, err := cl.CreateInstallToken(ctx, &api.CreateInstallTokenRequest{Name: "t", ExpiresInSeconds: 3600})
	if err != nil {
		t.Fatal(err)
	}
	state := filepath.Join(dir, "agent")
	st, err := agent.Pair(ctx, agent.PairOptions{ServerURL: "https://" + apiAddr, InstallToken: it.Secret, CAFingerprint: ls.s.CAFingerprint(),
		StateDir: state, Devices: []string{dev}, MachineID: "loop-test"})
	if err != nil {
		t.Fatal(err)
	}
	id := dataplane.DiskID(st.SourceServerID, filepath.Base(dev))

	// Initial sync, killed with SIGKILL part way through.
	start := time.Now()
	a := startAgent(t, state, dev)
	eventually(t, 30*time.Second, "first 96 MiB received", func() bool { return ls.s.DataPlane().ReceivedBytes() >= 96<<20 })
	firstRate := float64(ls.s.DataPlane().ReceivedBytes()) / time.Since(start).Seconds() / (1 << 20)
	a.Process.Signal(syscall.SIGKILL)
	a.Wait()
	killedAt := ls.s.DataPlane().ReceivedBytes()
	a = startAgent(t, state, dev)
	eventually(t, 60*time.Second, "READY_FOR_TEST", func() bool {
		s, err := ls.s.Store().Server(ctx, st.SourceServerID)
		return err == nil && s.Lifecycle == ferry.LifecycleReadyForTest
	})
	elapsed := time.Since(start)
	received := ls.s.DataPlane().ReceivedBytes()
	resent := received - want
	t.Logf("initial sync of a 1 GiB loop device (%d MiB non-zero): %.1f s including a kill -9 (%.0f MB/s of disk); data sent before the kill at %.0f MiB/s; killed after %d MiB; re-sent %d MiB (%.2f %% of the disk)",
		want>>20, elapsed.Seconds(), float64(size)/elapsed.Seconds()/1e6, firstRate, killedAt>>20, resent>>20, float64(resent)*100/size)
	if resent > size/20 {
		t.Fatalf("re-sent %d bytes after kill -9, more than 5 %% of the disk", resent)
	}
	checkSnapshot(t, ls.s.Replica(), id, dev)

	// Untracked writes (no tracker in this build), then an agent restart:
	// the rescan compares hashes and sends about what changed.
	sh(t, "dd", "if=/dev/urandom", "of="+dev, "bs=1M", "seek=500", "count=8", "oflag=direct", "status=none")
	a.Process.Signal(syscall.SIGKILL)
	a.Wait()
	before := ls.s.DataPlane().ReceivedBytes()
	startAgent(t, state, dev)
	eventually(t, 60*time.Second, "rescan after restart", func() bool {
		s, err := ls.s.Store().Server(ctx, st.SourceServerID)
		return err == nil && s.Disks[0].RescannedBytes == size && s.Replication.State == ferry.ReplicationContinuous
	})
	if got := ls.s.DataPlane().ReceivedBytes() - before; got < 8<<20 || got > 10<<20 {
		t.Fatalf("rescan sent %d bytes for an 8 MiB change", got)
	}
	checkSnapshot(t, ls.s.Replica(), id, dev)

	// Server restart: the agent reconnects by itself and resumes; nothing
	// is sent again.
	ls.stop(t)
	ls = startServer(t, filepath.Join(dir, "server"), apiAddr, dataAddr)
	defer ls.stop(t)
	eventually(t, 30*time.Second, "agent back after server restart", func() bool {
		s, err := ls.s.Store().Server(ctx, st.SourceServerID)
		return err == nil && s.Replication.State == ferry.ReplicationContinuous
	})
	if got := ls.s.DataPlane().ReceivedBytes(); got != 0 {
		t.Fatalf("after a server restart the agent re-sent %d bytes", got)
	}
	checkSnapshot(t, ls.s.Replica(), id, dev)
}

// checkSnapshot takes a snapshot of the replica and checks that it reads
// back byte-identical to the device.
func checkSnapshot(t *testing.T, rs *replica.Store, id, dev string) {
	t.Helper()
	d, err := rs.Disk(id)
	if err != nil {
		t.Fatal(err)
	}
	info, err := d.Snapshot(t.Context(), replica.SnapshotOptions{Consistency: replica.Inconsistent})
	if err != nil {
		t.Fatal(err)
	}
	r, err := d.OpenSnapshot(t.Context(), info.ID)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	f, err := os.Open(dev)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if got, want := fileSHA(t, r, r.Size()), fileSHA(t, f, r.Size()); got != want {
		t.Fatalf("snapshot %s sha256 %x, device %x", info.ID, got, want)
	}
}
