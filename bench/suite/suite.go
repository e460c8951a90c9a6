package suite

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/ferrymigrate/ferry/bench/dedup"
	"github.com/ferrymigrate/ferry/bench/limits"
	"github.com/ferrymigrate/ferry/bench/replbench"
	"github.com/ferrymigrate/ferry/bench/rpo"
)

// Env is what an optional section gets from the runner.
type Env struct {
	// Dir is a directory on the data disk for the section's files.
	Dir   string
	Quick bool
	Logf  func(format string, args ...any)
}

// SectionFunc runs a section contributed by another package and returns
// its figures (Section set to the section's name).
type SectionFunc func(ctx context.Context, env Env) ([]Figure, error)

// Section names, in the order they run.
const (
	SectionLimits      = "limits"
	SectionReplication = "replication" // figures in "initial" and "incremental"
	SectionRPO         = "rpo"
	SectionDedup       = "dedup"
	SectionScale       = "scale"
	SectionLaunch      = "launch"
	SectionConnector   = "connector"
)

// Sections lists every section name.
var Sections = []string{SectionLimits, SectionReplication, SectionRPO, SectionDedup, SectionScale, SectionLaunch, SectionConnector}

// ErrSkip is wrapped by a SectionFunc's error when its section cannot run
// on this machine (no root, a tool missing): Run lists the section as
// skipped with the error's reason instead of failed. Skipf makes one.
var ErrSkip = errors.New("section cannot run here")

// skipError is Skipf's error: the reason, wrapping ErrSkip.
type skipError struct{ reason string }

func (e *skipError) Error() string { return e.reason }
func (e *skipError) Unwrap() error { return ErrSkip }

// Skipf returns the error a SectionFunc returns when its section cannot
// run here; the formatted reason is what the table lists.
func Skipf(format string, args ...any) error {
	return &skipError{reason: fmt.Sprintf(format, args...)}
}

// skipReason is the reason of an error wrapping ErrSkip.
func skipReason(err error) string {
	if se, ok := errors.AsType[*skipError](err); ok {
		return se.reason
	}
	return err.Error()
}

// Options size a run; zero values take the defaults (Quick's when set).
type Options struct {
	// Dir is a directory on the data disk; "" is a new temporary
	// directory.
	Dir string
	// Quick scales everything down so a run takes under 3 minutes.
	Quick bool
	// Only runs just these sections (names from Sections); empty is all.
	Only []string
	// ImageBytes is the initial-sync image (default 4 GiB, quick 512 MiB).
	ImageBytes int64
	// SyncPairs is how many initial syncs run beside rsync -W; above one,
	// the time goal is judged on the median ratio (default 1).
	SyncPairs int
	// RPODuration is how long each write rate runs (default 60 s, quick
	// 15 s).
	RPODuration time.Duration
	// RPODiskBytes is the continuous-replication source disk (default
	// 1 GiB, quick 256 MiB).
	RPODiskBytes int64
	// DedupImageBytes is the image the clones share (default 256 MiB,
	// quick 64 MiB); Clones how many (default 20).
	DedupImageBytes int64
	Clones          int
	// DiskTestBytes is the sequential disk test's size (default 1 GiB,
	// quick 256 MiB); LimitDuration each CPU or network test's length
	// (default 2 s, quick 0.5 s).
	DiskTestBytes int64
	LimitDuration time.Duration
	// AgentCommand runs `ferry agent` for the RPO section, e.g.
	// {os.Executable(), "agent"}.
	AgentCommand []string
	// Scale, Launch and Connector run the scale-out, launch and
	// agentless-connector sections when set; cmd/ferry wires them from
	// their packages (bench/scale, bench/launchbench, bench/connbench).
	Scale, Launch, Connector SectionFunc
	// Logf receives progress; nil discards it.
	Logf func(format string, args ...any)
}

