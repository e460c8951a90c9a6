// Package replbench measures Ferry's replication on this machine beside
// its peers in the same run: the initial sync of an image on a loop device
// over loopback TLS against rsync (daemon on 127.0.0.1, whole file) and a
// plain TLS pipe of the same bytes, and the incremental sync after 1 % of
// the 4 KiB blocks changed (Ferry with eBPF tracking, Ferry's rescan, and
// rsync's delta transfer). It needs root (loop devices, eBPF) and rsync.
package replbench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime/pprof"
	"slices"
	"strings"
	"sync"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/ferrymigrate/ferry"
	"github.com/ferrymigrate/ferry/bench/harness"
	"github.com/ferrymigrate/ferry/bench/workload"
	"github.com/ferrymigrate/ferry/ebpf"
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
	// RescanTimeout bounds the wait for the rescan (default 10 min).
	RescanTimeout time.Duration
	// InitialCPUProfile, when set, is where a CPU profile of Ferry's
	// initial sync alone (agent and server, this process) is written, so
	// that the peers' runs and the verification hashing stay out of it.
	InitialCPUProfile string
	// RescanCPUProfile, when set, is where a CPU profile of Ferry's
	// rescan alone is written.
	RescanCPUProfile string
	// SyncPairs is how many times the initial sync runs beside rsync -W,
	// one after the other (0 means 1). This VM's speed swings by 15 % or
	// more from one minute to the next, so one pair's ratio can land on
	// either side of a goal; the median of several says where it is.
	// Pairs after the first run at the end, each Ferry sync on a new
	// server and agent, on the image as the incremental runs left it.
	SyncPairs int
	// WarmCache keeps the page cache between the initial syncs. By default
	// every initial sync (the TLS pipe, rsync -W and Ferry, in each pair)
	// starts cold: dirty pages written back and the page cache dropped, so
	// that no copy reads what an earlier one left in memory or waits for
	// the writeback of an earlier one's output.
	WarmCache bool
	// Logf receives progress; nil discards it.
	Logf func(format string, args ...any)
}

// SyncPair is one initial sync by Ferry and one by rsync -W, run one
// after the other on the same bytes.
type SyncPair struct {
	RsyncSeconds float64 `json:"rsync_seconds"`
	FerrySeconds float64 `json:"ferry_seconds"`
	// RsyncCPU and FerryCPU are each copy's CPU seconds (Measure.CPUSeconds).
	RsyncCPU float64 `json:"rsync_cpu_seconds"`
	FerryCPU float64 `json:"ferry_cpu_seconds"`
	// Ratio is Ferry's time over rsync's.
	Ratio    float64 `json:"ratio"`
	Verified bool    `json:"verified"`
}

// Names of the measurements, as the suite finds them.
const (
	NameTLSPipe      = "TLS 1.3 pipe of the raw bytes (Go, one stream)"
	NameRsyncWhole   = "rsync -W (daemon)"
	NameFerryInitial = "Ferry (agent → TLS → replica)"
	NameFerryTracked = "Ferry, eBPF tracking (last change to drained snapshot)"
	NameRsyncDelta   = "rsync --inplace --no-whole-file"
	NameFerryRescan  = "Ferry rescan (hash compare, no tracking)"
)

// Find returns the measurement called name, if any.
func Find(ms []Measure, name string) (Measure, bool) {
	for _, m := range ms {
		if m.Name == name {
			return m, true
		}
	}
	return Measure{}, false
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
	// SyncPairs are the initial syncs beside rsync -W, the first from
	// InitialSync; MedianRatio is the median of their ratios.
	SyncPairs   []SyncPair `json:"sync_pairs"`
	MedianRatio float64    `json:"median_ratio"`
}

