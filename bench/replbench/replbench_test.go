package replbench

import (
	"bytes"
	"math"
	"strings"
	"testing"
)

func TestMedianRatio(t *testing.T) {
	pair := func(r float64) SyncPair { return SyncPair{Ratio: r} }
	for _, tt := range []struct {
		name  string
		pairs []SyncPair
		want  float64
	}{
		{"none", nil, 0},
		{"one", []SyncPair{pair(0.6)}, 0.6},
		{"odd, unsorted", []SyncPair{pair(0.7), pair(0.45), pair(0.6)}, 0.6},
		{"even: the middle two", []SyncPair{pair(0.7), pair(0.4), pair(0.5), pair(0.6)}, 0.55},
	} {
		if got := medianRatio(tt.pairs); math.Abs(got-tt.want) > 1e-9 {
			t.Errorf("%s: %v, want %v", tt.name, got, tt.want)
		}
	}
}

func TestNewPair(t *testing.T) {
	for _, tt := range []struct {
		name         string
		rsync, ferry Measure
		want         SyncPair
	}{
		{"both verified", Measure{Seconds: 10, CPUSeconds: 9, Verified: true}, Measure{Seconds: 5, CPUSeconds: 7, Verified: true},
			SyncPair{RsyncSeconds: 10, FerrySeconds: 5, RsyncCPU: 9, FerryCPU: 7, Ratio: 0.5, Verified: true}},
		{"Ferry's copy not verified", Measure{Seconds: 10, Verified: true}, Measure{Seconds: 4},
			SyncPair{RsyncSeconds: 10, FerrySeconds: 4, Ratio: 0.4}},
		{"rsync missing: no ratio", Measure{}, Measure{Seconds: 4, Verified: true}, SyncPair{FerrySeconds: 4}},
	} {
		if got := newPair(tt.rsync, tt.ferry); got != tt.want {
			t.Errorf("%s: %+v, want %+v", tt.name, got, tt.want)
		}
	}
}

func TestPrintTablePairs(t *testing.T) {
	r := &Result{ImageBytes: 1 << 30, SyncPairs: []SyncPair{
		{RsyncSeconds: 10, FerrySeconds: 5, Ratio: 0.5, Verified: true},
		{RsyncSeconds: 8, FerrySeconds: 6, RsyncCPU: 7.25, FerryCPU: 8.5, Ratio: 0.75, Verified: true},
		{RsyncSeconds: 9, FerrySeconds: 5.4, Ratio: 0.6, Verified: true}}, MedianRatio: 0.6}
	var b bytes.Buffer
	printTable(&b, r)
	for _, want := range []string{"3 pairs", "0.750", "7.25", "8.50", "median", "0.600"} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("table lacks %q:\n%s", want, b.String())
		}
	}
	b.Reset()
	printTable(&b, &Result{ImageBytes: 1 << 30, SyncPairs: r.SyncPairs[:1], MedianRatio: 0.5})
	if strings.Contains(b.String(), "median") {
		t.Errorf("one pair printed a median:\n%s", b.String())
	}
}
