package track

import (
	"math/rand/v2"
	"reflect"
	"testing"
)

func TestExtentSetAdd(t *testing.T) {
	type add struct{ off, length int64 }
	tests := []struct {
		name string
		adds []add
		want []Extent
	}{
		{"empty", nil, nil},
		{"zero length ignored", []add{{0, 0}, {4096, -1}}, nil},
		{"one aligned", []add{{4096, 4096}}, []Extent{{4096, 4096}}},
		{"unaligned widens", []add{{100, 10}}, []Extent{{0, 512}}},
		{"unaligned across blocks", []add{{500, 20}}, []Extent{{0, 1024}}},
		{"adjacent merge", []add{{0, 512}, {512, 512}}, []Extent{{0, 1024}}},
		{"adjacent before", []add{{512, 512}, {0, 512}}, []Extent{{0, 1024}}},
		{"overlap", []add{{0, 2048}, {1024, 2048}}, []Extent{{0, 3072}}},
		{"contained", []add{{0, 4096}, {1024, 512}}, []Extent{{0, 4096}}},
		{"covers", []add{{1024, 512}, {0, 4096}}, []Extent{{0, 4096}}},
		{"gap kept sorted", []add{{8192, 512}, {0, 512}, {4096, 512}},
			[]Extent{{0, 512}, {4096, 512}, {8192, 512}}},
		{"bridge several", []add{{0, 512}, {1024, 512}, {2048, 512}, {4096, 512}, {512, 2048}},
			[]Extent{{0, 2560}, {4096, 512}}},
		{"bridge exact", []add{{0, 512}, {1024, 512}, {512, 512}}, []Extent{{0, 1536}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := NewExtentSet(512, 100)
			for _, a := range tt.adds {
				s.Add(a.off, a.length)
			}
			if got := s.Take(); !reflect.DeepEqual(got, tt.want) {
				t.Errorf("got %v, want %v", got, tt.want)
			}
			if s.Len() != 0 {
				t.Errorf("Len after Take = %d, want 0", s.Len())
			}
		})
	}
}

func TestExtentSetCoarsen(t *testing.T) {
	tests := []struct {
		name     string
		max      int
		offsets  []int64 // 512-byte writes
		want     []Extent
		wantGran int64
	}{
		{"under limit", 4, []int64{0, 2048, 4096, 6144},
			[]Extent{{0, 512}, {2048, 512}, {4096, 512}, {6144, 512}}, 512},
		// Five writes 2 KiB apart over a limit of 4: at a 1 KiB granule they
		// are still 5 extents, at 2 KiB they touch and merge into one.
		{"coarsened", 4, []int64{0, 2048, 4096, 6144, 8192},
			[]Extent{{0, 10240}}, 2048},
		// Two clusters far apart stay two extents.
		{"clusters", 4, []int64{0, 1024, 2048, 1 << 20, 1<<20 + 1024},
			[]Extent{{0, 3072}, {1 << 20, 2048}}, 1024},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := NewExtentSet(512, tt.max)
			for _, off := range tt.offsets {
				s.Add(off, 512)
			}
			if g := s.Granule(); g != tt.wantGran {
				t.Errorf("granule = %d, want %d", g, tt.wantGran)
			}
			if got := s.Take(); !reflect.DeepEqual(got, tt.want) {
				t.Errorf("got %v, want %v", got, tt.want)
			}
			if s.Granule() != 512 {
				t.Errorf("granule after Take = %d, want 512", s.Granule())
			}
		})
	}
}

// TestExtentSetRandom checks the invariants against a bitmap on random
// writes, with and without coarsening.
func TestExtentSetRandom(t *testing.T) {
	for _, max := range []int{2, 8, 64, 1 << 20} {
		r := rand.New(rand.NewPCG(1, uint64(max)))
		const blocks = 4096
		const bs = 512
		s := NewExtentSet(bs, max)
		written := make([]bool, blocks)
		for range 2000 {
			b := r.IntN(blocks)
			n := 1 + r.IntN(16)
			if b+n > blocks {
				n = blocks - b
			}
			s.Add(int64(b)*bs+int64(r.IntN(bs)), int64(n-1)*bs+1)
			for k := b; k < b+n; k++ {
				written[k] = true
			}
			if s.Len() > max {
				t.Fatalf("max %d: Len %d over the limit", max, s.Len())
			}
		}
		got := s.Take()
		for i := 1; i < len(got); i++ {
			if got[i-1].Offset+got[i-1].Length >= got[i].Offset {
				t.Fatalf("max %d: extents %v and %v not sorted and separate", max, got[i-1], got[i])
			}
		}
		for k, w := range written {
			if w && !covered(got, int64(k)*bs, bs) {
				t.Fatalf("max %d: block %d written but not covered", max, k)
			}
		}
		if max == 1<<20 {
			// Without coarsening the set is exact.
			for _, e := range got {
				for off := e.Offset; off < e.Offset+e.Length; off += bs {
					if !written[off/bs] {
						t.Fatalf("block %d reported but not written", off/bs)
					}
				}
			}
		}
	}
}

func covered(ext []Extent, off, length int64) bool {
	for _, e := range ext {
		if e.Offset <= off && off+length <= e.Offset+e.Length {
			return true
		}
	}
	return false
}
