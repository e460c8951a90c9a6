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
	"time"

	"golang.org/x/sys/unix"
	"golang.org/x/time/rate"

	"github.com/ferrymigrate/ferry"
	"github.com/ferrymigrate/ferry/bench/harness"
	"github.com/ferrymigrate/ferry/bench/workload"
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
}

// Result is a run's figures.
type Result struct {
	DiskBytes int64 `json:"disk_bytes"`
	RPO       []Run `json:"rpo"`
	Footprint Run   `json:"footprint"`
}

// drainWait bounds the wait for the last writes after a run.
const drainWait = 60 * time.Second

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
		// The last writes are still on their way: wait for them.
		deadline := time.Now().Add(drainWait)
		for {
			r.Stats = m.Match()
			if r.Unmatched == 0 || time.Now().After(deadline) || ctx.Err() != nil {
				break
			}
			time.Sleep(200 * time.Millisecond)
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

// writer writes stamped random 4 KiB blocks to a device with O_DIRECT.
type writer struct {
	f     *os.File
	size  int64
	buf   []byte
	rng   *rand.Rand
	stamp uint64 // last stamp used; stamps never repeat across runs
}

func newWriter(dev string, size int64) (*writer, error) {
	f, err := os.OpenFile(dev, os.O_WRONLY|unix.O_DIRECT, 0)
	if err != nil {
		return nil, fmt.Errorf("rpo writer: %w", err)
	}
	return &writer{f: f, size: size, buf: workload.AlignedBuf(blockSize), rng: rand.New(rand.NewPCG(11, 12))}, nil
}

func (w *writer) close() { w.f.Close() }

// run writes at mbps (10^6 B/s) for d, noting each completed write in m,
// and returns the bytes written.
func (w *writer) run(ctx context.Context, mbps float64, d time.Duration, m *Matcher) (int64, error) {
	lim := rate.NewLimiter(rate.Limit(mbps*1e6/blockSize), 8)
	tctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	var n int64
	for {
		if err := lim.Wait(tctx); err != nil {
			// The run's time is up, or the caller gave up.
			return n, ctx.Err()
		}
		w.stamp++
		workload.FillRandom(w.rng, w.buf)
		putStamp(w.buf, w.stamp)
		off := w.rng.Int64N(w.size/blockSize) * blockSize
		if _, err := w.f.WriteAt(w.buf, off); err != nil {
			return n, fmt.Errorf("rpo writer at %d: %w", off, err)
		}
		m.wrote(off, w.stamp, time.Now())
		n += blockSize
	}
}
