package launchbench

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ferrymigrate/ferry"
	"github.com/ferrymigrate/ferry/internal/testimage"
)

func TestPhaseSeconds(t *testing.T) {
	t0 := time.Date(2026, 12, 2, 10, 0, 0, 0, time.UTC)
	at := func(s float64, ev ferry.JobEvent) ferry.JobLogItem {
		return ferry.JobLogItem{Time: t0.Add(time.Duration(s * float64(time.Second))), Event: ev}
	}
	log := []ferry.JobLogItem{
		at(0, ferry.EventJobStart),
		at(0.5, ferry.EventConversionEnd), // before any start: ignored
		at(1, ferry.EventSnapshotStart),
		at(2.25, ferry.EventSnapshotEnd),
		at(3, ferry.EventConversionStart),
		at(10, ferry.EventConversionEnd),
		at(12, ferry.EventConversionEnd), // the last end counts
		at(13, ferry.EventJobEnd),
	}
	tests := []struct {
		from, to ferry.JobEvent
		want     float64
	}{
		{ferry.EventSnapshotStart, ferry.EventSnapshotEnd, 1.25},
		{ferry.EventConversionStart, ferry.EventConversionEnd, 9},
		{ferry.EventCleanupStart, ferry.EventCleanupEnd, 0},
		{ferry.EventLaunchStart, ferry.EventJobEnd, 0},
	}
	for _, tt := range tests {
		if got := PhaseSeconds(log, tt.from, tt.to); got != tt.want {
			t.Errorf("PhaseSeconds(%s, %s) = %v, want %v", tt.from, tt.to, got, tt.want)
		}
	}
	if got := PhaseSeconds([]ferry.JobLogItem{at(1, ferry.EventSnapshotStart)}, ferry.EventSnapshotStart, ferry.EventSnapshotEnd); got != 0 {
		t.Errorf("a phase that never ended = %v, want 0", got)
	}
}

func TestConsolePredicates(t *testing.T) {
	for _, tt := range []struct {
		data  string
		first bool
	}{
		{"", false},
		{"SeaBIOS (version", false},
		{"\r\n\x00 \n", false},
		{"\n\nSeaBIOS\n", true},
		{"SYSLINUX 6.04\r\n", true},
	} {
		if got := firstLine([]byte(tt.data)); got != tt.first {
			t.Errorf("firstLine(%q) = %v, want %v", tt.data, got, tt.first)
		}
	}
	if bootMarker([]byte("booting\n")) || !bootMarker([]byte("x\n"+testimage.BootMarker+"\n")) {
		t.Error("bootMarker does not look for the test image's marker")
	}
}

func TestWaitConsole(t *testing.T) {
	path := filepath.Join(t.TempDir(), "console.log")
	start := time.Now()
	go func() {
		time.Sleep(30 * time.Millisecond)
		os.WriteFile(path, []byte("SeaBIOS\n"), 0o600)
	}()
	d, err := waitConsole(t.Context(), path, start, 10*time.Second, firstLine)
	if err != nil || d < 30*time.Millisecond {
		t.Fatalf("waitConsole = %v, %v; want at least 30 ms and no error", d, err)
	}
	_, err = waitConsole(t.Context(), path, start, 50*time.Millisecond, bootMarker)
	if err == nil || !strings.Contains(err.Error(), "SeaBIOS") {
		t.Fatalf("waitConsole for a marker that never comes = %v, want an error quoting the console", err)
	}
}

func TestRunNeedsBinary(t *testing.T) {
	if _, err := Run(t.Context(), Options{}); err == nil || !strings.Contains(err.Error(), "binary") {
		t.Fatalf("Run without a binary = %v, want an error naming it", err)
	}
}
