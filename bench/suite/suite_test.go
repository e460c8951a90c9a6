package suite

import (
	"bytes"
	"context"
	"encoding/xml"
	"errors"
	"io"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/ferrymigrate/ferry/bench/replbench"
)

func report(profile string, figs ...Figure) *Report {
	return &Report{Version: ReportVersion, Profile: profile, Figures: figs}
}

func TestCompare(t *testing.T) {
	hi := func(v float64) Figure {
		return Figure{Section: "s", Name: "rate", Value: v, Unit: "MB/s", Better: Higher}
	}
	lo := func(v float64) Figure { return Figure{Section: "s", Name: "time", Value: v, Unit: "s", Better: Lower} }
	scaled := func(v float64) Figure {
		return Figure{Section: "s", Name: "bytes", Value: v, Unit: "MiB", Better: Lower, Scaled: true}
	}
	none := func(v float64) Figure { return Figure{Section: "s", Name: "info", Value: v} }
	tests := []struct {
		name     string
		ref, cur *Report
		want     []string // keys flagged
	}{
		{"higher better, 20 % lower is flagged", report("p", hi(100)), report("p", hi(80)), []string{"s/rate"}},
		{"higher better, 5 % lower is within tolerance", report("p", hi(100)), report("p", hi(95)), nil},
		{"higher better, an improvement is not flagged", report("p", hi(100)), report("p", hi(300)), nil},
		{"lower better, 20 % higher is flagged", report("p", lo(1)), report("p", lo(1.2)), []string{"s/time"}},
		{"lower better, 50 % lower is an improvement", report("p", lo(1)), report("p", lo(0.5)), nil},
		{"lower better, exactly 10 % worse is not more than 10 %", report("p", lo(1)), report("p", lo(1.1)), nil},
		{"no direction is never flagged", report("p", none(1)), report("p", none(100)), nil},
		{"scaled figure across profiles is not compared", report("full", scaled(1)), report("quick", scaled(5)), nil},
		{"scaled figure in the same profile is compared", report("full", scaled(1)), report("full", scaled(5)), []string{"s/bytes"}},
		{"rate across profiles is compared", report("full", hi(100)), report("quick", hi(50)), []string{"s/rate"}},
		{"zero reference is skipped", report("p", lo(0)), report("p", lo(5)), nil},
		{"missing in the reference is skipped", report("p"), report("p", lo(5)), nil},
		{"no reference", nil, report("p", lo(5)), nil},
		{"direction changed is skipped", report("p", hi(100)), report("p", Figure{Section: "s", Name: "rate", Value: 10, Better: Lower}), nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var got []string
			for _, r := range Compare(tt.ref, tt.cur, DefaultTolerance) {
				got = append(got, r.Key)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("flagged %v, want %v", got, tt.want)
			}
		})
	}
}

func TestCompareWorse(t *testing.T) {
	regs := Compare(report("p", Figure{Section: "a", Name: "b", Value: 200, Better: Higher}),
		report("p", Figure{Section: "a", Name: "b", Value: 150, Better: Higher}), 0.1)
	if len(regs) != 1 || regs[0].Worse != 0.25 || regs[0].Reference != 200 || regs[0].Value != 150 {
		t.Fatalf("got %+v, want one regression 25 %% worse", regs)
	}
}

func TestReportRoundTrip(t *testing.T) {
	ok := true
	in := &Report{Version: ReportVersion, Started: time.Date(2026, 11, 25, 10, 0, 0, 0, time.UTC), Seconds: 12.5,
		Profile: "quick: x", Quick: true,
		Machine: Machine{CPU: "cpu", Cores: 2, RAMBytes: 24 << 30, Kernel: "6.1", Disk: "/dev/vda (ext4 on /)", GoVersion: "go1.26"},
		Figures: []Figure{
			{Section: "limits", Name: "disk", Value: 123.4, Unit: "MB/s", Better: Higher},
			{Section: "rpo", Name: "p99", Value: 0.2, Unit: "s", Better: Lower, Ratio: 0.2, RatioOf: "goal", Goal: "< 1 s", Met: &ok, Scaled: true, Note: "n"},
		},
		Skipped: []Skip{{Section: "scale", Reason: "not wired"}},
	}
	path := filepath.Join(t.TempDir(), "r.json")
	if err := in.WriteFile(path); err != nil {
		t.Fatal(err)
	}
	out, err := ReadReport(path)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(in, out) {
		t.Fatalf("round trip changed the report:\n got %+v\nwant %+v", out, in)
	}
}

