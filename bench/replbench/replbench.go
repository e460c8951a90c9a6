// Package replbench measures Ferry's replication on this machine beside
// its peers in the same run: the initial sync of an image on a loop device
// over loopback TLS against rsync (daemon on 127.0.0.1, whole file) and a
// plain TLS pipe of the same bytes, and the incremental sync after 1 % of
// the 4 KiB blocks changed (Ferry with eBPF tracking, Ferry's rescan, and
// rsync's delta transfer). It needs root (loop devices, eBPF) and rsync.
package replbench

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/ferrymigrate/ferry"
	"github.com/ferrymigrate/ferry/agent"
	"github.com/ferrymigrate/ferry/dataplane"
	"github.com/ferrymigrate/ferry/ebpf"
	"github.com/ferrymigrate/ferry/pki"
	"github.com/ferrymigrate/ferry/replica"
	"github.com/ferrymigrate/ferry/replica/fs"
	"github.com/ferrymigrate/ferry/sqlite"
	"github.com/ferrymigrate/ferry/track"
)

// Options size a run; zero values take the defaults.
type Options struct {
	// Dir holds the image, the replica store and rsync's copy; "" means
	// a new temporary directory.
	Dir string
	// ImageBytes is the image size (default 1 GiB): half zeros, a quarter
	// text, a quarter random.
	ImageBytes int64
	// ChangePercent is the share of 4 KiB blocks changed for the
	// incremental measurements (default 1).
	ChangePercent float64
	// Logf receives progress; nil discards it.
	Logf func(format string, args ...any)
}

// Measure is one timed transfer.
type Measure struct {
	Name string `json:"name"`
	// Seconds is the wall time until the copy was complete (for Ferry: the
	// replica durable and, for the initial sync, READY_FOR_TEST).
	Seconds float64 `json:"seconds"`
	// MBps is the image (or changed) bytes divided by Seconds, in 10^6 B/s.
	MBps float64 `json:"mb_per_s"`
	// CPUSeconds is user+system CPU of everything taking part (for
	// in-process runs the whole process: agent, server and both TLS ends;
	// for rsync both of its processes).
	CPUSeconds float64 `json:"cpu_seconds"`
	// WireBytes is what crossed the connection (payload) where known.
	WireBytes int64 `json:"wire_bytes,omitempty"`
	// Verified says the copy was compared with the source by sha256.
	Verified bool `json:"verified"`
}

// Result is a run's figures.
type Result struct {
	ImageBytes   int64     `json:"image_bytes"`
	ChangedBytes int64     `json:"changed_bytes"`
	InitialSync  []Measure `json:"initial_sync"`
	Incremental  []Measure `json:"incremental"`
}

