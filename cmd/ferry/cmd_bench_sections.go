package main

import (
	"context"
	"errors"
	"fmt"
	"io"

	"github.com/ferrymigrate/ferry/bench/connbench"
	"github.com/ferrymigrate/ferry/bench/launchbench"
	"github.com/ferrymigrate/ferry/bench/suite"
)

// benchLaunchSection runs bench/launchbench for the suite with bin as the
// server, the agent and the CLI. The run is the same with --quick (one
// small image, fixed steps); it is skipped without root or QEMU.
func benchLaunchSection(bin string) suite.SectionFunc {
	return func(ctx context.Context, env suite.Env) ([]suite.Figure, error) {
		if err := launchbench.Check(); err != nil {
			return nil, suite.Skipf("%v", err)
		}
		res, err := launchbench.Run(ctx, launchbench.Options{Binary: bin, Dir: env.Dir, Logf: env.Logf})
		if errors.Is(err, launchbench.ErrUnavailable) {
			return nil, suite.Skipf("%v", err)
		}
		if err != nil {
			return nil, err
		}
		return launchFigures(res), nil
	}
}

// goalFigure sets f's ratio to its goal and whether it met it: a time
// that must stay under goal seconds (the way the RPO's "< 1 s" is
// expressed).
func goalFigure(f suite.Figure, goal float64) suite.Figure {
	ok := f.Value < goal
	f.Ratio, f.RatioOf = f.Value/goal, fmt.Sprintf("the %g s goal", goal)
	f.Goal, f.Met = fmt.Sprintf("< %g s", goal), &ok
	return f
}

// launchFigures are the launch section's figures.
func launchFigures(r *launchbench.Result) []suite.Figure {
	const sec = suite.SectionLaunch
	testGoal, cutoverGoal := launchbench.TestGoal.Seconds(), launchbench.CutoverGoal.Seconds()
	out := []suite.Figure{{Section: sec, Name: "QEMU alone, local file: first console line", Value: r.QEMUAloneSeconds, Unit: "s",
		Note: "the baseline the test launch's overhead is measured against (accelerator " + r.Accel + ")"}}
	for _, t := range r.Tests {
		conv := "off"
		if t.Convert {
			conv = "on"
		}
		name := "test launch, conversion " + conv
		over := goalFigure(suite.Figure{Section: sec, Name: name + ": overhead (command to first console line, minus QEMU alone)",
			Value: t.OverheadSeconds, Unit: "s", Better: suite.Lower}, testGoal)
		if t.Convert && t.ConversionSeconds > 0 {
			over.Note = fmt.Sprintf("of which libguestfs conversion %.1f s", t.ConversionSeconds)
		}
		if !t.Convert && r.ConvertSkipped != "" {
			over.Note = "conversion on not measured: " + r.ConvertSkipped
		}
		out = append(out,
			suite.Figure{Section: sec, Name: name + ": command to first console line", Value: t.FirstLineSeconds, Unit: "s", Better: suite.Lower},
			over)
	}
	return append(out,
		goalFigure(suite.Figure{Section: sec, Name: "cutover: command to instance running (final sync drained, guest boot excluded)",
			Value: r.CutoverSeconds, Unit: "s", Better: suite.Lower,
			Note: fmt.Sprintf("of which drained final sync and snapshot %.2f s", r.CutoverSnapshotSeconds)}, cutoverGoal),
		suite.Figure{Section: sec, Name: "terminate: command to instance gone (booted test instance)", Value: r.TerminateSeconds, Unit: "s", Better: suite.Lower})
}

// benchConnectorSection runs bench/connbench for the suite: one VM with a
// 256 MiB disk and 8 VMs with 32 MiB disks (--quick: 64 MiB, and 4 VMs
// with 16 MiB). It is skipped without QEMU.
func benchConnectorSection(ctx context.Context, env suite.Env) ([]suite.Figure, error) {
	o := connbench.Options{Dir: env.Dir, Logf: env.Logf}
	if env.Quick {
		o.DiskBytes, o.VMs, o.VMDiskBytes = 64<<20, 4, 16<<20
	}
	res, err := connbench.Run(ctx, o, io.Discard)
	if errors.Is(err, connbench.ErrUnavailable) {
		return nil, suite.Skipf("%v", err)
	}
	if err != nil {
		return nil, err
	}
	return connectorFigures(res), nil
}

// ratioOf is a/b, 0 when b is 0.
func ratioOf(a, b float64) float64 {
	if b == 0 {
		return 0
	}
	return a / b
}

// connectorFigures are the connector section's figures. Every one is
// Scaled: the disks are smaller with --quick and a run's fixed cost
// (about 0.3 s) weighs more on a small disk, so even the rates are
// compared only within one profile.
func connectorFigures(r *connbench.Result) []suite.Figure {
	const sec = suite.SectionConnector
	if len(r.Single) == 0 {
		return nil
	}
	mib := func(n int64) float64 { return float64(n) / (1 << 20) }
	full := r.Single[0]
	out := []suite.Figure{
		{Section: sec, Name: "one VM, full copy: rate", Value: full.MBps, Unit: "MB/s", Better: suite.Higher, Scaled: true,
			Note: fmt.Sprintf("one QEMU VM (TCG, stopped CPUs) with a %d MiB disk of random data", r.DiskBytes>>20)},
		{Section: sec, Name: "one VM, full copy: time", Value: full.Seconds, Unit: "s", Better: suite.Lower, Scaled: true},
	}
	for _, m := range r.Single[1:] {
		out = append(out,
			suite.Figure{Section: sec, Name: "one VM, " + m.Name + ": time", Value: m.Seconds, Unit: "s", Better: suite.Lower, Scaled: true,
				Ratio: ratioOf(m.Seconds, full.Seconds), RatioOf: "the full copy's time"},
			suite.Figure{Section: sec, Name: "one VM, " + m.Name + ": sent", Value: mib(m.SentBytes), Unit: "MiB", Better: suite.Lower, Scaled: true,
				Ratio: ratioOf(float64(m.SentBytes), float64(m.ChangedBytes)), RatioOf: "the bytes changed"})
	}
	p := r.Parallel
	return append(out,
		suite.Figure{Section: sec, Name: "many VMs at once: aggregate rate", Value: p.MBps, Unit: "MB/s", Better: suite.Higher, Scaled: true,
			Ratio: ratioOf(p.MBps, full.MBps), RatioOf: "one VM's full-copy rate",
			Note: fmt.Sprintf("%d VMs × %d MiB, a full copy each, %d at once under one scheduler", r.VMs, r.VMDiskBytes>>20, r.Concurrency)},
		suite.Figure{Section: sec, Name: "many VMs at once: time", Value: p.Seconds, Unit: "s", Better: suite.Lower, Scaled: true})
}