func TestParseReportRejects(t *testing.T) {
	tests := []struct{ name, json, want string }{
		{"not JSON", "{", "decode report"},
		{"wrong version", `{"version": 99}`, "version 99"},
		{"duplicate key", `{"version":1,"figures":[{"section":"a","name":"b"},{"section":"a","name":"b"}]}`, "twice"},
		{"unknown direction", `{"version":1,"figures":[{"section":"a","name":"b","better":"up"}]}`, "better"},
		{"no name", `{"version":1,"figures":[{"section":"a"}]}`, "required"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ParseReport([]byte(tt.json))
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("got %v, want an error containing %q", err, tt.want)
			}
		})
	}
}

func TestWriteSVG(t *testing.T) {
	yes, no := true, false
	r := report("p <&> profile",
		Figure{Section: "initial", Name: "Ferry <fast> & \"good\"", Value: 300, Unit: "MB/s", Ratio: 0.8, RatioOf: "limit", Goal: "≥ 0.9", Met: &no},
		Figure{Section: "rpo", Name: "p99", Value: 0.2, Unit: "s", Ratio: 5, RatioOf: "goal", Met: &yes},
		Figure{Section: "limits", Name: "no ratio", Value: 1, Unit: "MB/s"},
	)
	var b bytes.Buffer
	if err := WriteSVG(&b, r, []Regression{{Key: "rpo/p99"}}); err != nil {
		t.Fatal(err)
	}
	// Well-formed XML, one bar per figure with a ratio, bars clipped to
	// the scale, colours by goal, regressions marked.
	dec := xml.NewDecoder(bytes.NewReader(b.Bytes()))
	var bars []map[string]string
	var texts []string
	for {
		tok, err := dec.Token()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("not well-formed XML: %v\n%s", err, b.String())
		}
		switch el := tok.(type) {
		case xml.StartElement:
			if el.Name.Local == "rect" && len(el.Attr) > 3 {
				m := map[string]string{}
				for _, a := range el.Attr {
					m[a.Name.Local] = a.Value
				}
				bars = append(bars, m)
			}
		case xml.CharData:
			texts = append(texts, string(el))
		}
	}
	if len(bars) != 2 {
		t.Fatalf("got %d bars, want 2 (figures with a ratio)", len(bars))
	}
	if bars[0]["fill"] != "#c62828" || bars[1]["fill"] != "#2e7d32" {
		t.Errorf("colours %s, %s: want red for a missed goal, green for a met one", bars[0]["fill"], bars[1]["fill"])
	}
	if bars[1]["width"] != "420" {
		t.Errorf("a 5× ratio is drawn %s wide, want clipped to 420", bars[1]["width"])
	}
	if bars[0]["width"] != "168" {
		t.Errorf("a 0.8× ratio is drawn %s wide, want 168", bars[0]["width"])
	}
	all := strings.Join(texts, "\n")
	for _, want := range []string{`initial: Ferry <fast> & "good"`, "REGRESSED rpo: p99", "p <&> profile"} {
		if !strings.Contains(all, want) {
			t.Errorf("chart text lacks %q", want)
		}
	}
}

func TestPrintTable(t *testing.T) {
	yes := true
	ref := report("p", Figure{Section: "s", Name: "rate", Value: 100, Unit: "MB/s", Better: Higher})
	cur := report("p", Figure{Section: "s", Name: "rate", Value: 50, Unit: "MB/s", Better: Higher, Ratio: 0.5, RatioOf: "limit", Goal: "≥ 0.9", Met: &yes})
	cur.Skipped = []Skip{{Section: "scale", Reason: "not wired"}}
	var b bytes.Buffer
	if err := PrintTable(&b, cur, ref, Compare(ref, cur, 0.1)); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"REGRESSED 50 % worse (ref 100)", "skipped scale: not wired", "0.5", "limit", "yes"} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("table lacks %q:\n%s", want, b.String())
		}
	}
}

