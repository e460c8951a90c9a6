package rpo

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
	"golang.org/x/time/rate"

	"github.com/ferrymigrate/ferry"
	"github.com/ferrymigrate/ferry/bench/harness"
	"github.com/ferrymigrate/ferry/bench/workload"
	"github.com/ferrymigrate/ferry/internal/directio"
)

// Options size a run; zero values take the defaults.
type Options struct {
	// Dir holds the source image and the replica store. Required.
	Dir string
	// AgentCommand runs the agent, e.g. {"/usr/bin/ferry", "agent"};
	// the bench adds --state-dir, --disk and --tracker. Required.
	AgentCommand []string
	// Rates are the write rates in 10^6 B/s measured for the RPO
	// (default 5 and 20).
	Rates []float64
	// Duration is how long each rate is written (default 60 s).
	Duration time.Duration
	// FootprintRate is the write rate at which the agent's CPU and memory
	// are measured (default 10), for Duration.
	FootprintRate float64
	// DiskBytes is the source disk's size (default 1 GiB; writes go to
	// random blocks of all of it).
	DiskBytes int64
	// Logf receives progress; nil discards it.
	Logf func(format string, args ...any)
}

// Run is one rate's measurement.
type Run struct {
	// RateMBps is the rate asked for; WrittenMBps what the writer did.
	RateMBps    float64 `json:"rate_mb_per_s"`
	WrittenMBps float64 `json:"written_mb_per_s"`
	Seconds     float64 `json:"seconds"`
	Stats
	// Agent's footprint over the run (its own process).
	AgentCPUPercent float64 `json:"agent_cpu_percent_of_a_core"`
	AgentRSSMax     int64   `json:"agent_rss_max_bytes"`
	AgentRSSPeak    int64   `json:"agent_rss_peak_bytes"` // VmHWM since the agent started
	// LostOnReplica counts the unmatched writes whose block on the
	// replica's durable head is older than the write (the replica missed
	// it), as opposed to a newer write having replaced it on the device
	// and not yet arrived.
	LostOnReplica int `json:"lost_on_replica"`
}

// Result is a run's figures.
type Result struct {
	DiskBytes int64 `json:"disk_bytes"`
	RPO       []Run `json:"rpo"`
	Footprint Run   `json:"footprint"`
}

// drainWait bounds the wait for the last writes after a run; drainStall
// ends it early when no write became durable for that long.
const (
	drainWait  = 60 * time.Second
	drainStall = 10 * time.Second
)