func (o *Options) setDefaults() {
	def := func(v *int64, full, quick int64) {
		if *v <= 0 {
			*v = full
			if o.Quick {
				*v = quick
			}
		}
	}
	def(&o.ImageBytes, 4<<30, 512<<20)
	def(&o.RPODiskBytes, 1<<30, 256<<20)
	def(&o.DedupImageBytes, 256<<20, 64<<20)
	def(&o.DiskTestBytes, 1<<30, 256<<20)
	if o.RPODuration <= 0 {
		o.RPODuration = time.Minute
		if o.Quick {
			o.RPODuration = 15 * time.Second
		}
	}
	if o.LimitDuration <= 0 {
		o.LimitDuration = 2 * time.Second
		if o.Quick {
			o.LimitDuration = 500 * time.Millisecond
		}
	}
	if o.Clones <= 0 {
		o.Clones = 20
	}
	if o.Logf == nil {
		o.Logf = func(string, ...any) {}
	}
}

// Profile names the sizes of a run; scaled figures are compared only
// between runs of the same profile.
func (o *Options) Profile() string {
	kind := "full"
	if o.Quick {
		kind = "quick"
	}
	return fmt.Sprintf("%s: image %d MiB, RPO %v per rate on %d MiB, dedup %d × %d MiB, disk test %d MiB",
		kind, o.ImageBytes>>20, o.RPODuration, o.RPODiskBytes>>20, o.Clones, o.DedupImageBytes>>20, o.DiskTestBytes>>20)
}

// ErrSectionFailed is returned (wrapped) when a section failed; the
// report still holds every other section's figures.
var ErrSectionFailed = errors.New("benchmark sections failed")

// Run runs the chosen sections and returns the report. A section that
// cannot run here (no root, a tool missing, not wired) is listed in
// Skipped; one that fails is listed there too and makes Run return an
// error wrapping ErrSectionFailed along with the report.
func Run(ctx context.Context, o Options) (*Report, error) {
	o.setDefaults()
	for _, s := range o.Only {
		if !slices.Contains(Sections, s) {
			return nil, fmt.Errorf("unknown section %q (sections: %s)", s, strings.Join(Sections, ", "))
		}
	}
	if o.Dir == "" {
		d, err := os.MkdirTemp("", "ferry-bench")
		if err != nil {
			return nil, fmt.Errorf("temporary directory: %w", err)
		}
		defer os.RemoveAll(d)
		o.Dir = d
	} else if err := os.MkdirAll(o.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("bench directory: %w", err)
	}
	r := &Report{Version: ReportVersion, Started: time.Now().UTC(), Profile: o.Profile(), Quick: o.Quick, Machine: DescribeMachine(o.Dir)}
	want := func(s string) bool { return len(o.Only) == 0 || slices.Contains(o.Only, s) }
	root := os.Geteuid() == 0
	var failed []string
	fail := func(section string, err error) {
		o.Logf("%s failed: %v", section, err)
		r.Skipped = append(r.Skipped, Skip{Section: section, Reason: "failed: " + err.Error()})
		failed = append(failed, section)
	}
	skip := func(section, reason string) {
		o.Logf("%s skipped: %s", section, reason)
		r.Skipped = append(r.Skipped, Skip{Section: section, Reason: reason})
	}

	var lim *limits.Result
	if want(SectionLimits) {
		o.Logf("section limits")
		var err error
		if lim, err = limits.Run(ctx, limits.Options{Dir: o.Dir, DiskBytes: o.DiskTestBytes, Duration: o.LimitDuration}); err != nil {
			fail(SectionLimits, err)
		} else {
			r.Figures = append(r.Figures, limitFigures(lim)...)
		}
	}
	if want(SectionReplication) {
		if !root {
			skip(SectionReplication, "needs root (loop devices, eBPF)")
		} else {
			o.Logf("section replication")
			res, err := replbench.Run(ctx, replbench.Options{Dir: o.Dir, ImageBytes: o.ImageBytes, SyncPairs: o.SyncPairs, Logf: o.Logf}, io.Discard)
			if err != nil {
				fail(SectionReplication, err)
			} else {
				r.Figures = append(r.Figures, replicationFigures(res, lim)...)
			}
		}
	}
	if want(SectionRPO) {
		switch {
		case !root:
			skip(SectionRPO, "needs root (loop devices, eBPF)")
		case len(o.AgentCommand) == 0:
			skip(SectionRPO, "no agent command to run")
		default:
			o.Logf("section rpo")
			res, err := rpo.Measure(ctx, rpo.Options{Dir: o.Dir, AgentCommand: o.AgentCommand, Duration: o.RPODuration, DiskBytes: o.RPODiskBytes, Logf: o.Logf})
			if err != nil {
				fail(SectionRPO, err)
			} else {
				r.Figures = append(r.Figures, rpoFigures(res)...)
			}
		}
	}
	if want(SectionDedup) {
		o.Logf("section dedup")
		res, err := dedup.Run(ctx, dedup.Options{Dir: o.Dir, ImageBytes: o.DedupImageBytes, Clones: o.Clones})
		if err != nil {
			fail(SectionDedup, err)
		} else {
			r.Figures = append(r.Figures, dedupFigures(res)...)
		}
	}
	for _, opt := range []struct {
		name string
		f    SectionFunc
		pkg  string
	}{{SectionScale, o.Scale, "bench/scale"}, {SectionLaunch, o.Launch, "bench/launchbench"}, {SectionConnector, o.Connector, "bench/connbench"}} {
		if !want(opt.name) {
			continue
		}
		if opt.f == nil {
			skip(opt.name, "not wired into this build ("+opt.pkg+"; set suite.Options."+strings.ToUpper(opt.name[:1])+opt.name[1:]+" in cmd/ferry)")
			continue
		}
		o.Logf("section %s", opt.name)
		figs, err := opt.f(ctx, Env{Dir: o.Dir, Quick: o.Quick, Logf: o.Logf})
		if errors.Is(err, ErrSkip) {
			skip(opt.name, skipReason(err))
			continue
		}
		if err != nil {
			fail(opt.name, err)
			continue
		}
		r.Figures = append(r.Figures, figs...)
	}
	r.Seconds = time.Since(r.Started).Seconds()
	if err := r.Validate(); err != nil {
		return r, fmt.Errorf("the run's own report: %w", err)
	}
	if len(failed) > 0 {
		return r, fmt.Errorf("%w: %s", ErrSectionFailed, strings.Join(failed, ", "))
	}
	return r, ctx.Err()
}

