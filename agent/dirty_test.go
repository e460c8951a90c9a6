package agent

import (
	"math/rand/v2"
	"testing"
	"time"

	"github.com/ferrymigrate/ferry/track"
)

func TestExtentMapAddMerges(t *testing.T) {
	now := time.Unix(1, 0)
	tests := []struct {
		name string
		adds [][2]int64
		want []track.Extent
	}{
		{"aligned out", [][2]int64{{100, 10}}, []track.Extent{{Offset: 0, Length: 4096}}},
		{"adjacent merge", [][2]int64{{0, 4096}, {4096, 4096}}, []track.Extent{{Offset: 0, Length: 8192}}},
		{"gap kept", [][2]int64{{0, 4096}, {8192, 4096}}, []track.Extent{{Offset: 0, Length: 4096}, {Offset: 8192, Length: 4096}}},
		{"bridge", [][2]int64{{0, 4096}, {8192, 4096}, {4096, 4096}}, []track.Extent{{Offset: 0, Length: 12288}}},
		{"covering", [][2]int64{{4096, 4096}, {12288, 4096}, {0, 20480}}, []track.Extent{{Offset: 0, Length: 20480}}},
		{"out of order", [][2]int64{{16384, 4096}, {0, 4096}}, []track.Extent{{Offset: 0, Length: 4096}, {Offset: 16384, Length: 4096}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := newExtentMap(4096, 0)
			for _, a := range tt.adds {
				m.Add(a[0], a[1], now)
			}
			if len(m.ext) != len(tt.want) {
				t.Fatalf("got %v, want %v", m.ext, tt.want)
			}
			var sum int64
			for i := range tt.want {
				if m.ext[i] != tt.want[i] {
					t.Fatalf("got %v, want %v", m.ext, tt.want)
				}
				sum += tt.want[i].Length
			}
			if m.Bytes() != sum {
				t.Fatalf("bytes %d, want %d", m.Bytes(), sum)
			}
		})
	}
}

// However many random writes arrive, the map stays bounded and still
// covers every one of them.
func TestExtentMapBoundedAndCovering(t *testing.T) {
	m := newExtentMap(4096, 64)
	r := rand.New(rand.NewPCG(1, 2))
	var writes [][2]int64
	for range 10000 {
		off := r.Int64N(1<<30) &^ 4095
		writes = append(writes, [2]int64{off, 4096})
		m.Add(off, 4096, time.Unix(1, 0))
		if m.Len() > 64 {
			t.Fatalf("%d ranges, limit 64", m.Len())
		}
	}
	if !m.coarsened {
		t.Fatal("not coarsened")
	}
	for _, w := range writes {
		covered := false
		for _, e := range m.ext {
			if w[0] >= e.Offset && w[0]+w[1] <= e.Offset+e.Length {
				covered = true
			}
		}
		if !covered {
			t.Fatalf("write at %d lost", w[0])
		}
	}
	// Taking everything empties it and sweeps in order.
	var last int64 = -1
	var taken int64
	total := m.Bytes()
	for {
		e, ok := m.Take(last+1, 1<<20)
		if !ok {
			break
		}
		if e.Length > 1<<20 || e.Offset <= last {
			t.Fatalf("take %v after %d", e, last)
		}
		last = e.Offset
		taken += e.Length
	}
	if taken != total || m.Bytes() != 0 || !m.oldest.IsZero() {
		t.Fatalf("took %d of %d, %d left", taken, total, m.Bytes())
	}
}

func TestExtentMapClip(t *testing.T) {
	m := newExtentMap(512, 0)
	m.Add(0, 1024, time.Unix(1, 0))
	m.Add(4096, 4096, time.Unix(1, 0))
	m.Clip(6144)
	if m.Len() != 2 || m.ext[1] != (track.Extent{Offset: 4096, Length: 2048}) || m.Bytes() != 3072 {
		t.Fatalf("after clip %v (%d bytes)", m.ext, m.Bytes())
	}
	m.Clip(0)
	if m.Len() != 0 || m.Bytes() != 0 {
		t.Fatalf("after clip to 0: %v", m.ext)
	}
}

func TestExtentMapSetAlign(t *testing.T) {
	m := newExtentMap(512, 0)
	now := time.Now()
	m.Add(1024, 2048, now)    // [1024, 3072)
	m.Add(8192+512, 512, now) // [8704, 9216)
	m.SetAlign(4096)
	want := []track.Extent{{Offset: 0, Length: 4096}, {Offset: 8192, Length: 4096}}
	if len(m.ext) != len(want) {
		t.Fatalf("extents %v, want %v", m.ext, want)
	}
	for i := range want {
		if m.ext[i] != want[i] {
			t.Fatalf("extents %v, want %v", m.ext, want)
		}
	}
	if m.Bytes() != 8192 {
		t.Fatalf("bytes %d, want 8192", m.Bytes())
	}
	// A new write is widened to the new alignment and merges both.
	m.Add(5000, 10, now)
	if len(m.ext) != 1 || m.ext[0] != (track.Extent{Offset: 0, Length: 12288}) {
		t.Fatalf("after a new add: %v, want one range [0, 12288)", m.ext)
	}
}
