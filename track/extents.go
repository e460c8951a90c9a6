package track

import "sort"

// DefaultMaxExtents is the number of extents an ExtentSet holds per device
// before it coarsens: about 1.5 MiB of memory per device.
const DefaultMaxExtents = 1 << 16

// ExtentSet is a bounded set of dirty byte extents of one device. Add
// coalesces adjacent and overlapping ranges and keeps them sorted. When the
// set holds more than its limit it coarsens rather than drop anything: it
// doubles its granule (initially the device's logical block size), widens
// every extent to whole granules and merges them again, until it is back
// under half its limit. Coarsening only ever grows the dirty area, so the
// agent reads and ships more than was written, never less.
//
// An ExtentSet is not safe for concurrent use.
type ExtentSet struct {
	align int64 // the device's logical block size
	gran  int64 // current granule: align << k
	max   int
	ext   []Extent
}

// NewExtentSet returns an empty set aligned to align bytes (the device's
// logical block size; values below 1 mean 512) that holds at most max
// extents (values below 2 mean DefaultMaxExtents).
func NewExtentSet(align int64, max int) *ExtentSet {
	if align < 1 {
		align = 512
	}
	if max < 2 {
		max = DefaultMaxExtents
	}
	return &ExtentSet{align: align, gran: align, max: max}
}

// Add marks length bytes from off dirty, widened to whole granules.
func (s *ExtentSet) Add(off, length int64) {
	if length <= 0 || off < 0 {
		return
	}
	start := off / s.gran * s.gran
	end := (off + length + s.gran - 1) / s.gran * s.gran
	// i: the first extent that ends at or after start (touches or follows).
	i := sort.Search(len(s.ext), func(k int) bool {
		return s.ext[k].Offset+s.ext[k].Length >= start
	})
	// j: the first extent that starts after end (neither touches nor overlaps).
	j := i
	for j < len(s.ext) && s.ext[j].Offset <= end {
		j++
	}
	if i < j {
		start = min(start, s.ext[i].Offset)
		last := s.ext[j-1]
		end = max(end, last.Offset+last.Length)
	}
	s.ext = replace(s.ext, i, j, Extent{Offset: start, Length: end - start})
	if len(s.ext) > s.max {
		s.coarsen()
	}
}

// replace replaces ext[i:j] with e.
func replace(ext []Extent, i, j int, e Extent) []Extent {
	if i == j {
		ext = append(ext, Extent{})
		copy(ext[i+1:], ext[i:])
		ext[i] = e
		return ext
	}
	ext[i] = e
	n := copy(ext[i+1:], ext[j:])
	return ext[:i+1+n]
}

// coarsen doubles the granule until the set holds at most half its limit.
func (s *ExtentSet) coarsen() {
	for len(s.ext) > s.max/2 {
		s.gran *= 2
		out := s.ext[:0]
		for _, e := range s.ext {
			start := e.Offset / s.gran * s.gran
			end := (e.Offset + e.Length + s.gran - 1) / s.gran * s.gran
			if n := len(out); n > 0 && out[n-1].Offset+out[n-1].Length >= start {
				out[n-1].Length = max(out[n-1].Offset+out[n-1].Length, end) - out[n-1].Offset
				continue
			}
			out = append(out, Extent{Offset: start, Length: end - start})
		}
		s.ext = out
	}
}

// Len returns the number of extents in the set.
func (s *ExtentSet) Len() int { return len(s.ext) }

// Granule returns the current alignment of the set's extents: the logical
// block size, or a multiple of it after coarsening.
func (s *ExtentSet) Granule() int64 { return s.gran }

// Extents returns a copy of the set's extents, sorted and non-overlapping.
func (s *ExtentSet) Extents() []Extent {
	return append([]Extent(nil), s.ext...)
}

// Take returns the set's extents, sorted and non-overlapping, and empties
// the set (its granule goes back to the logical block size).
func (s *ExtentSet) Take() []Extent {
	ext := s.ext
	s.ext = nil
	s.gran = s.align
	return ext
}
