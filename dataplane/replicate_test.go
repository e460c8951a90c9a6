package dataplane_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/ferrymigrate/ferry"
	"github.com/ferrymigrate/ferry/agent"
	"github.com/ferrymigrate/ferry/dataplane"
	"github.com/ferrymigrate/ferry/pki"
	"github.com/ferrymigrate/ferry/protocol"
	"github.com/ferrymigrate/ferry/replica"
	"github.com/ferrymigrate/ferry/replica/fs"
	"github.com/ferrymigrate/ferry/sqlite"
	"github.com/ferrymigrate/ferry/track"
)

// manualTracker is a test helper: a track.Tracker the test drives by
// sending batches, standing in for the eBPF and rescan trackers.
type manualTracker struct{ ch chan []track.Batch }

func (t *manualTracker) Next(ctx context.Context) ([]track.Batch, error) {
	select {
	case b := <-t.ch:
		return b, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}
func (t *manualTracker) Kind() string { return "manual-test" }
func (t *manualTracker) Close() error { return nil }

type harness struct {
	t       *testing.T
	st      ferry.Store
	rs      *replica.Store
	dp      *dataplane.Server
	addr    string
	tlsConf *tls.Config
	ca      *pki.CA
	cert    tls.Certificate
	stop    func() // ends the replication server serve started
	clock   *clock // the server's clock, when a test moves it
}

func newHarness(t *testing.T) *harness {
	dir := t.TempDir()
	st, err := sqlite.Open(filepath.Join(dir, "db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	ca, err := pki.LoadOrCreateCA(filepath.Join(dir, "pki"))
	if err != nil {
		t.Fatal(err)
	}
	cert, err := ca.IssueServerCert([]string{"127.0.0.1"}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	keyPEM, csrPEM, _ := pki.NewKeyAndCSR("agent")
	certPEM, serial, err := ca.SignAgentCSR(csrPEM, "s-1", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	agentCert, _ := tls.X509KeyPair(certPEM, keyPEM)
	conf, err := pki.ClientTLSConfigWithCA(ca.CertPEM(), &agentCert)
	if err != nil {
		t.Fatal(err)
	}
	srv := &ferry.SourceServer{ID: "s-1", MachineID: "m", Hostname: "h", Lifecycle: ferry.LifecycleNotReady, AgentCertSerial: serial.String(),
		Replication: ferry.ReplicationInfo{State: ferry.ReplicationStopped}}
	if err := st.CreateServer(t.Context(), srv); err != nil {
		t.Fatal(err)
	}
	keys, err := replica.OpenKeyFile(filepath.Join(dir, "replica.key"))
	if err != nil {
		t.Fatal(err)
	}
	be, err := fs.Open(filepath.Join(dir, "objects"), fs.Packed(replica.ChunkPrefix))
	if err != nil {
		t.Fatal(err)
	}
	rs, err := replica.Open(t.Context(), replica.Options{Dir: filepath.Join(dir, "staging"), Backend: be, Keys: keys})
	if err != nil {
		t.Fatal(err)
	}
	h := &harness{t: t, st: st, rs: rs, tlsConf: conf, ca: ca, cert: cert}
	h.serve()
	t.Cleanup(func() {
		h.stop()
		rs.Close()
		be.Close() // its pack compactor may still be writing
	})
	return h
}

// serve starts a replication server (a new process, as far as its
// in-memory counters go) on the harness's stores.
func (h *harness) serve() { h.serveWith(nil) }

// hello connects to the replication server as s-1's agent with one 1 MiB
// disk, vda, and sends HELLO; the caller reads the answers.
func (h *harness) hello(t *testing.T) (net.Conn, *protocol.Reader) {
	t.Helper()
	d := tls.Dialer{Config: h.tlsConf}
	c, err := d.DialContext(t.Context(), "tcp", h.addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	if _, err := c.Write(protocol.Append(nil, &protocol.Hello{ProtocolVersion: protocol.Version, AgentVersion: "test", ServerID: "s-1", Tracker: "manual-test",
		Disks: []protocol.HelloDisk{{Name: "vda", Size: 1 << 20, LogicalBlockSize: 512}}})); err != nil {
		t.Fatal(err)
	}
	return c, protocol.NewReader(c)
}

// serveWith is serve with set, when not nil, changing the server's
// settings before it starts.
func (h *harness) serveWith(set func(*dataplane.Server)) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		h.t.Fatal(err)
	}
	h.dp = &dataplane.Server{Store: h.st, CA: h.ca, Cert: h.cert, Replica: h.rs, PollInterval: 200 * time.Millisecond,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}
	if set != nil {
		set(h.dp)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func(dp *dataplane.Server) { done <- dp.Serve(ctx, ln) }(h.dp)
	h.addr = ln.Addr().String()
	h.stop = func() {
		cancel()
		<-done
	}
}

func (h *harness) runAgent(ctx context.Context, stateDir string, dev string, tr track.Tracker) chan error {
	done := make(chan error, 1)
	go func() {
		done <- agent.Replicate(ctx, agent.Options{StateDir: stateDir, Devices: []string{dev}, Tracker: tr, ServerID: "s-1",
			Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
			Dial: func(ctx context.Context) (net.Conn, error) {
				d := tls.Dialer{Config: h.tlsConf}
				return d.DialContext(ctx, "tcp", h.addr)
			}})
	}()
	return done
}

// replicaEquals reports whether the replica's durable head equals want.
func (h *harness) replicaEquals(id string, want []byte) bool {
	d, err := h.rs.Disk(id)
	if err != nil {
		return false
	}
	r, err := d.OpenHead(h.t.Context())
	if err != nil {
		return false
	}
	defer r.Close()
	if r.Size() != int64(len(want)) {
		return false
	}
	got := make([]byte, len(want))
	if _, err := r.ReadAt(got, 0); err != nil && !errors.Is(err, io.EOF) {
		return false
	}
	return bytes.Equal(got, want)
}

func eventually(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %v", what, d)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// An agent replicates a file-backed device over real TLS into a real
// replica store: initial sync, tracked writes, a restart that rescans
// without re-sending, and READY_FOR_TEST.
func TestReplicateFileDevice(t *testing.T) {
	h := newHarness(t)
	dir := t.TempDir()
	dev := filepath.Join(dir, "disk0")
	const size = 24 << 20
	img := make([]byte, size)
	rand.Read(img[:8<<20])                                    // random
	copy(img[12<<20:], bytes.Repeat([]byte("ferry "), 1<<20)) // text; the rest zeros
	if err := os.WriteFile(dev, img, 0o600); err != nil {
		t.Fatal(err)
	}
	state := filepath.Join(dir, "state")
	os.MkdirAll(state, 0o700)
	tr := &manualTracker{ch: make(chan []track.Batch, 16)}
	ctx, cancel := context.WithCancel(t.Context())
	done := h.runAgent(ctx, state, dev, tr)

	id := dataplane.DiskID("s-1", "disk0")
	eventually(t, 20*time.Second, "initial sync converges", func() bool { return h.replicaEquals(id, img) })
	eventually(t, 10*time.Second, "READY_FOR_TEST", func() bool {
		s, _ := h.st.Server(t.Context(), "s-1")
		return s.Lifecycle == ferry.LifecycleReadyForTest && s.Replication.State == ferry.ReplicationContinuous
	})
	sent := h.dp.ReceivedBytes()
	if sent > 15<<20 {
		t.Fatalf("initial sync sent %d bytes of data for a disk with 14 MiB of non-zero data", sent)
	}

	// Tracked writes.
	f, _ := os.OpenFile(dev, os.O_RDWR, 0)
	for _, off := range []int64{4096, 20 << 20, 3 << 20} {
		b := bytes.Repeat([]byte{byte(off)}, 8192)
		f.WriteAt(b, off)
		copy(img[off:], b)
		tr.ch <- []track.Batch{{Device: dev, Extents: []track.Extent{{Offset: off, Length: 8192}}}}
	}
	eventually(t, 10*time.Second, "tracked writes converge", func() bool { return h.replicaEquals(id, img) })

	// Restart the agent with an untracked write in between: the rescan
	// finds it and sends little else.
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	b := bytes.Repeat([]byte{0xab}, 4096)
	f.WriteAt(b, 10<<20)
	copy(img[10<<20:], b)
	f.Close()
	before := h.dp.ReceivedBytes()
	ctx, cancel = context.WithCancel(t.Context())
	defer cancel()
	done = h.runAgent(ctx, state, dev, tr)
	eventually(t, 20*time.Second, "rescan converges", func() bool { return h.replicaEquals(id, img) })
	eventually(t, 10*time.Second, "rescan done", func() bool {
		s, _ := h.st.Server(t.Context(), "s-1")
		return s.Replication.State == ferry.ReplicationContinuous && s.Disks[0].RescannedBytes == size
	})
	if resent := h.dp.ReceivedBytes() - before; resent > 64<<10 {
		t.Fatalf("restart re-sent %d bytes for one 4 KiB change", resent)
	}
	cancel()
	<-done
}

// The bytes an agent sent are added to the server's record as they arrive,
// so a restarted replication server (whose in-memory counters start from
// zero) keeps counting from the stored figure; the agent reports where its
// sender spends its time (protocol revision 2) and the time replicating
// is counted too.
func TestSentBytesSurviveRestart(t *testing.T) {
	h := newHarness(t)
	dir := t.TempDir()
	dev := filepath.Join(dir, "disk0")
	const size = 8 << 20
	img := make([]byte, size)
	rand.Read(img[:4<<20]) // incompressible, so sent bytes ≈ data
	if err := os.WriteFile(dev, img, 0o600); err != nil {
		t.Fatal(err)
	}
	state := filepath.Join(dir, "state")
	os.MkdirAll(state, 0o700)
	tr := &manualTracker{ch: make(chan []track.Batch, 16)}
	ctx, cancel := context.WithCancel(t.Context())
	done := h.runAgent(ctx, state, dev, tr)
	id := dataplane.DiskID("s-1", "disk0")
	eventually(t, 20*time.Second, "initial sync converges", func() bool { return h.replicaEquals(id, img) })
	eventually(t, 10*time.Second, "sent bytes stored", func() bool {
		s, _ := h.st.Server(t.Context(), "s-1")
		return s.SentBytes() >= 4<<20
	})
	eventually(t, 10*time.Second, "agent timing reported", func() bool {
		a := h.dp.Traffic("s-1").Agent
		return a != nil && a.ReadNanos > 0 && a.IdleNanos > 0
	})
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	h.stop()
	first, err := h.st.Server(t.Context(), "s-1")
	if err != nil {
		t.Fatal(err)
	}
	sent := first.SentBytes()
	if sent < 4<<20 || sent > 4<<20+64<<10 {
		t.Fatalf("stored %d sent bytes for 4 MiB of random data", sent)
	}
	if first.Replication.ReplicatingSeconds <= 0 {
		t.Fatalf("no replicating time counted: %+v", first.Replication)
	}

	// A new replication server process: its counters start at zero, the
	// stored figure does not.
	h.serve()
	if got := h.dp.Traffic("s-1").ReceivedBytes; got != 0 {
		t.Fatalf("a new replication server starts with %d received bytes", got)
	}
	ctx, cancel = context.WithCancel(t.Context())
	defer cancel()
	done = h.runAgent(ctx, state, dev, tr)
	f, _ := os.OpenFile(dev, os.O_RDWR, 0)
	b := make([]byte, 256<<10)
	rand.Read(b)
	f.WriteAt(b, 6<<20)
	f.Close()
	copy(img[6<<20:], b)
	tr.ch <- []track.Batch{{Device: dev, Extents: []track.Extent{{Offset: 6 << 20, Length: int64(len(b))}}}}
	eventually(t, 20*time.Second, "tracked write converges", func() bool { return h.replicaEquals(id, img) })
	eventually(t, 10*time.Second, "sent bytes keep counting", func() bool {
		s, _ := h.st.Server(t.Context(), "s-1")
		return s.SentBytes() >= sent+int64(len(b))
	})
	cancel()
	<-done
}
