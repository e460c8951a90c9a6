// Package connbench measures the agentless connector on this machine with
// real QEMU processes (TCG, stopped CPUs: no guest OS) and a real data
// plane and replica store in the same process (package harness): a full
// copy of a disk of random data, incremental runs after 1 % and 10 % of
// its 4 KiB blocks changed at random, and many VMs replicated at once by
// one connector scheduler under its concurrency bound.
package connbench

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/big"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/ferrymigrate/ferry/bench/harness"
	"github.com/ferrymigrate/ferry/connector"
	"github.com/ferrymigrate/ferry/qmp"
)

// ErrUnavailable is wrapped by Run's error when a tool it runs (QEMU,
// qemu-img) is not installed.
var ErrUnavailable = errors.New("cannot run here")

// Options size a run; zero values take the defaults.
type Options struct {
	// Dir holds the images, the replica store and the connector's state;
	// "" means a new temporary directory.
	Dir string
	// DiskBytes is the single VM's disk (default 256 MiB of random data).
	DiskBytes int64
	// VMs is how many VMs the parallel measurement runs (default 8), each
	// with a disk of VMDiskBytes (default 32 MiB of random data), under a
	// scheduler with Concurrency runs at once (default VMs).
	VMs         int
	VMDiskBytes int64
	Concurrency int
	// Logf receives progress; nil discards it.
	Logf func(format string, args ...any)
}

// Measure is one measured run.
type Measure struct {
	Name string `json:"name"`
	// ChangedBytes is what was written since the previous run (the whole
	// disk for a full copy).
	ChangedBytes int64 `json:"changed_bytes"`
	// TrackedBytes is what the dirty bitmap (or base:allocation) said to
	// read; SentBytes the WRITE payload before compression, WireBytes
	// after it.
	TrackedBytes int64   `json:"tracked_bytes"`
	SentBytes    int64   `json:"sent_bytes"`
	WireBytes    int64   `json:"wire_bytes"`
	Seconds      float64 `json:"seconds"`
	MBps         float64 `json:"mb_per_s"`
	// OfFull is the run's time and bytes as a share of the full copy's.
	TimeOfFull  float64 `json:"time_of_full,omitempty"`
	BytesOfFull float64 `json:"bytes_of_full,omitempty"`
}

// Result is the whole run.
type Result struct {
	Date        time.Time `json:"date"`
	DiskBytes   int64     `json:"disk_bytes"`
	Single      []Measure `json:"single_vm"`
	VMs         int       `json:"vms"`
	VMDiskBytes int64     `json:"vm_disk_bytes"`
	Concurrency int       `json:"concurrency"`
	Parallel    Measure   `json:"parallel"`
}