func TestOptionsReject(t *testing.T) {
	_, err := Run(t.Context(), Options{Only: []string{"nope"}})
	if err == nil || !strings.Contains(err.Error(), `unknown section "nope"`) {
		t.Fatalf("got %v, want an unknown-section error", err)
	}
}

func TestSectionFuncs(t *testing.T) {
	ctx := t.Context()
	fig := Figure{Section: SectionConnector, Name: "full copy: rate", Value: 90, Unit: "MB/s", Better: Higher}
	r, err := Run(ctx, Options{Only: []string{SectionScale, SectionLaunch, SectionConnector},
		Scale: func(context.Context, Env) ([]Figure, error) {
			return nil, Skipf("needs root (loop devices), running as uid %d", 1000)
		},
		Connector: func(_ context.Context, env Env) ([]Figure, error) {
			if env.Dir == "" || !env.Quick {
				t.Errorf("env %+v: want the run's directory and Quick", env)
			}
			return []Figure{fig}, nil
		},
		Quick: true,
	})
	if err != nil {
		t.Fatalf("a skipped section failed the run: %v", err)
	}
	want := []Skip{
		{Section: SectionScale, Reason: "needs root (loop devices), running as uid 1000"},
		{Section: SectionLaunch, Reason: "not wired into this build (bench/launchbench; set suite.Options.Launch in cmd/ferry)"},
	}
	if !reflect.DeepEqual(r.Skipped, want) {
		t.Errorf("skipped %+v, want %+v", r.Skipped, want)
	}
	if !reflect.DeepEqual(r.Figures, []Figure{fig}) {
		t.Errorf("figures %+v, want the connector's", r.Figures)
	}

	// A section that fails is listed as failed and fails the run.
	r, err = Run(ctx, Options{Only: []string{SectionConnector},
		Connector: func(context.Context, Env) ([]Figure, error) { return nil, errors.New("boom") }})
	if !errors.Is(err, ErrSectionFailed) || len(r.Skipped) != 1 || r.Skipped[0].Reason != "failed: boom" {
		t.Fatalf("got %v, %+v; want the run failed with the section listed", err, r.Skipped)
	}
	if !errors.Is(Skipf("x"), ErrSkip) || Skipf("a %s", "b").Error() != "a b" {
		t.Error("Skipf does not wrap ErrSkip with its reason")
	}
}

// With several initial-sync pairs the time goal is judged on their
// median ratio, not on the first pair's.
func TestReplicationFiguresMedian(t *testing.T) {
	res := &replbench.Result{ImageBytes: 4 << 30,
		InitialSync: []replbench.Measure{{Name: replbench.NameRsyncWhole, Seconds: 10}, {Name: replbench.NameFerryInitial, Seconds: 7}}}
	find := func(figs []Figure) Figure {
		for _, f := range figs {
			if f.Name == replbench.NameFerryInitial+": time" {
				return f
			}
		}
		t.Fatal("no time figure for Ferry's initial sync")
		return Figure{}
	}
	one := find(replicationFigures(res, nil))
	if one.Ratio != 0.7 || one.Met == nil || *one.Met {
		t.Fatalf("one pair: ratio %v met %v, want 0.7, not met", one.Ratio, one.Met)
	}
	res.SyncPairs = []replbench.SyncPair{{Ratio: 0.7}, {Ratio: 0.45}, {Ratio: 0.5}}
	res.MedianRatio = 0.5
	med := find(replicationFigures(res, nil))
	if med.Ratio != 0.5 || med.Met == nil || !*med.Met || !strings.Contains(med.RatioOf, "median of 3") {
		t.Fatalf("three pairs: ratio %v met %v of %q, want the median 0.5, met", med.Ratio, med.Met, med.RatioOf)
	}
}