func limitFigures(l *limits.Result) []Figure {
	f := func(name string, v float64) Figure {
		return Figure{Section: SectionLimits, Name: name, Value: v, Unit: "MB/s", Better: Higher}
	}
	tls := f("TLS 1.3 loopback, one stream", l.TLSMBps)
	tls.Note = "cipher " + l.TLSCipher + " (Go's choice, as the data plane's)"
	return []Figure{
		f("disk write, O_DIRECT sequential 1 MiB", l.DiskWriteMBps),
		f("disk read, O_DIRECT sequential 1 MiB", l.DiskReadMBps),
		f("TCP loopback, one stream", l.TCPMBps),
		tls,
		f("SHA-256, one core", l.SHA256MBps),
		f("BLAKE3, one core", l.BLAKE3MBps),
		f("AES-256-GCM seal, one core", l.AESGCMMBps),
		f("XChaCha20-Poly1305 seal, one core", l.XChaChaMBps),
		f("zstd fastest compress, one core, mixed data", l.ZstdCompMBps),
		f("zstd decompress, one core, mixed data", l.ZstdDecompMBps),
		{Section: SectionLimits, Name: "zstd fastest ratio, mixed data", Value: l.ZstdRatio, Unit: "×"},
		f("S2 compress, one core, mixed data", l.S2CompMBps),
		f("S2 decompress, one core, mixed data", l.S2DecompMBps),
		{Section: SectionLimits, Name: "S2 ratio, mixed data", Value: l.S2Ratio, Unit: "×"},
	}
}

