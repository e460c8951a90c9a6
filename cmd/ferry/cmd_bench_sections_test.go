package main

import (
	"strings"
	"testing"

	"github.com/ferrymigrate/ferry/bench/connbench"
	"github.com/ferrymigrate/ferry/bench/launchbench"
	"github.com/ferrymigrate/ferry/bench/suite"
)

// byName indexes figures by name, failing on a section other than want
// or a report the suite would refuse.
func byName(t *testing.T, want string, figs []suite.Figure) map[string]suite.Figure {
	t.Helper()
	r := &suite.Report{Version: suite.ReportVersion, Figures: figs}
	if err := r.Validate(); err != nil {
		t.Fatalf("figures do not make a valid report: %v", err)
	}
	m := map[string]suite.Figure{}
	for _, f := range figs {
		if f.Section != want {
			t.Errorf("figure %q is in section %q, want %q", f.Name, f.Section, want)
		}
		m[f.Name] = f
	}
	return m
}

func TestLaunchFigures(t *testing.T) {
	res := &launchbench.Result{Accel: "tcg", QEMUAloneSeconds: 0.15,
		Tests: []launchbench.TestLaunch{
			{Convert: false, FirstLineSeconds: 3, OverheadSeconds: 2.5},
			{Convert: true, FirstLineSeconds: 25.15, OverheadSeconds: 25, ConversionSeconds: 24.3},
		},
		CutoverSeconds: 61, CutoverSnapshotSeconds: 1.2, TerminateSeconds: 0.5}
	m := byName(t, suite.SectionLaunch, launchFigures(res))
	if len(m) != 7 {
		t.Fatalf("got %d figures, want 7: %v", len(m), m)
	}
	off := m["test launch, conversion off: overhead (command to first console line, minus QEMU alone)"]
	if off.Value != 2.5 || off.Better != suite.Lower || off.Ratio != 0.25 || off.RatioOf != "the 10 s goal" ||
		off.Goal != "< 10 s" || off.Met == nil || !*off.Met || off.Scaled {
		t.Errorf("test overhead, conversion off: %+v", off)
	}
	on := m["test launch, conversion on: overhead (command to first console line, minus QEMU alone)"]
	if on.Value != 25 || on.Met == nil || *on.Met || on.Ratio != 2.5 || !strings.Contains(on.Note, "24.3 s") {
		t.Errorf("test overhead, conversion on: %+v", on)
	}
	cut := m["cutover: command to instance running (final sync drained, guest boot excluded)"]
	if cut.Value != 61 || cut.Goal != "< 60 s" || cut.Met == nil || *cut.Met || cut.RatioOf != "the 60 s goal" || cut.Better != suite.Lower {
		t.Errorf("cutover: %+v", cut)
	}
	if f := m["QEMU alone, local file: first console line"]; f.Value != 0.15 || f.Better != suite.None || !strings.Contains(f.Note, "tcg") {
		t.Errorf("QEMU alone: %+v", f)
	}
	if f := m["terminate: command to instance gone (booted test instance)"]; f.Value != 0.5 || f.Better != suite.Lower || f.Met != nil {
		t.Errorf("terminate: %+v", f)
	}
	if f := m["test launch, conversion on: command to first console line"]; f.Value != 25.15 || f.Better != suite.Lower {
		t.Errorf("first line, conversion on: %+v", f)
	}

	// Without libguestfs: no conversion-on figures, and the reason noted.
	res.Tests, res.ConvertSkipped = res.Tests[:1], "libguestfs: unavailable"
	m = byName(t, suite.SectionLaunch, launchFigures(res))
	if len(m) != 5 {
		t.Fatalf("without conversion: %d figures, want 5", len(m))
	}
	if f := m["test launch, conversion off: overhead (command to first console line, minus QEMU alone)"]; !strings.Contains(f.Note, "conversion on not measured: libguestfs") {
		t.Errorf("no note of the missing conversion run: %+v", f)
	}
}

func TestConnectorFigures(t *testing.T) {
	res := &connbench.Result{DiskBytes: 64 << 20, VMs: 4, VMDiskBytes: 16 << 20, Concurrency: 4,
		Single: []connbench.Measure{
			{Name: "full copy", ChangedBytes: 64 << 20, SentBytes: 64 << 20, Seconds: 0.5, MBps: 134},
			{Name: "incremental, 1 % of 4 KiB blocks changed", ChangedBytes: 1 << 20, SentBytes: 1 << 20, Seconds: 0.2},
			{Name: "incremental, 10 % of 4 KiB blocks changed", ChangedBytes: 4 << 20, SentBytes: 8 << 20, Seconds: 0.4},
		},
		Parallel: connbench.Measure{Seconds: 0.8, MBps: 67}}
	figs := connectorFigures(res)
	m := byName(t, suite.SectionConnector, figs)
	if len(figs) != 8 {
		t.Fatalf("got %d figures, want 8", len(figs))
	}
	for _, f := range figs {
		if !f.Scaled || f.Better == suite.None {
			t.Errorf("%q: every connector figure depends on the disk sizes and has a direction: %+v", f.Name, f)
		}
	}
	if f := m["one VM, full copy: rate"]; f.Value != 134 || f.Better != suite.Higher || !strings.Contains(f.Note, "64 MiB") {
		t.Errorf("full copy rate: %+v", f)
	}
	if f := m["one VM, incremental, 1 % of 4 KiB blocks changed: time"]; f.Ratio != 0.4 || f.RatioOf != "the full copy's time" || f.Better != suite.Lower {
		t.Errorf("1 %% time: %+v", f)
	}
	if f := m["one VM, incremental, 10 % of 4 KiB blocks changed: sent"]; f.Value != 8 || f.Ratio != 2 || f.Unit != "MiB" {
		t.Errorf("10 %% sent: %+v", f)
	}
	if f := m["many VMs at once: aggregate rate"]; f.Ratio != 0.5 || f.Better != suite.Higher || !strings.Contains(f.Note, "4 VMs × 16 MiB") {
		t.Errorf("many VMs: %+v", f)
	}
	if connectorFigures(&connbench.Result{}) != nil {
		t.Error("a result without runs gave figures")
	}
}