// Measure sets up a loop device, the data plane and a `ferry agent`
// process, waits for the initial sync, then writes at each rate and
// reports the RPO, then at FootprintRate for the agent's footprint.
func Measure(ctx context.Context, o Options) (*Result, error) {
	if o.Dir == "" || len(o.AgentCommand) == 0 {
		return nil, errors.New("rpo: a directory and the agent command are required")
	}
	if len(o.Rates) == 0 {
		o.Rates = []float64{5, 20}
	}
	for _, r := range o.Rates {
		if r <= 0 || r > 2000 {
			return nil, fmt.Errorf("rpo: write rate %v MB/s is out of range (above 0, at most 2000)", r)
		}
	}
	if o.FootprintRate < 0 || o.FootprintRate > 2000 {
		return nil, fmt.Errorf("rpo: footprint rate %v MB/s is out of range (0 for the default, at most 2000)", o.FootprintRate)
	}
	if o.Duration <= 0 {
		o.Duration = time.Minute
	}
	if o.FootprintRate == 0 {
		o.FootprintRate = 10
	}
	if o.DiskBytes <= 0 {
		o.DiskBytes = 1 << 30
	}
	o.DiskBytes -= o.DiskBytes % workload.MiB
	if o.Logf == nil {
		o.Logf = func(string, ...any) {}
	}
	if os.Geteuid() != 0 {
		return nil, errors.New("rpo: needs root (loop devices, eBPF)")
	}
	work, err := os.MkdirTemp(o.Dir, "rpo")
	if err != nil {
		return nil, fmt.Errorf("rpo: %w", err)
	}
	defer os.RemoveAll(work)
	img := filepath.Join(work, "source.img")
	o.Logf("rpo: %d MiB source image", o.DiskBytes>>20)
	if err := workload.WriteImage(img, o.DiskBytes); err != nil {
		return nil, err
	}
	out, err := exec.Command("losetup", "-f", "--show", img).CombinedOutput()
	if err != nil {
		return nil, fmt.Errorf("losetup: %w: %s", err, out)
	}
	dev := strings.TrimSpace(string(out))
	defer exec.Command("losetup", "-d", dev).Run()

	m := NewMatcher(harness.ServerID, 0)
	h, err := harness.New(ctx, filepath.Join(work, "server"), m)
	if err != nil {
		return nil, err
	}
	defer h.Close()
	state := filepath.Join(work, "agent")
	if err := h.WriteAgentState(state); err != nil {
		return nil, err
	}
	ag, err := startAgent(o.AgentCommand, state, dev, filepath.Join(work, "agent.log"))
	if err != nil {
		return nil, err
	}
	defer ag.stop()
	o.Logf("rpo: initial sync by a `%s` process (pid %d)", strings.Join(o.AgentCommand, " "), ag.pid())
	err = h.WaitFor(ctx, 20*time.Minute, func(s *ferry.SourceServer) bool {
		return s.Lifecycle == ferry.LifecycleReadyForTest && s.Replication.State == ferry.ReplicationContinuous
	})
	if err != nil {
		return nil, fmt.Errorf("rpo: initial sync: %w%s", err, ag.tail())
	}
	res := &Result{DiskBytes: o.DiskBytes}
	w, err := newWriter(dev, o.DiskBytes)
	if err != nil {
		return nil, err
	}
	defer w.close()
	runAt := func(mbps float64) (Run, error) {
		m.reset()
		cpu0, err := procCPU(ag.pid())
		if err != nil {
			return Run{}, err
		}
		sampler := startRSSSampler(ag.pid())
		t0 := time.Now()
		n, err := w.run(ctx, mbps, o.Duration, m)
		el := time.Since(t0)
		cpu1, cerr := procCPU(ag.pid())
		rssMax := sampler.stop()
		if err != nil {
			return Run{}, err
		}
		if cerr != nil {
			return Run{}, fmt.Errorf("%w%s", cerr, ag.tail())
		}
		r := Run{RateMBps: mbps, WrittenMBps: float64(n) / el.Seconds() / 1e6, Seconds: el.Seconds(),
			AgentCPUPercent: (cpu1 - cpu0).Seconds() / el.Seconds() * 100, AgentRSSMax: rssMax}
		r.AgentRSSPeak, _ = procStatus(ag.pid(), "VmHWM")
		// The last writes are still on their way: wait for them while
		// they keep arriving.
		deadline, last := time.Now().Add(drainWait), time.Now()
		r.Stats = m.Match()
		for r.Unmatched > 0 && time.Now().Before(deadline) && time.Since(last) < drainStall && ctx.Err() == nil {
			time.Sleep(200 * time.Millisecond)
			prev := r.Unmatched
			if r.Stats = m.Match(); r.Unmatched < prev {
				last = time.Now()
			}
		}
		if r.Unmatched > 0 {
			o.Logf("rpo: %d writes at %v MB/s not durable on the server after the drain wait; checking them on the replica", r.Unmatched, mbps)
			var lost []string
			lost, err = lostOnReplica(ctx, h, dev, m.unmatched())
			if err != nil {
				return r, err
			}
			r.LostOnReplica = len(lost)
			if len(lost) > 0 {
				o.Logf("rpo: writes missing from the replica (offset, stamp, replica's stamp): %s", strings.Join(lost[:min(len(lost), 10)], "; "))
			}
		}
		return r, ctx.Err()
	}
	for _, rate := range o.Rates {
		o.Logf("rpo: random 4 KiB writes at %v MB/s for %v", rate, o.Duration)
		r, err := runAt(rate)
		if err != nil {
			return nil, err
		}
		res.RPO = append(res.RPO, r)
	}
	o.Logf("rpo: agent footprint at %v MB/s for %v", o.FootprintRate, o.Duration)
	if res.Footprint, err = runAt(o.FootprintRate); err != nil {
		return nil, err
	}
	return res, nil
}