// bindingLimit is the least of the ceilings an initial sync passes
// through once each: reading the disk, one TLS stream, writing the disk.
func bindingLimit(l *limits.Result) float64 {
	if l == nil {
		return 0
	}
	return min(l.DiskReadMBps, l.DiskWriteMBps, l.TLSMBps)
}

const bindingOf = "binding limit (least of disk read, disk write, TLS 1.3)"

func ratio(a, b float64) float64 {
	if b == 0 || math.IsNaN(a/b) || math.IsInf(a/b, 0) {
		return 0
	}
	return a / b
}

func replicationFigures(res *replbench.Result, lim *limits.Result) []Figure {
	var out []Figure
	bind := bindingLimit(lim)
	rsyncW, _ := replbench.Find(res.InitialSync, replbench.NameRsyncWhole)
	for _, m := range res.InitialSync {
		rate := Figure{Section: "initial", Name: m.Name + ": rate", Value: m.MBps, Unit: "MB/s of image", Better: Higher,
			Ratio: ratio(m.MBps, bind), RatioOf: bindingOf}
		tm := Figure{Section: "initial", Name: m.Name + ": time", Value: m.Seconds, Unit: "s", Better: Lower, Scaled: true}
		if m.Name == replbench.NameFerryInitial {
			ok := rate.Ratio >= 0.9
			rate.Goal, rate.Met = "≥ 0.9 of the binding limit", met(ok)
			if bind == 0 {
				rate.Met = nil
			}
			tm.Ratio, tm.RatioOf = ratio(m.Seconds, rsyncW.Seconds), "rsync -W's time"
			if n := len(res.SyncPairs); n > 1 {
				tm.Ratio, tm.RatioOf = res.MedianRatio, fmt.Sprintf("rsync -W's time, median of %d pairs", n)
			}
			tm.Goal, tm.Met = "≤ 0.5× rsync's time", met(tm.Ratio > 0 && tm.Ratio <= 0.5)
		}
		if !m.Verified {
			rate.Note = "copy NOT verified"
		}
		out = append(out, rate, tm,
			Figure{Section: "initial", Name: m.Name + ": CPU", Value: m.CPUSeconds, Unit: "CPU s", Better: Lower, Scaled: true},
			Figure{Section: "initial", Name: m.Name + ": wire", Value: float64(m.WireBytes) / (1 << 20), Unit: "MiB", Scaled: true})
	}
	delta, _ := replbench.Find(res.Incremental, replbench.NameRsyncDelta)
	for _, m := range res.Incremental {
		tm := Figure{Section: "incremental", Name: m.Name + ": time", Value: m.Seconds, Unit: "s", Better: Lower, Scaled: true}
		if m.Name != replbench.NameRsyncDelta {
			tm.Ratio, tm.RatioOf = ratio(m.Seconds, delta.Seconds), "rsync delta's time"
		}
		if m.Name == replbench.NameFerryTracked {
			tm.Goal, tm.Met = "≤ 0.1× rsync's time (10× faster)", met(tm.Ratio > 0 && tm.Ratio <= 0.1)
		}
		if !m.Verified {
			tm.Note = "copy NOT verified"
		}
		out = append(out, tm,
			Figure{Section: "incremental", Name: m.Name + ": CPU", Value: m.CPUSeconds, Unit: "CPU s", Better: Lower, Scaled: true},
			Figure{Section: "incremental", Name: m.Name + ": wire", Value: float64(m.WireBytes) / (1 << 20), Unit: "MiB", Scaled: true})
	}
	return out
}

