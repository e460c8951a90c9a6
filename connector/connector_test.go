package connector

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"log/slog"
	"math/big"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ferrymigrate/ferry"
	"github.com/ferrymigrate/ferry/agent"
	"github.com/ferrymigrate/ferry/api"
	"github.com/ferrymigrate/ferry/config"
	"github.com/ferrymigrate/ferry/controlplane"
	"github.com/ferrymigrate/ferry/dataplane"
	"github.com/ferrymigrate/ferry/pki"
	"github.com/ferrymigrate/ferry/qmp"
	"github.com/ferrymigrate/ferry/replica"
	"github.com/ferrymigrate/ferry/server"
)

// skip skips loudly, or fails when FERRY_TEST_REQUIRE_ALL=1 (as CI sets it).
func skip(t *testing.T, why string) {
	t.Helper()
	if os.Getenv("FERRY_TEST_REQUIRE_ALL") == "1" {
		t.Fatalf("%s; FERRY_TEST_REQUIRE_ALL=1: a skipped integration test is a failure", why)
	}
	t.Skipf("SKIP: %s", why)
}

func requireQEMU(t *testing.T) {
	t.Helper()
	for _, b := range []string{"qemu-system-x86_64", "qemu-img"} {
		if _, err := exec.LookPath(b); err != nil {
			skip(t, b+" is not installed (apt-get install qemu-system-x86 qemu-utils)")
		}
	}
}

// vm is a QEMU process with one qcow2 disk (node "disk0") on a guest
// device that shares writes, stopped (-S): no guest OS is needed.
type vm struct {
	dir, disk, qmpSock string
	cmd                *exec.Cmd
	c                  *qmp.Client
	done               chan struct{} // closed when QEMU has exited
}

func startVM(t *testing.T, dir, disk string) *vm {
	t.Helper()
	return startNamedVM(t, dir, disk, "conn-test", "6a1e3c4e-0000-4000-8000-00000000c0de")
}