// Run measures and prints a table to w.
func Run(ctx context.Context, o Options, w io.Writer) (*Result, error) {
	if o.ImageBytes <= 0 {
		o.ImageBytes = 1 << 30
	}
	o.ImageBytes -= o.ImageBytes % (1 << 20)
	if o.ChangePercent <= 0 {
		o.ChangePercent = 1
	}
	if o.Logf == nil {
		o.Logf = func(string, ...any) {}
	}
	if os.Geteuid() != 0 {
		return nil, errors.New("bench replication needs root (loop devices, eBPF)\nTry: sudo ferry bench replication")
	}
	if _, err := exec.LookPath("rsync"); err != nil {
		return nil, errors.New("bench replication compares with rsync, which is not installed")
	}
	if o.Dir == "" {
		d, err := os.MkdirTemp("", "ferry-replbench")
		if err != nil {
			return nil, fmt.Errorf("temporary directory: %w", err)
		}
		defer os.RemoveAll(d)
		o.Dir = d
	}
	res := &Result{ImageBytes: o.ImageBytes}
	img := filepath.Join(o.Dir, "source.img")
	o.Logf("writing a %d MiB image (half zeros, a quarter text, a quarter random)", o.ImageBytes>>20)
	if err := writeImage(img, o.ImageBytes); err != nil {
		return nil, err
	}
	dev, err := run("losetup", "-f", "--show", img)
	if err != nil {
		return nil, err
	}
	defer exec.Command("losetup", "-d", dev).Run()

	// Plain TLS pipe of the raw bytes.
	o.Logf("TLS pipe")
	m, err := tlsPipe(ctx, dev)
	if err != nil {
		return nil, err
	}
	res.InitialSync = append(res.InitialSync, m)

	// rsync daemon, whole file.
	o.Logf("rsync -W")
	rs, err := startRsyncd(o.Dir)
	if err != nil {
		return nil, err
	}
	defer rs.stop()
	m, err = rs.copy(img, o.ImageBytes, "rsync -W (daemon)", "-W")
	if err != nil {
		return nil, err
	}
	res.InitialSync = append(res.InitialSync, m)

	// Ferry: a real data-plane server and agent in this process over TLS.
	o.Logf("Ferry initial sync")
	h, err := newHarness(ctx, filepath.Join(o.Dir, "ferry"))
	if err != nil {
		return nil, err
	}
	defer h.close()
	tr, err := ebpf.New([]string{dev})
	if err != nil {
		return nil, fmt.Errorf("start the eBPF tracker: %w", err)
	}
	actx, stopAgent := context.WithCancel(ctx)
	state := filepath.Join(o.Dir, "agent")
	cpu0, t0 := cpuSelf(), time.Now()
	done := h.runAgent(actx, state, dev, tr)
	if err := h.waitFor(ctx, 10*time.Minute, func(s *ferry.SourceServer) bool { return s.Lifecycle == ferry.LifecycleReadyForTest }); err != nil {
		stopAgent()
		return nil, err
	}
	m = measure("Ferry (agent → TLS → replica)", time.Since(t0), cpuSelf()-cpu0, o.ImageBytes)
	m.WireBytes = h.dp.ReceivedBytes()
	id := dataplane.DiskID("s-1", filepath.Base(dev))
	if m.Verified, err = h.replicaMatches(ctx, id, dev); err != nil {
		stopAgent()
		return nil, err
	}
	res.InitialSync = append(res.InitialSync, m)

	// Incremental with eBPF tracking: change, then a drained snapshot.
	blocks := int(float64(o.ImageBytes/4096) * o.ChangePercent / 100)
	res.ChangedBytes = int64(blocks) * 4096
	o.Logf("changing %d random 4 KiB blocks; Ferry with eBPF tracking", blocks)
	if err := changeBlocks(dev, o.ImageBytes, blocks, 1); err != nil {
		stopAgent()
		return nil, err
	}
	before := h.dp.ReceivedBytes()
	cpu0, t0 = cpuSelf(), time.Now()
	if _, err := h.dp.Snapshot(ctx, "s-1", true); err != nil {
		stopAgent()
		return nil, fmt.Errorf("drained snapshot: %w", err)
	}
	m = measure("Ferry, eBPF tracking (to a drained snapshot)", time.Since(t0), cpuSelf()-cpu0, res.ChangedBytes)
	m.WireBytes = h.dp.ReceivedBytes() - before
	if m.Verified, err = h.replicaMatches(ctx, id, dev); err != nil {
		stopAgent()
		return nil, err
	}
	res.Incremental = append(res.Incremental, m)
	stopAgent()
	<-done
	tr.Close()

	o.Logf("rsync --inplace --no-whole-file")
	m, err = rs.copy(img, res.ChangedBytes, "rsync --inplace --no-whole-file", "--inplace", "--no-whole-file")
	if err != nil {
		return nil, err
	}
	res.Incremental = append(res.Incremental, m)

	// Incremental by rescan: untracked changes, then an agent without a
	// tracker starts and compares every block's hash with the replica.
	o.Logf("Ferry rescan (no tracking)")
	if err := changeBlocks(dev, o.ImageBytes, blocks, 2); err != nil {
		return nil, err
	}
	before = h.dp.ReceivedBytes()
	actx, stopAgent = context.WithCancel(ctx)
	defer stopAgent()
	cpu0, t0 = cpuSelf(), time.Now()
	done = h.runAgent(actx, state, dev, nil)
	err = h.waitFor(ctx, 2*time.Minute, func(s *ferry.SourceServer) bool {
		return len(s.Disks) == 1 && s.Disks[0].RescannedBytes >= o.ImageBytes && s.Replication.State == ferry.ReplicationContinuous
	})
	if err != nil {
		// Reported, not hidden: the run goes on without this figure.
		s, _ := h.st.Server(ctx, "s-1")
		o.Logf("Ferry rescan did not finish: %v (server %+v)", err, s.Replication)
		printTable(w, res)
		return res, nil
	}
	m = measure("Ferry rescan (hash compare, no tracking)", time.Since(t0), cpuSelf()-cpu0, res.ChangedBytes)
	m.WireBytes = h.dp.ReceivedBytes() - before
	if m.Verified, err = h.replicaMatches(ctx, id, dev); err != nil {
		return nil, err
	}
	res.Incremental = append(res.Incremental, m)
	stopAgent()
	<-done

	printTable(w, res)
	return res, nil
}

