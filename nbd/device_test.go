package nbd

import (
	"slices"
	"testing"
)

// storeExtent stands for another package's extent type (replica.Extent).
type storeExtent struct {
	Offset, Length int64
	Zero           bool
}

type storeReader struct{ memDevice }

func (r *storeReader) Extents(off, length int64) ([]storeExtent, error) {
	return []storeExtent{{Offset: off, Length: length / 2, Zero: true}}, nil
}

func TestWithExtents(t *testing.T) {
	r := &storeReader{memDevice{data: make([]byte, 8192)}}
	dev := WithExtents(r, r.Extents)
	if dev.Size() != 8192 {
		t.Fatalf("size %d", dev.Size())
	}
	x, ok := dev.(Extenter)
	if !ok {
		t.Fatal("WithExtents result is not an Extenter")
	}
	got, err := x.Extents(4096, 4096)
	if err != nil || !slices.Equal(got, []Extent{{Offset: 4096, Length: 2048, Zero: true}}) {
		t.Fatalf("Extents = %v, %v", got, err)
	}
}

func TestBlockStatus(t *testing.T) {
	const hz = stateHole | stateZero
	tests := []struct {
		name        string
		es          []Extent
		off, length int64
		reqOne      bool
		want        []statusDescriptor
	}{
		{"no extents", nil, 0, 100, false, []statusDescriptor{{100, 0}}},
		{"one hole", []Extent{{0, 100, true}}, 0, 100, false, []statusDescriptor{{100, hz}}},
		{"gaps are data", []Extent{{10, 10, true}, {50, 10, true}}, 0, 100, false,
			[]statusDescriptor{{10, 0}, {10, hz}, {30, 0}, {10, hz}, {40, 0}}},
		{"clipped to range", []Extent{{0, 1000, true}}, 100, 50, false, []statusDescriptor{{50, hz}}},
		{"merged neighbours", []Extent{{0, 10, true}, {10, 10, true}, {20, 5, false}, {25, 5, false}}, 0, 30, false,
			[]statusDescriptor{{20, hz}, {10, 0}}},
		{"outside and empty extents ignored", []Extent{{-5, 3, true}, {0, 0, true}, {500, 10, true}}, 0, 100, false,
			[]statusDescriptor{{100, 0}}},
		{"overlapping extents", []Extent{{0, 50, true}, {20, 50, false}}, 0, 100, false,
			[]statusDescriptor{{50, hz}, {50, 0}}},
		{"huge extent no overflow", []Extent{{10, 1<<63 - 1, true}}, 0, 100, false,
			[]statusDescriptor{{10, 0}, {90, hz}}},
		{"req one", []Extent{{0, 10, true}}, 0, 100, true, []statusDescriptor{{10, hz}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := blockStatus(tt.es, tt.off, tt.length, tt.reqOne)
			if !slices.Equal(got, tt.want) {
				t.Fatalf("blockStatus = %v, want %v", got, tt.want)
			}
		})
	}
}

func TestBlockStatusBounded(t *testing.T) {
	es := make([]Extent, 3*maxDescriptors)
	for i := range es {
		es[i] = Extent{Offset: int64(i), Length: 1, Zero: i%2 == 0}
	}
	got := blockStatus(es, 0, int64(len(es)), false)
	if len(got) != maxDescriptors {
		t.Fatalf("%d descriptors, want the cap %d", len(got), maxDescriptors)
	}
}

func TestBufferClasses(t *testing.T) {
	for _, n := range []int{1, 4095, 4096, 4097, 1 << 20, 3<<20 + 1, MaxRequestLength} {
		b := getBuffer(n)
		if len(b) != n || cap(b) < n || cap(b) > 2*n+4096 {
			t.Fatalf("getBuffer(%d): len %d cap %d", n, len(b), cap(b))
		}
		putBuffer(b)
	}
}