// Run runs the benchmark and prints its table to w.
func Run(ctx context.Context, o Options, w io.Writer) (*Result, error) {
	if o.DiskBytes <= 0 {
		o.DiskBytes = 256 << 20
	}
	if o.VMs <= 0 {
		o.VMs = 8
	}
	if o.VMDiskBytes <= 0 {
		o.VMDiskBytes = 32 << 20
	}
	if o.Concurrency <= 0 {
		o.Concurrency = o.VMs
	}
	o.DiskBytes -= o.DiskBytes % (1 << 20)
	o.VMDiskBytes -= o.VMDiskBytes % (1 << 20)
	if o.DiskBytes == 0 || o.VMDiskBytes == 0 {
		return nil, errors.New("bench connector: disks must be at least 1 MiB")
	}
	if o.Logf == nil {
		o.Logf = func(string, ...any) {}
	}
	for _, b := range []string{"qemu-system-x86_64", "qemu-img"} {
		if _, err := exec.LookPath(b); err != nil {
			return nil, fmt.Errorf("bench connector runs real QEMU: %w: %s is not installed (apt-get install qemu-system-x86 qemu-utils)", ErrUnavailable, b)
		}
	}
	if o.Dir == "" {
		d, err := os.MkdirTemp("", "ferry-connbench")
		if err != nil {
			return nil, fmt.Errorf("temporary directory: %w", err)
		}
		defer os.RemoveAll(d)
		o.Dir = d
	} else {
		d, err := os.MkdirTemp(o.Dir, "ferry-connbench")
		if err != nil {
			return nil, err
		}
		defer os.RemoveAll(d)
		o.Dir = d
	}
	res := &Result{Date: time.Now().UTC(), DiskBytes: o.DiskBytes, VMs: o.VMs, VMDiskBytes: o.VMDiskBytes, Concurrency: o.Concurrency}
	h, err := harness.New(ctx, filepath.Join(o.Dir, "ferry"), nil)
	if err != nil {
		return nil, err
	}
	defer h.Close()
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))

	// One VM: a full copy, then 1 % and 10 % of its blocks changed.
	o.Logf("one VM, %d MiB disk of random data", o.DiskBytes>>20)
	v, err := startVM(ctx, filepath.Join(o.Dir, "vm"), "bench-vm", o.DiskBytes)
	if err != nil {
		return nil, err
	}
	defer v.stop()
	src, err := newSource(ctx, h, v, filepath.Join(o.Dir, "connector"), "c-1", quiet)
	if err != nil {
		return nil, err
	}
	defer src.Close()
	full, err := measureRun(ctx, src, "full copy", o.DiskBytes)
	if err != nil {
		return nil, err
	}
	res.Single = append(res.Single, full)
	for _, pct := range []float64{1, 10} {
		blocks := int(float64(o.DiskBytes/4096) * pct / 100)
		o.Logf("changing %d random 4 KiB blocks (%g %%)", blocks, pct)
		changed, err := v.writeRandomBlocks(ctx, blocks)
		if err != nil {
			return nil, err
		}
		m, err := measureRun(ctx, src, fmt.Sprintf("incremental, %g %% of 4 KiB blocks changed", pct), changed)
		if err != nil {
			return nil, err
		}
		m.TimeOfFull, m.BytesOfFull = m.Seconds/full.Seconds, float64(m.WireBytes)/float64(full.WireBytes)
		res.Single = append(res.Single, m)
	}

	// Many VMs at once under one scheduler.
	o.Logf("%d VMs with %d MiB disks, concurrency %d", o.VMs, o.VMDiskBytes>>20, o.Concurrency)
	state := filepath.Join(o.Dir, "connector-many")
	sched := &connector.Scheduler{StateDir: state, Concurrency: o.Concurrency, Poll: 20 * time.Millisecond}
	var srcs []*connector.Source
	for i := range o.VMs {
		v, err := startVM(ctx, filepath.Join(o.Dir, fmt.Sprintf("vm%d", i)), fmt.Sprintf("bench-vm%d", i), o.VMDiskBytes)
		if err != nil {
			return nil, err
		}
		defer v.stop()
		s, err := newSource(ctx, h, v, state, fmt.Sprintf("c-m%d", i), quiet)
		if err != nil {
			return nil, err
		}
		defer s.Close()
		if err := sched.Register(s); err != nil {
			return nil, err
		}
		srcs = append(srcs, s)
	}
	start := time.Now()
	for _, s := range srcs {
		if _, err := sched.Book().Create(s.ServerID, connector.JobSpec{RunOnce: true}, time.Now()); err != nil {
			return nil, err
		}
	}
	errs := make(chan error, len(srcs))
	for _, s := range srcs {
		go func() { errs <- sched.Serve(ctx, s, connector.Finished) }()
	}
	for range srcs {
		if err := <-errs; err != nil {
			return nil, err
		}
	}
	elapsed := time.Since(start)
	par := Measure{Name: fmt.Sprintf("%d VMs, full copy each, concurrency %d", o.VMs, o.Concurrency), Seconds: elapsed.Seconds()}
	jobs, err := sched.Book().List()
	if err != nil {
		return nil, err
	}
	for _, j := range jobs {
		if j.State != connector.JobCompleted || len(j.Runs) == 0 || j.Runs[len(j.Runs)-1].Result == nil {
			return nil, fmt.Errorf("bench connector: job of %s ended %s: %+v", j.VM, j.State, j.Runs)
		}
		for _, d := range j.Runs[len(j.Runs)-1].Result.Disks {
			par.TrackedBytes += d.TrackedBytes
			par.SentBytes += d.RawSentBytes
			par.WireBytes += d.SentBytes
		}
	}
	par.ChangedBytes = int64(o.VMs) * o.VMDiskBytes
	par.MBps = float64(par.SentBytes) / 1e6 / par.Seconds
	res.Parallel = par
	printTable(w, res)
	return res, nil
}

// newSource is a connector source for v replicating to h as a new source
// server id (paired directly with the harness's CA, as pairing would).
func newSource(ctx context.Context, h *harness.Harness, v *vm, stateDir, id string, log *slog.Logger) (*connector.Source, error) {
	dial, err := h.AddServer(ctx, id, v.name)
	if err != nil {
		return nil, err
	}
	dir := filepath.Join(stateDir, "vms", id)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	s := &connector.Source{Socket: "unix:" + v.sock, StateDir: dir, ServerID: id,
		WorkDir: filepath.Join(stateDir, "work", id), Dial: dial, Logger: log}
	if _, err := s.Facts(ctx); err != nil {
		return nil, err
	}
	s.Name, s.MachineID = v.name, "bench-"+id
	return s, nil
}

func measureRun(ctx context.Context, src *connector.Source, name string, changed int64) (Measure, error) {
	r, err := src.Run(ctx)
	if err != nil {
		return Measure{}, fmt.Errorf("bench connector: %s: %w", name, err)
	}
	m := Measure{Name: name, ChangedBytes: changed, Seconds: r.End.Sub(r.Start).Seconds()}
	for _, d := range r.Disks {
		m.TrackedBytes += d.TrackedBytes
		m.SentBytes += d.RawSentBytes
		m.WireBytes += d.SentBytes
	}
	m.MBps = float64(m.SentBytes) / 1e6 / m.Seconds
	return m, nil
}