func rpoFigures(res *rpo.Result) []Figure {
	var out []Figure
	for _, r := range res.RPO {
		at := fmt.Sprintf(" at %g MB/s", r.RateMBps)
		p99 := Figure{Section: SectionRPO, Name: "p99" + at, Value: r.P99, Unit: "s", Better: Lower,
			Ratio: r.P99, RatioOf: "the 1 s goal", Goal: "< 1 s", Met: met(r.Writes > 0 && r.Unmatched == 0 && r.P99 < 1)}
		if r.Unmatched > 0 {
			p99.Note = fmt.Sprintf("%d of %d writes never became durable on the server within the wait; %d of them missing from the replica while on the device", r.Unmatched, r.Writes, r.LostOnReplica)
		}
		out = append(out,
			Figure{Section: SectionRPO, Name: "p50" + at, Value: r.P50, Unit: "s", Better: Lower},
			p99,
			Figure{Section: SectionRPO, Name: "max" + at, Value: r.Max, Unit: "s", Better: Lower},
			Figure{Section: SectionRPO, Name: "writes matched" + at, Value: float64(r.Writes - r.Unmatched), Unit: "writes", Scaled: true,
				Ratio: ratio(float64(r.Writes-r.Unmatched), float64(r.Writes)), RatioOf: "writes made", Goal: "all", Met: met(r.Unmatched == 0 && r.Writes > 0)},
			Figure{Section: SectionRPO, Name: "writer rate" + at, Value: r.WrittenMBps, Unit: "MB/s",
				Ratio: ratio(r.WrittenMBps, r.RateMBps), RatioOf: "the rate asked"},
			Figure{Section: SectionRPO, Name: "agent CPU" + at, Value: r.AgentCPUPercent, Unit: "% of a core", Better: Lower})
	}
	f := res.Footprint
	at := fmt.Sprintf(" at %g MB/s", f.RateMBps)
	return append(out,
		Figure{Section: "agent", Name: "CPU" + at, Value: f.AgentCPUPercent, Unit: "% of a core", Better: Lower,
			Ratio: f.AgentCPUPercent / 5, RatioOf: "the 5 % goal", Goal: "< 5 % of a core", Met: met(f.AgentCPUPercent < 5)},
		Figure{Section: "agent", Name: "RSS, largest sampled" + at, Value: float64(f.AgentRSSMax) / (1 << 20), Unit: "MiB", Better: Lower,
			Ratio: float64(f.AgentRSSMax) / (64 << 20), RatioOf: "the 64 MiB goal", Goal: "< 64 MiB", Met: met(f.AgentRSSMax > 0 && f.AgentRSSMax < 64<<20)},
		Figure{Section: "agent", Name: "RSS peak since start (VmHWM, includes the initial sync)", Value: float64(f.AgentRSSPeak) / (1 << 20), Unit: "MiB", Better: Lower},
		Figure{Section: "agent", Name: "RPO p99" + at, Value: f.P99, Unit: "s", Better: Lower})
}

func dedupFigures(res *dedup.Result) []Figure {
	var out []Figure
	for _, s := range res.Scenarios {
		name := fmt.Sprintf("%d clones, each %g %% changed in %s: stored", res.Clones, res.DivergePercent, s.Name)
		// The goal is against one image's logical bytes (the issue: stored
		// versus logical); against one image as stored (compressed) the
		// clones' own incompressible changes alone exceed it.
		logical := float64(s.StoredBytes) / float64(res.ImageBytes)
		out = append(out,
			Figure{Section: SectionDedup, Name: name, Value: logical, Unit: "× one image's logical bytes", Better: Lower,
				Goal: "≤ 1.3× one image", Met: met(logical <= 1.3)},
			Figure{Section: SectionDedup, Name: name + ", over one image stored", Value: s.Ratio, Unit: "× one image stored", Better: Lower,
				Ratio: ratio(s.Ratio, s.FloorRatio), RatioOf: "the floor (image + each clone's own changes)"},
			Figure{Section: SectionDedup, Name: name + ", floor", Value: s.FloorRatio, Unit: "× one image stored"})
	}
	return append(out, Figure{Section: SectionDedup, Name: "one image stored", Value: float64(res.OneImageBytes) / (1 << 20), Unit: "MiB", Scaled: true,
		Ratio: ratio(float64(res.OneImageBytes), float64(res.ImageBytes)), RatioOf: "its logical size"})
}
