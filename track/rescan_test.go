package track_test

import (
	"testing"
	"time"

	"github.com/ferrymigrate/ferry/track"
	"github.com/ferrymigrate/ferry/track/tracktest"
)

func newRescan(t *testing.T, devices []string) track.Tracker {
	r, err := track.NewRescan(devices, 100*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func TestRescanConformance(t *testing.T) {
	tracktest.Suite(t, newRescan)
}

// TestRescanChangedBlocks checks the rescan tracker reports exactly the
// 64 KiB blocks that changed, and that the baseline comes as Lost.
func TestRescanChangedBlocks(t *testing.T) {
	dev := tracktest.Loop(t, 32<<20, false)
	tr, err := track.NewRescan([]string{dev}, 50*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	if tr.Kind() != "rescan" {
		t.Errorf("Kind = %q", tr.Kind())
	}
	ext, lost := tracktest.Collect(t, tr, 300*time.Millisecond, nil)
	if !lost[dev] || len(ext[dev]) != 0 {
		t.Fatalf("baseline: lost %v, extents %v; want Lost and no extents", lost[dev], ext[dev])
	}
	tracktest.Write(t, dev, 4096, 512, 0)         // block 0
	tracktest.Write(t, dev, 64<<10-512, 1024, 0)  // blocks 0 and 1
	tracktest.Write(t, dev, 1<<20, 128<<10, 0)    // blocks 16, 17
	tracktest.Write(t, dev, 32<<20-4096, 4096, 0) // the last block
	want := []track.Extent{{Offset: 0, Length: 128 << 10}, {Offset: 1 << 20, Length: 128 << 10},
		{Offset: 32<<20 - 64<<10, Length: 64 << 10}}
	ext, lost = tracktest.Collect(t, tr, 5*time.Second, func(got map[string][]track.Extent) bool {
		return len(got[dev]) == len(want) && tracktest.Covers(got[dev], want[0].Offset, want[0].Length)
	})
	if lost[dev] {
		t.Errorf("Lost after the baseline")
	}
	if tracktest.String(ext[dev]) != tracktest.String(want) {
		t.Errorf("got %s, want %s", tracktest.String(ext[dev]), tracktest.String(want))
	}
}