// vm is a stopped QEMU process (no guest OS) with one qcow2 disk of
// random data on a virtio-blk device that shares writes, a QMP socket for
// the connector and one for the benchmark's writes.
type vm struct {
	dir, name, disk, sock string
	size                  int64
	cmd                   *exec.Cmd
	c                     *qmp.Client
	done                  chan struct{}
}

func startVM(ctx context.Context, dir, name string, size int64) (*vm, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	v := &vm{dir: dir, name: name, disk: filepath.Join(dir, "disk.qcow2"), sock: filepath.Join(dir, "qmp.sock"), size: size}
	raw := filepath.Join(dir, "disk.raw")
	f, err := os.Create(raw)
	if err != nil {
		return nil, err
	}
	_, err = io.CopyN(f, rand.Reader, size)
	f.Close()
	if err != nil {
		return nil, err
	}
	out, err := exec.CommandContext(ctx, "qemu-img", "convert", "-q", "-f", "raw", "-O", "qcow2", raw, v.disk).CombinedOutput()
	os.Remove(raw)
	if err != nil {
		return nil, fmt.Errorf("qemu-img convert: %v: %s", err, strings.TrimSpace(string(out)))
	}
	test := filepath.Join(dir, "bench-qmp.sock")
	v.cmd = exec.Command("qemu-system-x86_64", "-machine", "pc,accel=tcg", "-S", "-m", "32", "-smp", "1", "-nodefaults",
		"-nographic", "-display", "none", "-name", name,
		"-qmp", "unix:"+v.sock+",server=on,wait=off", "-qmp", "unix:"+test+",server=on,wait=off",
		"-blockdev", "driver=qcow2,node-name=disk0,file.driver=file,file.filename="+v.disk,
		"-device", "virtio-blk-pci,drive=disk0,share-rw=on")
	var log strings.Builder
	v.cmd.Stdout, v.cmd.Stderr = &log, &log
	if err := v.cmd.Start(); err != nil {
		return nil, fmt.Errorf("start QEMU: %w", err)
	}
	v.done = make(chan struct{})
	go func() { v.cmd.Wait(); close(v.done) }()
	for deadline := time.Now().Add(20 * time.Second); ; {
		c, err := qmp.Dial(ctx, test)
		if err == nil {
			v.c = c
			return v, nil
		}
		if time.Now().After(deadline) {
			v.stop()
			return nil, fmt.Errorf("QEMU's QMP never answered: %v: %s", err, log.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (v *vm) stop() {
	if v.c != nil {
		_ = v.c.Execute(context.Background(), "quit", nil, nil)
		v.c.Close()
		v.c = nil
	}
	select {
	case <-v.done:
	case <-time.After(5 * time.Second):
		v.cmd.Process.Kill()
		<-v.done
	}
}

// writeRandomBlocks writes fresh random data into n distinct random 4 KiB
// blocks through qemu-io in the QEMU process, and returns the bytes
// written.
func (v *vm) writeRandomBlocks(ctx context.Context, n int) (int64, error) {
	total := v.size / 4096
	picked := map[int64]bool{}
	for len(picked) < n {
		b, err := rand.Int(rand.Reader, big.NewInt(total))
		if err != nil {
			return 0, err
		}
		picked[b.Int64()] = true
	}
	src := filepath.Join(v.dir, "block.bin")
	buf := make([]byte, 4096)
	for b := range picked {
		rand.Read(buf)
		if err := os.WriteFile(src, buf, 0o600); err != nil {
			return 0, err
		}
		var out string
		line := fmt.Sprintf(`qemu-io disk0 "write -s %s %d 4096"`, src, b*4096)
		if err := v.c.Execute(ctx, "human-monitor-command", map[string]any{"command-line": line}, &out); err != nil {
			return 0, err
		}
		if strings.Contains(out, "rror") {
			return 0, fmt.Errorf("%s: %s", line, out)
		}
	}
	return int64(n) * 4096, nil
}

func mib(n int64) string { return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20)) }

func printTable(w io.Writer, r *Result) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintf(tw, "run\tchanged\ttracked\tsent\ton the wire\ttime\tMB/s\tof full (time / bytes)\t\n")
	row := func(m Measure) {
		of := ""
		if m.TimeOfFull > 0 {
			of = fmt.Sprintf("%.1f %% / %.1f %%", 100*m.TimeOfFull, 100*m.BytesOfFull)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%.2f s\t%.0f\t%s\t\n", m.Name, mib(m.ChangedBytes), mib(m.TrackedBytes), mib(m.SentBytes), mib(m.WireBytes), m.Seconds, m.MBps, of)
	}
	for _, m := range r.Single {
		row(m)
	}
	row(r.Parallel)
	tw.Flush()
}