// Run measures and prints a table to w.
func Run(ctx context.Context, o Options, w io.Writer) (*Result, error) {
	if o.ImageBytes <= 0 {
		o.ImageBytes = 1 << 30
	}
	o.ImageBytes -= o.ImageBytes % (1 << 20)
	if o.ImageBytes == 0 {
		return nil, errors.New("bench replication: the image must be at least 1 MiB")
	}
	if o.ChangePercent <= 0 {
		o.ChangePercent = 1
	}
	if o.ChangePercent > 100 {
		return nil, fmt.Errorf("bench replication: change percent %v is over 100", o.ChangePercent)
	}
	if o.RescanTimeout <= 0 {
		o.RescanTimeout = 10 * time.Minute
	}
	if o.Logf == nil {
		o.Logf = func(string, ...any) {}
	}
	if o.SyncPairs <= 0 {
		o.SyncPairs = 1
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
	// Whatever the run leaves in a caller's directory is removed.
	for _, p := range []string{"rsync-dest", "ferry", "agent"} {
		defer os.RemoveAll(filepath.Join(o.Dir, p))
	}
	img := filepath.Join(o.Dir, "source.img")
	defer os.Remove(img)
	o.Logf("writing a %d MiB image (half zeros, a quarter text, a quarter random)", o.ImageBytes>>20)
	if err := workload.WriteImage(img, o.ImageBytes); err != nil {
		return nil, err
	}
	dev, err := run("losetup", "-f", "--show", img)
	if err != nil {
		return nil, err
	}
	defer exec.Command("losetup", "-d", dev).Run()

	cold := func() error {
		if o.WarmCache {
			return nil
		}
		return dropCaches()
	}
	// Plain TLS pipe of the raw bytes.
	o.Logf("TLS pipe")
	if err := cold(); err != nil {
		return nil, err
	}
	m, err := tlsPipe(ctx, dev, o.Dir)
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
	if err := cold(); err != nil {
		return nil, err
	}
	m, err = rs.copy(img, o.ImageBytes, NameRsyncWhole, "-W")
	if err != nil {
		return nil, err
	}
	res.InitialSync = append(res.InitialSync, m)

	// Ferry: a real data-plane server and agent in this process over TLS.
	o.Logf("Ferry initial sync")
	h, err := harness.New(ctx, filepath.Join(o.Dir, "ferry"), nil)
	if err != nil {
		return nil, err
	}
	defer h.Close()
	tr, err := ebpf.New([]string{dev})
	if err != nil {
		return nil, fmt.Errorf("start the eBPF tracker: %w", err)
	}
	defer tr.Close()
	actx, stopAgent := context.WithCancel(ctx)
	defer stopAgent()
	// The agent saves its progress here; the rescan agent below resumes
	// from it as an agent restarted without tracking would.
	state := filepath.Join(o.Dir, "agent")
	stopProfile, err := startProfile(o.InitialCPUProfile)
	if err != nil {
		return nil, err
	}
	defer stopProfile()
	if err := cold(); err != nil {
		return nil, err
	}
	cpu0 := cpuSelf()
	took, done, err := syncToReady(ctx, actx, h, state, dev, tr)
	if err != nil {
		return nil, err
	}
	m = measure(NameFerryInitial, took, cpuSelf()-cpu0, o.ImageBytes)
	stopProfile()
	m.WireBytes = h.DP.ReceivedBytes()
	if m.Verified, err = h.ReplicaMatches(ctx, dev); err != nil {
		return nil, err
	}
	res.InitialSync = append(res.InitialSync, m)

	// Incremental with eBPF tracking: the agent ships each change while
	// the changes are being made (that is the point of tracking), so the
	// clock starts when the last change completed, as rsync's does; the
	// wire bytes count from before the first change.
	blocks := int(float64(o.ImageBytes/4096) * o.ChangePercent / 100)
	res.ChangedBytes = int64(blocks) * 4096
	o.Logf("changing %d random 4 KiB blocks; Ferry with eBPF tracking", blocks)
	before := h.DP.ReceivedBytes()
	cpu0 = cpuSelf()
	if err := workload.ChangeBlocks(dev, o.ImageBytes, blocks, 1); err != nil {
		return nil, err
	}
	t0 := time.Now()
	if _, err := h.DP.Snapshot(ctx, harness.ServerID, true); err != nil {
		return nil, fmt.Errorf("drained snapshot: %w", err)
	}
	m = measure(NameFerryTracked, time.Since(t0), cpuSelf()-cpu0, res.ChangedBytes)
	m.WireBytes = h.DP.ReceivedBytes() - before
	if m.Verified, err = h.ReplicaMatches(ctx, dev); err != nil {
		return nil, err
	}
	res.Incremental = append(res.Incremental, m)
	stopAgent()
	if err := <-done; err != nil {
		return nil, fmt.Errorf("agent: %w", err)
	}
	tr.Close()

	o.Logf("rsync --inplace --no-whole-file")
	m, err = rs.copy(img, res.ChangedBytes, NameRsyncDelta, "--inplace", "--no-whole-file")
	if err != nil {
		return nil, err
	}
	res.Incremental = append(res.Incremental, m)

	// Incremental by rescan: untracked changes while no agent runs, then
	// an agent without a tracker resumes from the saved progress; having
	// missed writes, it compares every block's hash with the replica.
	o.Logf("Ferry rescan (no tracking)")
	if err := workload.ChangeBlocks(dev, o.ImageBytes, blocks, 2); err != nil {
		return nil, err
	}
	before = h.DP.ReceivedBytes()
	actx, stopAgent = context.WithCancel(ctx)
	defer stopAgent()
	stopProfile, err = startProfile(o.RescanCPUProfile)
	if err != nil {
		return nil, err
	}
	defer stopProfile()
	cpu0, t0 = cpuSelf(), time.Now()
	if done, err = h.Agent(actx, state, dev, nil); err != nil {
		return nil, err
	}
	err = h.WaitFor(ctx, o.RescanTimeout, func(s *ferry.SourceServer) bool {
		return len(s.Disks) == 1 && s.Disks[0].RescannedBytes >= o.ImageBytes && s.Replication.State == ferry.ReplicationContinuous
	})
	if err != nil {
		s, _ := h.Server(ctx)
		return nil, fmt.Errorf("rescan by Ferry: %w (replication %+v, disks %+v)", err, s.Replication, s.Disks)
	}
	m = measure(NameFerryRescan, time.Since(t0), cpuSelf()-cpu0, res.ChangedBytes)
	stopProfile()
	m.WireBytes = h.DP.ReceivedBytes() - before
	if m.Verified, err = h.ReplicaMatches(ctx, dev); err != nil {
		return nil, err
	}
	res.Incremental = append(res.Incremental, m)
	stopAgent()
	if err := <-done; err != nil {
		return nil, fmt.Errorf("rescan agent: %w", err)
	}

	rsyncW, _ := Find(res.InitialSync, NameRsyncWhole)
	ferryS, _ := Find(res.InitialSync, NameFerryInitial)
	res.SyncPairs = append(res.SyncPairs, newPair(rsyncW, ferryS))
	if o.SyncPairs > 1 {
		// Its store's background work (folds) would share the CPU with
		// the next syncs.
		h.Close()
		if err := os.RemoveAll(filepath.Join(o.Dir, "ferry")); err != nil {
			return nil, err
		}
	}
	if o.SyncPairs > 1 {
		// The incremental runs changed 2 % of the blocks, most of them in
		// the zero half: the extra pairs copy the image as the first did.
		o.Logf("restoring the image")
		if err := workload.WriteImage(img, o.ImageBytes); err != nil {
			return nil, err
		}
	}
	for k := 2; k <= o.SyncPairs; k++ {
		o.Logf("initial sync pair %d of %d", k, o.SyncPairs)
		p, err := syncPair(ctx, o.Dir, k, dev, img, o.ImageBytes, rs, cold)
		if err != nil {
			return nil, fmt.Errorf("initial sync pair %d: %w", k, err)
		}
		res.SyncPairs = append(res.SyncPairs, p)
	}
	res.MedianRatio = medianRatio(res.SyncPairs)

	printTable(w, res)
	return res, nil
}

func newPair(rsync, ferry Measure) SyncPair {
	p := SyncPair{RsyncSeconds: rsync.Seconds, FerrySeconds: ferry.Seconds, RsyncCPU: rsync.CPUSeconds, FerryCPU: ferry.CPUSeconds,
		Verified: rsync.Verified && ferry.Verified}
	if rsync.Seconds > 0 {
		p.Ratio = ferry.Seconds / rsync.Seconds
	}
	return p
}

// syncPair copies img with rsync -W into a new file, then syncs dev with
// a new Ferry server and agent (no tracker: nothing writes meanwhile).
func syncPair(ctx context.Context, dir string, k int, dev, img string, size int64, rs *rsyncd, cold func() error) (SyncPair, error) {
	// rsync would skip a destination it takes for up to date.
	if err := os.Remove(filepath.Join(rs.dest, "replica.img")); err != nil && !errors.Is(err, os.ErrNotExist) {
		return SyncPair{}, err
	}
	if err := cold(); err != nil {
		return SyncPair{}, err
	}
	rm, err := rs.copy(img, size, NameRsyncWhole, "-W")
	if err != nil {
		return SyncPair{}, err
	}
	fdir, state := filepath.Join(dir, fmt.Sprintf("ferry-%d", k)), filepath.Join(dir, fmt.Sprintf("agent-%d", k))
	defer os.RemoveAll(fdir)
	defer os.RemoveAll(state)
	h, err := harness.New(ctx, fdir, nil)
	if err != nil {
		return SyncPair{}, err
	}
	defer h.Close()
	actx, stop := context.WithCancel(ctx)
	defer stop()
	if err := cold(); err != nil {
		return SyncPair{}, err
	}
	cpu0 := cpuSelf()
	took, done, err := syncToReady(ctx, actx, h, state, dev, nil)
	if err != nil {
		return SyncPair{}, err
	}
	fm := measure(NameFerryInitial, took, cpuSelf()-cpu0, size)
	if fm.Verified, err = h.ReplicaMatches(ctx, dev); err != nil {
		return SyncPair{}, err
	}
	stop()
	if err := <-done; err != nil {
		return SyncPair{}, fmt.Errorf("agent: %w", err)
	}
	return newPair(rm, fm), nil
}

// dropCaches writes every dirty page back, then drops the page cache,
// dentries and inodes, so that the next copy starts as cold as the first
// read of a disk would.
func dropCaches() error {
	syscall.Sync()
	if err := os.WriteFile("/proc/sys/vm/drop_caches", []byte("3"), 0); err != nil {
		return fmt.Errorf("drop the page cache before a copy: %w", err)
	}
	return nil
}

// syncToReady starts an agent on dev (running until actx ends) and waits
// until h's server is READY_FOR_TEST: the initial sync's time.
func syncToReady(ctx, actx context.Context, h *harness.Harness, state, dev string, tr track.Tracker) (time.Duration, chan error, error) {
	t0 := time.Now()
	done, err := h.Agent(actx, state, dev, tr)
	if err != nil {
		return 0, nil, err
	}
	if err := h.WaitFor(ctx, 30*time.Minute, func(s *ferry.SourceServer) bool { return s.Lifecycle == ferry.LifecycleReadyForTest }); err != nil {
		return 0, nil, err
	}
	took := time.Since(t0)
	return took, done, nil
}

// medianRatio is the median of the pairs' ratios (the mean of the middle
// two for an even count).
func medianRatio(ps []SyncPair) float64 {
	if len(ps) == 0 {
		return 0
	}
	rs := make([]float64, len(ps))
	for i, p := range ps {
		rs[i] = p.Ratio
	}
	slices.Sort(rs)
	n := len(rs)
	if n%2 == 1 {
		return rs[n/2]
	}
	return (rs[n/2-1] + rs[n/2]) / 2
}

// startProfile starts a CPU profile into path ("" profiles nothing); the
// stop function it returns may be called more than once.
func startProfile(path string) (stop func(), err error) {
	if path == "" {
		return func() {}, nil
	}
	f, err := os.Create(path)
	if err != nil {
		return nil, fmt.Errorf("CPU profile: %w", err)
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		f.Close()
		return nil, fmt.Errorf("CPU profile: %w (--cpuprofile and --initial-cpuprofile cannot both be on)", err)
	}
	var once sync.Once
	return func() {
		once.Do(func() {
			pprof.StopCPUProfile()
			f.Close()
		})
	}, nil
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
	if len(r.SyncPairs) > 1 {
		fmt.Fprintf(tw, "\nInitial sync, %d pairs one after the other (the first above)\n", len(r.SyncPairs))
		fmt.Fprintln(tw, "pair\trsync -W s\tFerry s\tFerry / rsync\trsync CPU s\tFerry CPU s\tverified")
		for i, p := range r.SyncPairs {
			fmt.Fprintf(tw, "%d\t%.2f\t%.2f\t%.3f\t%.2f\t%.2f\t%v\n", i+1, p.RsyncSeconds, p.FerrySeconds, p.Ratio, p.RsyncCPU, p.FerryCPU, p.Verified)
		}
		fmt.Fprintf(tw, "median\t\t\t%.3f\t\t\t\n", r.MedianRatio)
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