// writers is the number of concurrent writers: one synchronous O_DIRECT
// writer cannot reach 20 MB/s of 4 KiB writes on a loaded machine.
const writers = 4

// writer writes stamped random 4 KiB blocks to a device with O_DIRECT
// from several goroutines. Writer k writes only blocks whose index is k
// modulo writers, so writes to one block never overlap and a block's
// stamps complete in order.
type writer struct {
	f     *os.File
	size  int64
	stamp atomic.Uint64 // last stamp used; stamps never repeat across runs
	runs  uint64
}

func newWriter(dev string, size int64) (*writer, error) {
	f, err := os.OpenFile(dev, os.O_WRONLY|unix.O_DIRECT, 0)
	if err != nil {
		return nil, fmt.Errorf("rpo writer: %w", err)
	}
	return &writer{f: f, size: size}, nil
}

func (w *writer) close() { w.f.Close() }

// run writes at mbps (10^6 B/s) for d, noting each completed write in m,
// and returns the bytes written.
func (w *writer) run(ctx context.Context, mbps float64, d time.Duration, m *Matcher) (int64, error) {
	lim := rate.NewLimiter(rate.Limit(mbps*1e6/blockSize), writers)
	tctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	w.runs++
	var n atomic.Int64
	errs := make(chan error, writers)
	for k := range uint64(writers) {
		go func() {
			rng := rand.New(rand.NewPCG(w.runs, k))
			buf := directio.Buf(blockSize)
			blocks := w.size / blockSize / writers
			for {
				if lim.Wait(tctx) != nil {
					errs <- nil
					return
				}
				stamp := w.stamp.Add(1)
				workload.FillRandom(rng, buf)
				putStamp(buf, stamp)
				off := (rng.Int64N(blocks)*writers + int64(k)) * blockSize
				if _, err := w.f.WriteAt(buf, off); err != nil {
					cancel()
					errs <- fmt.Errorf("rpo writer at %d: %w", off, err)
					return
				}
				m.wrote(off, stamp, time.Now())
				n.Add(blockSize)
			}
		}()
	}
	var first error
	for range writers {
		if err := <-errs; err != nil && first == nil {
			first = err
		}
	}
	if first == nil {
		first = ctx.Err()
	}
	return n.Load(), first
}

// lostOnReplica takes a drained snapshot (the server's FLUSH: every write
// completed before it must be in it; a late write may merely still be in
// the agent's backlog, so the replica's head proves nothing), reads each
// unmatched write's block from it and from the device, and counts those
// where the snapshot holds an older stamp than the write while the device
// holds the write or a newer one: writes the replica missed. It describes
// each.
func lostOnReplica(ctx context.Context, h *harness.Harness, dev string, ws []sourceWrite) ([]string, error) {
	d, err := h.Replica.Disk(harness.DiskID(dev))
	if err != nil {
		return nil, err
	}
	sctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	snaps, err := h.DP.Snapshot(sctx, harness.ServerID, true)
	cancel()
	if err != nil {
		return nil, fmt.Errorf("rpo check: drained snapshot: %w", err)
	}
	rd, err := d.OpenSnapshot(ctx, snaps[filepath.Base(dev)])
	if err != nil {
		return nil, err
	}
	defer rd.Close()
	f, err := os.OpenFile(dev, os.O_RDONLY|unix.O_DIRECT, 0)
	if err != nil {
		return nil, fmt.Errorf("rpo check: %w", err)
	}
	defer f.Close()
	a, b := directio.Buf(blockSize), directio.Buf(blockSize)
	var lost []string
	for _, w := range ws {
		if _, err := rd.ReadAt(a, w.off); err != nil {
			return nil, fmt.Errorf("rpo check: read replica at %d: %w", w.off, err)
		}
		if _, err := f.ReadAt(b, w.off); err != nil {
			return nil, fmt.Errorf("rpo check: read %s at %d: %w", dev, w.off, err)
		}
		rs, _ := readStamp(a)
		ds, _ := readStamp(b)
		if rs < w.stamp && ds >= w.stamp {
			lost = append(lost, fmt.Sprintf("%d, %d, %d", w.off, w.stamp, rs))
		}
	}
	return lost, nil
}