func measure(name string, d time.Duration, cpu time.Duration, bytes int64) Measure {
	return Measure{Name: name, Seconds: d.Seconds(), MBps: float64(bytes) / d.Seconds() / 1e6, CPUSeconds: cpu.Seconds()}
}

func printTable(w io.Writer, r *Result) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "Initial sync of %d MiB (half zeros, 1/4 text, 1/4 random) over loopback\n", r.ImageBytes>>20)
	fmt.Fprintln(tw, "method\tseconds\tMB/s of image\tCPU s\twire MiB\tverified")
	for _, m := range r.InitialSync {
		fmt.Fprintf(tw, "%s\t%.2f\t%.0f\t%.2f\t%s\t%v\n", m.Name, m.Seconds, m.MBps, m.CPUSeconds, mib(m.WireBytes), m.Verified)
	}
	fmt.Fprintf(tw, "\nIncremental after %d MiB of random 4 KiB blocks changed\n", r.ChangedBytes>>20)
	fmt.Fprintln(tw, "method\tseconds\tMB/s of changes\tCPU s\twire MiB\tverified")
	for _, m := range r.Incremental {
		fmt.Fprintf(tw, "%s\t%.2f\t%.1f\t%.2f\t%s\t%v\n", m.Name, m.Seconds, m.MBps, m.CPUSeconds, mib(m.WireBytes), m.Verified)
	}
	tw.Flush()
}

func mib(n int64) string {
	if n == 0 {
		return "-"
	}
	return fmt.Sprintf("%.1f", float64(n)/(1<<20))
}

func run(name string, args ...string) (string, error) {
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, out)
	}
	return strings.TrimSpace(string(out)), nil
}

// writeImage writes size bytes in 1 MiB chunks: the first half zeros
// (sparse), then a quarter of text, then a quarter of random bytes.
func writeImage(path string, size int64) error {
	f, err := os.Create(path)
	if err != nil {
		return fmt.Errorf("create image: %w", err)
	}
	defer f.Close()
	if err := f.Truncate(size); err != nil {
		return fmt.Errorf("size image: %w", err)
	}
	words := strings.Fields("the migration server replicates every block of the source disk to a staging area over a mutual TLS connection while applications keep running and operators watch lag backlog and progress in the dashboard before they launch a test instance")
	rng := rand.New(rand.NewPCG(1, 2))
	chunk := make([]byte, 1<<20)
	for off := size / 2; off < size; off += int64(len(chunk)) {
		if off < size*3/4 {
			b := chunk[:0]
			for len(b) < len(chunk) {
				b = append(b, words[rng.IntN(len(words))]...)
				b = append(b, ' ')
				if rng.IntN(12) == 0 {
					b = append(b, '\n')
				}
			}
			copy(chunk, b)
		} else {
			for i := 0; i < len(chunk); i += 8 {
				v := rng.Uint64()
				for j := range 8 {
					chunk[i+j] = byte(v >> (8 * j))
				}
			}
		}
		if _, err := f.WriteAt(chunk, off); err != nil {
			return fmt.Errorf("write image: %w", err)
		}
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("sync image: %w", err)
	}
	return nil
}

// changeBlocks overwrites n random 4 KiB blocks of dev with random data,
// with O_DIRECT so the writes reach the device at once.
func changeBlocks(dev string, size int64, n int, seed uint64) error {
	f, err := os.OpenFile(dev, os.O_WRONLY|syscall.O_DIRECT, 0)
	if err != nil {
		return fmt.Errorf("open %s: %w", dev, err)
	}
	defer f.Close()
	rng := rand.New(rand.NewPCG(seed, 99))
	buf := alignedBlock()
	for range n {
		for i := 0; i < len(buf); i += 8 {
			v := rng.Uint64()
			for j := range 8 {
				buf[i+j] = byte(v >> (8 * j))
			}
		}
		off := rng.Int64N(size/4096) * 4096
		if _, err := f.WriteAt(buf, off); err != nil {
			return fmt.Errorf("write %s at %d: %w", dev, off, err)
		}
	}
	return nil
}

func alignedBlock() []byte {
	b := make([]byte, 8192)
	for i := range 4096 {
		if uintptrOf(b[i:])%4096 == 0 {
			return b[i : i+4096 : i+4096]
		}
	}
	return b[:4096]
}

// cpuSelf is this process's user+system CPU time so far.
func cpuSelf() time.Duration { return rusage(syscall.RUSAGE_SELF) }

// cpuChildren is the CPU time of this process's waited-for children.
func cpuChildren() time.Duration { return rusage(syscall.RUSAGE_CHILDREN) }