// startNamedVM is startVM with the VM's -name and -uuid (its identity).
func startNamedVM(t *testing.T, dir, disk, name, uuid string) *vm {
	t.Helper()
	v := &vm{dir: dir, disk: disk, qmpSock: filepath.Join(dir, "qmp.sock")}
	os.Remove(v.qmpSock)
	v.cmd = exec.Command("qemu-system-x86_64", "-machine", "pc,accel=tcg", "-S", "-m", "64", "-smp", "2", "-nodefaults",
		"-nographic", "-display", "none", "-name", name, "-uuid", uuid,
		"-qmp", "unix:"+v.qmpSock+",server=on,wait=off",
		// A second monitor for the test: a QMP socket serves one client.
		"-qmp", "unix:"+filepath.Join(dir, "test-qmp.sock")+",server=on,wait=off",
		"-blockdev", "driver=qcow2,node-name=disk0,file.driver=file,file.filename="+disk,
		"-device", "virtio-blk-pci,drive=disk0,share-rw=on",
		"-netdev", "user,id=n0", "-device", "virtio-net-pci,netdev=n0,mac=52:54:00:12:34:56")
	var log strings.Builder
	v.cmd.Stdout, v.cmd.Stderr = &log, &log
	if err := v.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	v.done = make(chan struct{})
	go func() { v.cmd.Wait(); close(v.done) }()
	t.Cleanup(func() { v.stop(t); <-v.done })
	deadline := time.Now().Add(20 * time.Second)
	for {
		c, err := qmp.Dial(t.Context(), filepath.Join(dir, "test-qmp.sock"))
		if err == nil {
			v.c = c
			return v
		}
		if time.Now().After(deadline) {
			t.Fatalf("QMP never answered: %v\n%s", err, log.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// stop quits QEMU cleanly (persistent bitmaps are written to the image).
func (v *vm) stop(t *testing.T) {
	if v.c == nil {
		return
	}
	_ = v.c.Execute(context.Background(), "quit", nil, nil)
	v.c.Close()
	v.c = nil
	select {
	case <-v.done:
	case <-time.After(5 * time.Second):
	}
}

// write writes n bytes of fresh random data at off through qemu-io in
// the QEMU process.
func (v *vm) write(t *testing.T, off, n int64) {
	t.Helper()
	src := filepath.Join(v.dir, "random.bin")
	f, err := os.Create(src)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.CopyN(f, randReader{}, n); err != nil {
		t.Fatal(err)
	}
	f.Close()
	v.hmp(t, fmt.Sprintf(`qemu-io disk0 "write -s %s %d %d"`, src, off, n))
}

func (v *vm) hmp(t *testing.T, line string) {
	t.Helper()
	var out string
	if err := v.c.Execute(t.Context(), "human-monitor-command", map[string]any{"command-line": line}, &out); err != nil {
		t.Fatal(err)
	}
	if strings.Contains(out, "rror") || strings.Contains(out, "onflict") {
		t.Fatalf("%s: %s", line, out)
	}
}

type randReader struct{}

func (randReader) Read(p []byte) (int, error) {
	f, err := os.Open("/dev/urandom")
	if err != nil {
		return 0, err
	}
	defer f.Close()
	return io.ReadFull(f, p)
}

// diskSHA is the sha256 of the disk image's contents as raw, after QEMU
// flushed its qcow2 metadata cache to the file.
func (v *vm) diskSHA(t *testing.T) string {
	t.Helper()
	v.hmp(t, `qemu-io disk0 "flush"`)
	disk := v.disk
	raw := disk + ".raw"
	if out, err := exec.Command("qemu-img", "convert", "-U", "-f", "qcow2", "-O", "raw", disk, raw).CombinedOutput(); err != nil {
		t.Fatalf("qemu-img convert: %v\n%s", err, out)
	}
	defer os.Remove(raw)
	f, err := os.Open(raw)
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

// snapshotSHA is the sha256 of the replica's snapshot at seq (the server
// takes it in the background after acknowledging the SNAPSHOT record).
func snapshotSHA(t *testing.T, rs *replica.Store, id string, seq uint64) string {
	t.Helper()
	d, err := rs.Disk(id)
	if err != nil {
		t.Fatal(err)
	}
	var best replica.SnapshotInfo
	eventually(t, 10*time.Second, fmt.Sprintf("snapshot at seq %d", seq), func() bool {
		for _, s := range d.Snapshots() {
			if s.Seq == seq {
				best = s
				return true
			}
		}
		return false
	})
	r, err := d.OpenSnapshot(t.Context(), best.ID)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	h := sha256.New()
	if _, err := io.Copy(h, io.NewSectionReader(r, 0, r.Size())); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(h.Sum(nil))
}

type liveServer struct {
	s      *server.Server
	admin  *api.Client
	token  string
	cancel context.CancelFunc
	done   chan error
}

func startServer(t *testing.T, dir string) *liveServer {
	t.Helper()
	cfg := config.Server{Dev: true, DataDir: dir, Listen: "127.0.0.1:0", DataListen: "127.0.0.1:0", Database: "sqlite:" + filepath.Join(dir, "ferry.db"), Advertise: "127.0.0.1"}
	s, err := server.Start(t.Context(), cfg, slog.New(slog.NewTextHandler(io.Discard, nil)), io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	ls := &liveServer{s: s, cancel: cancel, done: make(chan error, 1)}
	go func() { ls.done <- s.Serve(ctx) }()
	t.Cleanup(func() { cancel(); <-ls.done })
	tok, err := controlplane.CreateToken(t.Context(), s.Store(), "test", ferry.RoleAdmin, time.Now().UTC(), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	pin, _ := pki.ParseFingerprint(s.CAFingerprint())
	if ls.admin, err = api.NewClient("https://"+s.APIAddr, tok.Secret, pki.ClientTLSConfig(pin, nil)); err != nil {
		t.Fatal(err)
	}
	it, err := ls.admin.CreateInstallToken(t.Context(), &api.CreateInstallTokenRequest{Name: "connector", ExpiresInSeconds: 3600})
	if err != nil {
		t.Fatal(err)
	}
	ls.token = it.Secret
	return ls
}

func eventually(t *testing.T, d time.Duration, what string, f func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !f() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// A QEMU VM replicated agentlessly: a first full run, incremental runs
// that send only the dirty extents, and a lost bitmap that makes the next
// run a hash rescan; after each run the replica's snapshot equals the
// disk.
func TestConnectorReplicatesQEMU(t *testing.T) {
	requireQEMU(t)
	dir := t.TempDir()
	disk := filepath.Join(dir, "disk.qcow2")
	const size = 64 << 20
	if out, err := exec.Command("qemu-img", "create", "-q", "-f", "qcow2", disk, fmt.Sprint(size)).CombinedOutput(); err != nil {
		t.Fatalf("qemu-img create: %v\n%s", err, out)
	}
	v := startVM(t, dir, disk)
	v.write(t, 0, 8<<20)
	v.write(t, 20<<20, 4<<20)

	ls := startServer(t, filepath.Join(dir, "server"))
	ctx := t.Context()
	log := slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelWarn}))
	src, err := Open(ctx, Options{ServerURL: "https://" + ls.s.APIAddr, InstallToken: ls.token, CAFingerprint: ls.s.CAFingerprint(),
		StateDir: filepath.Join(dir, "connector"), Logger: log}, "unix:"+v.qmpSock)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	srv, err := ls.s.Store().Server(ctx, src.ServerID)
	if err != nil {
		t.Fatal(err)
	}
	if srv.Hostname != "conn-test" || srv.CPUs != 2 || srv.RAMBytes != 64<<20 || len(srv.Disks) != 1 || srv.Disks[0].Name != "disk0" || len(srv.NICs) != 1 {
		t.Fatalf("source server facts: hostname %q cpus %d ram %d disks %+v nics %+v", srv.Hostname, srv.CPUs, srv.RAMBytes, srv.Disks, srv.NICs)
	}
	id := dataplane.DiskID(src.ServerID, "disk0")
	// The VM's certificate is near its end: the connector renews it over
	// the session its first run opens.
	oldSerial := dueCertificate(t, filepath.Join(dir, "server", "pki"), ls.s.Store(), src)

	run := func(name string, want Mode) *RunResult {
		t.Helper()
		start := time.Now()
		res, err := src.Run(ctx)
		if err != nil {
			t.Fatalf("%s run: %v", name, err)
		}
		d := res.Disks[0]
		t.Logf("%s run (%s) in %.2fs: tracked %d KiB, read %d KiB, sent %d KiB raw, %d KiB on the wire",
			name, d.Mode, time.Since(start).Seconds(), d.TrackedBytes>>10, d.ReadBytes>>10, d.RawSentBytes>>10, d.SentBytes>>10)
		if d.Mode != want {
			t.Fatalf("%s run mode %s, want %s", name, d.Mode, want)
		}
		if got, want := snapshotSHA(t, ls.s.Replica(), id, d.SnapshotSeq), v.diskSHA(t); got != want {
			t.Fatalf("after the %s run the replica snapshot (sha256 %s) differs from the disk (%s)", name, got, want)
		}
		return res
	}

	first := run("first", ModeFull)
	eventually(t, 30*time.Second, "the VM's certificate renewed", func() bool {
		s, err := ls.s.Store().Server(ctx, src.ServerID)
		if err != nil || s.AgentCertPrevSerial != oldSerial.String() {
			return false
		}
		b, err := os.ReadFile(filepath.Join(src.StateDir, "agent.crt"))
		if err != nil {
			return false
		}
		c, err := pki.ParseCertificatePEM(b)
		return err == nil && c.SerialNumber.String() == s.AgentCertSerial && time.Until(c.NotAfter) > 300*24*time.Hour
	})
	if got := first.Disks[0].RawSentBytes; got != 12<<20 {
		t.Errorf("first run sent %d bytes, want the 12 MiB of data (zeros skipped)", got)
	}
	eventually(t, 10*time.Second, "READY_FOR_TEST", func() bool {
		s, err := ls.s.Store().Server(ctx, src.ServerID)
		return err == nil && s.Lifecycle == ferry.LifecycleReadyForTest
	})

	v.write(t, 4<<20, 1<<20)
	v.write(t, 40<<20, 2<<20)
	second := run("second", ModeIncremental)
	if got := second.Disks[0].RawSentBytes; got != 3<<20 {
		t.Errorf("second run sent %d bytes for 3 MiB of writes", got)
	}

	third := run("third (nothing written)", ModeIncremental)
	if got := third.Disks[0].RawSentBytes; got != 0 {
		t.Errorf("a run with nothing written sent %d bytes", got)
	}

	// Lose the bitmap (as a QEMU restart without persistence would).
	var nodes []namedNode
	if err := v.c.Execute(ctx, "query-named-block-nodes", map[string]any{"flat": true}, &nodes); err != nil {
		t.Fatal(err)
	}
	for _, n := range nodes {
		for _, b := range n.Bitmaps {
			if strings.HasPrefix(b.Name, fleecePrefix) {
				if err := v.c.Execute(ctx, "block-dirty-bitmap-remove", map[string]any{"node": n.NodeName, "name": b.Name}, nil); err != nil {
					t.Fatal(err)
				}
				t.Logf("removed bitmap %s of %s", b.Name, n.NodeName)
			}
		}
	}
	v.write(t, 10<<20, 1<<20)
	// Scattered 4 KiB blocks: one alone in its 64 KiB hash block, two
	// with a gap in another. The rescan's second comparison sends just
	// them, not their 64 KiB blocks.
	v.write(t, 20<<20+4096, 4096)
	v.write(t, 30<<20+8192, 4096)
	v.write(t, 30<<20+16384, 4096)
	rescan := run("after losing the bitmap", ModeRescan)
	if got, want := rescan.Disks[0].RawSentBytes, int64(1<<20+3*4096); got != want {
		t.Errorf("rescan sent %d bytes for a 1 MiB change and three 4 KiB blocks, want %d", got, want)
	}
	v.write(t, 50<<20, 512<<10)
	after := run("after the rescan", ModeIncremental)
	if got := after.Disks[0].RawSentBytes; got != 512<<10 {
		t.Errorf("run after the rescan sent %d bytes for a 512 KiB change", got)
	}
	t.Logf("figures: disk %d MiB; first run %d KiB on the wire (%d raw), second run %d KiB (%d raw) for 3 MiB written; rescan %d KiB for 1 MiB and 12 KiB written",
		size>>20, first.SentBytes()>>10, first.Disks[0].RawSentBytes>>10, second.SentBytes()>>10, second.Disks[0].RawSentBytes>>10, rescan.SentBytes()>>10)
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}

// Switching a connector-replicated VM to the agent keeps its replica: the
// agent pairs as the same source server (the VM's machine id), adopts the
// replica with a hash rescan and sends only what differs.
func TestSwitchToAgentKeepsReplica(t *testing.T) {
	requireQEMU(t)
	dir := t.TempDir()
	disk := filepath.Join(dir, "disk.qcow2")
	const size = 32 << 20
	if out, err := exec.Command("qemu-img", "create", "-q", "-f", "qcow2", disk, fmt.Sprint(size)).CombinedOutput(); err != nil {
		t.Fatalf("qemu-img create: %v\n%s", err, out)
	}
	v := startVM(t, dir, disk)
	v.write(t, 0, 8<<20)
	ls := startServer(t, filepath.Join(dir, "server"))
	ctx := t.Context()
	log := slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelWarn}))
	o := Options{ServerURL: "https://" + ls.s.APIAddr, InstallToken: ls.token, CAFingerprint: ls.s.CAFingerprint(),
		StateDir: filepath.Join(dir, "connector"), Logger: log}
	src, err := Open(ctx, o, "unix:"+v.qmpSock)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := src.Run(ctx); err != nil {
		t.Fatal(err)
	}
	machineID := src.facts.MachineID(src.Socket)
	src.Close()
	// The guest now runs the agent; its disk is the VM's disk (here a raw
	// copy named as the connector named it) with writes made since.
	v.hmp(t, `qemu-io disk0 "flush"`)
	agentDir := filepath.Join(dir, "guest")
	os.MkdirAll(agentDir, 0o700)
	dev := filepath.Join(agentDir, "disk0")
	if out, err := exec.Command("qemu-img", "convert", "-U", "-f", "qcow2", "-O", "raw", disk, dev).CombinedOutput(); err != nil {
		t.Fatalf("qemu-img convert: %v\n%s", err, out)
	}
	f, err := os.OpenFile(dev, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(io.NewOffsetWriter(f, 20<<20), io.LimitReader(randReader{}, 1<<20)); err != nil {
		t.Fatal(err)
	}
	f.Close()

	state := filepath.Join(dir, "agent-state")
	// A guest's agent reads its facts from its kernel; this one is a file.
	st, err := agent.PairFacts(ctx, agent.PairOptions{ServerURL: o.ServerURL, InstallToken: ls.token, CAFingerprint: o.CAFingerprint,
		StateDir: state, MachineID: machineID}, &agent.Facts{Hostname: "conn-test", OS: "Linux", CPUs: 2,
		Disks: []api.PairDisk{{Name: "disk0", SizeBytes: size, LogicalBlockSize: 512}}})
	if err != nil {
		t.Fatal(err)
	}
	if st.SourceServerID != src.ServerID {
		t.Fatalf("the agent paired as %s, the connector replicated %s", st.SourceServerID, src.ServerID)
	}
	before := ls.s.DataPlane().ReceivedBytes()
	actx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() {
		done <- agent.Replicate(actx, agent.Options{StateDir: state, Devices: []string{dev}, Logger: log})
	}()
	defer func() { cancel(); <-done }()
	eventually(t, 30*time.Second, "rescan of the whole disk, then CONTINUOUS", func() bool {
		s, err := ls.s.Store().Server(ctx, src.ServerID)
		return err == nil && len(s.Disks) == 1 && s.Disks[0].RescannedBytes >= size && s.Replication.State == ferry.ReplicationContinuous
	})
	sent := ls.s.DataPlane().ReceivedBytes() - before
	t.Logf("agent after the connector: sent %d KiB for a 1 MiB difference on a %d MiB disk", sent>>10, size>>20)
	if sent > 2<<20 {
		t.Fatalf("the agent sent %d bytes: it copied the disk again instead of the differences", sent)
	}
	snaps, err := ls.s.DataPlane().Snapshot(ctx, src.ServerID, true)
	if err != nil {
		t.Fatal(err)
	}
	id := dataplane.DiskID(src.ServerID, "disk0")
	d, _ := ls.s.Replica().Disk(id)
	var seq uint64
	for _, s := range d.Snapshots() {
		if s.ID == snaps["disk0"] {
			seq = s.Seq
		}
	}
	if got, want := snapshotSHA(t, ls.s.Replica(), id, seq), fileSHA(t, dev); got != want {
		t.Fatalf("replica after the switch (sha256 %s) differs from the disk (%s)", got, want)
	}
}

func fileSHA(t *testing.T, path string) string {
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

// dueCertificate gives the source's VM identity a certificate from the
// server's CA (in caDir) with less than a third of its life left, and
// makes it the one the server accepts; it returns its serial.
func dueCertificate(t *testing.T, caDir string, st ferry.Store, src *Source) *big.Int {
	t.Helper()
	ca, err := pki.LoadOrCreateCA(caDir)
	if err != nil {
		t.Fatal(err)
	}
	keyPEM, csrPEM, err := pki.NewKeyAndCSR("vm")
	if err != nil {
		t.Fatal(err)
	}
	// 20 minutes after the CA's hour of clock skew.
	certPEM, serial, err := ca.SignAgentCSR(csrPEM, src.ServerID, 20*time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	for name, data := range map[string][]byte{"agent.key": keyPEM, "agent.crt": certPEM} {
		if err := os.WriteFile(filepath.Join(src.StateDir, name), data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := st.UpdateServer(t.Context(), src.ServerID, func(s *ferry.SourceServer) error { s.AgentCertSerial = serial.String(); return nil }); err != nil {
		t.Fatal(err)
	}
	return serial
}