func rusage(who int) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(who, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func fileSHA(r io.ReaderAt, size int64) ([32]byte, error) {
	h := sha256.New()
	if _, err := io.Copy(h, io.NewSectionReader(r, 0, size)); err != nil {
		return [32]byte{}, err
	}
	var s [32]byte
	copy(s[:], h.Sum(nil))
	return s, nil
}

// harness is an in-process replication server with one source server.
type harness struct {
	st      ferry.Store
	rs      *replica.Store
	dp      *dataplane.Server
	addr    string
	tlsConf *tls.Config
	cancel  context.CancelFunc
	done    chan error
}

func newHarness(ctx context.Context, dir string) (*harness, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("harness: %w", err)
	}
	st, err := sqlite.Open(filepath.Join(dir, "db"))
	if err != nil {
		return nil, err
	}
	ca, err := pki.LoadOrCreateCA(filepath.Join(dir, "pki"))
	if err != nil {
		return nil, err
	}
	cert, err := ca.IssueServerCert([]string{"127.0.0.1"}, time.Hour)
	if err != nil {
		return nil, err
	}
	keyPEM, csrPEM, err := pki.NewKeyAndCSR("agent")
	if err != nil {
		return nil, err
	}
	certPEM, serial, err := ca.SignAgentCSR(csrPEM, "s-1", time.Hour)
	if err != nil {
		return nil, err
	}
	agentCert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return nil, fmt.Errorf("agent certificate: %w", err)
	}
	conf, err := pki.ClientTLSConfigWithCA(ca.CertPEM(), &agentCert)
	if err != nil {
		return nil, err
	}
	srv := &ferry.SourceServer{ID: "s-1", MachineID: "bench", Hostname: "bench", Lifecycle: ferry.LifecycleNotReady,
		AgentCertSerial: serial.String(), Replication: ferry.ReplicationInfo{State: ferry.ReplicationStopped}}
	if err := st.CreateServer(ctx, srv); err != nil {
		return nil, err
	}
	keys, err := replica.OpenKeyFile(filepath.Join(dir, "replica.key"))
	if err != nil {
		return nil, err
	}
	be, err := fs.Open(filepath.Join(dir, "objects"))
	if err != nil {
		return nil, err
	}
	rs, err := replica.Open(ctx, replica.Options{Dir: filepath.Join(dir, "staging"), Backend: be, Keys: keys})
	if err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("listen: %w", err)
	}
	dp := &dataplane.Server{Store: st, CA: ca, Cert: cert, Replica: rs, PollInterval: 200 * time.Millisecond,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}
	sctx, cancel := context.WithCancel(context.Background())
	h := &harness{st: st, rs: rs, dp: dp, addr: ln.Addr().String(), tlsConf: conf, cancel: cancel, done: make(chan error, 1)}
	go func() { h.done <- dp.Serve(sctx, ln) }()
	return h, nil
}

func (h *harness) close() {
	h.cancel()
	<-h.done
	h.rs.Close()
	h.st.Close()
}

func (h *harness) runAgent(ctx context.Context, state, dev string, tr track.Tracker) chan error {
	done := make(chan error, 1)
	go func() {
		done <- agent.Replicate(ctx, agent.Options{StateDir: state, Devices: []string{dev}, Tracker: tr, ServerID: "s-1",
			Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
			Dial: func(ctx context.Context) (net.Conn, error) {
				d := tls.Dialer{Config: h.tlsConf}
				return d.DialContext(ctx, "tcp", h.addr)
			}})
	}()
	return done
}

func (h *harness) waitFor(ctx context.Context, within time.Duration, cond func(*ferry.SourceServer) bool) error {
	deadline := time.Now().Add(within)
	for {
		s, err := h.st.Server(ctx, "s-1")
		if err == nil && cond(s) {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("replication did not reach the wanted state within %v", within)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// replicaMatches compares the replica's durable head with the device.
func (h *harness) replicaMatches(ctx context.Context, id, dev string) (bool, error) {
	d, err := h.rs.Disk(id)
	if err != nil {
		return false, err
	}
	r, err := d.OpenHead(ctx)
	if err != nil {
		return false, err
	}
	defer r.Close()
	f, err := os.Open(dev)
	if err != nil {
		return false, fmt.Errorf("open %s: %w", dev, err)
	}
	defer f.Close()
	a, err := fileSHA(r, r.Size())
	if err != nil {
		return false, fmt.Errorf("read replica: %w", err)
	}
	b, err := fileSHA(f, r.Size())
	if err != nil {
		return false, fmt.Errorf("read %s: %w", dev, err)
	}
	if a != b {
		return false, fmt.Errorf("replica %s differs from %s", id, dev)
	}
	return true, nil
}
