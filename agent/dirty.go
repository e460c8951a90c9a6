package agent

import (
	"slices"
	"sort"
	"time"

	"github.com/ferrymigrate/ferry/track"
)

// extentMap is a bounded set of dirty byte ranges of one device: sorted,
// non-overlapping, adjacent ranges merged, aligned to a block size. When it
// holds more than max ranges it coarsens, merging ranges across the
// smallest gaps (sending a little clean data again), so its memory never
// grows with the write rate: DRBD's pull-ahead instead of a queue of data.
type extentMap struct {
	ext       []track.Extent
	align     int64
	max       int
	bytes     int64
	oldest    time.Time // when the map last became non-empty
	coarsened bool      // merged across gaps since it was last empty
}

func newExtentMap(align int64, max int) *extentMap {
	return &extentMap{align: max64(align, 1), max: max}
}

func max64(a, b int64) int64 {
	if a > b {
		return a
	}
	return b
}

// SetAlign changes the alignment (the replica's block size, learnt when
// the server answers HELLO), widening the ranges already held to it.
func (m *extentMap) SetAlign(align int64) {
	align = max64(align, 1)
	if align == m.align {
		return
	}
	old, oldest := m.ext, m.oldest
	m.align, m.ext, m.bytes = align, nil, 0
	for _, x := range old {
		m.Add(x.Offset, x.Length, oldest)
	}
}

// Bytes returns the dirty bytes.
func (m *extentMap) Bytes() int64 { return m.bytes }

// Len returns the number of ranges.
func (m *extentMap) Len() int { return len(m.ext) }

// Add marks [off, off+length) dirty, widened to the alignment, at time now.
func (m *extentMap) Add(off, length int64, now time.Time) {
	if length <= 0 {
		return
	}
	lo := off - off%m.align
	hi := off + length
	if r := hi % m.align; r != 0 {
		hi += m.align - r
	}
	if len(m.ext) == 0 {
		m.oldest = now
	}
	// First range that ends at or after lo (touching ranges merge).
	i := sort.Search(len(m.ext), func(i int) bool { return m.ext[i].Offset+m.ext[i].Length >= lo })
	j := i
	for j < len(m.ext) && m.ext[j].Offset <= hi {
		lo = min(lo, m.ext[j].Offset)
		hi = max(hi, m.ext[j].Offset+m.ext[j].Length)
		m.bytes -= m.ext[j].Length
		j++
	}
	m.ext = slices.Replace(m.ext, i, j, track.Extent{Offset: lo, Length: hi - lo})
	m.bytes += hi - lo
	if m.max > 0 && len(m.ext) > m.max {
		m.coarsen()
	}
}

// coarsen halves the number of ranges by merging across the smaller gaps.
func (m *extentMap) coarsen() {
	gaps := make([]int64, 0, len(m.ext)-1)
	for i := 1; i < len(m.ext); i++ {
		gaps = append(gaps, m.ext[i].Offset-(m.ext[i-1].Offset+m.ext[i-1].Length))
	}
	sorted := slices.Clone(gaps)
	slices.Sort(sorted)
	limit := sorted[len(sorted)/2]
	out := m.ext[:1]
	for i := 1; i < len(m.ext); i++ {
		last := &out[len(out)-1]
		if gaps[i-1] <= limit {
			last.Length = m.ext[i].Offset + m.ext[i].Length - last.Offset
			continue
		}
		out = append(out, m.ext[i])
	}
	m.ext = out
	m.bytes = 0
	for _, e := range m.ext {
		m.bytes += e.Length
	}
	m.coarsened = true
}

// Clip removes everything at or above end.
func (m *extentMap) Clip(end int64) {
	for len(m.ext) > 0 {
		last := &m.ext[len(m.ext)-1]
		if last.Offset >= end {
			m.bytes -= last.Length
			m.ext = m.ext[:len(m.ext)-1]
			continue
		}
		if e := last.Offset + last.Length; e > end {
			m.bytes -= e - end
			last.Length = end - last.Offset
		}
		break
	}
	m.emptied()
}

// Take removes and returns up to maxLen bytes of the first range at or
// after from (wrapping to the start), so successive calls sweep the device
// like an elevator.
func (m *extentMap) Take(from, maxLen int64) (track.Extent, bool) {
	if len(m.ext) == 0 {
		return track.Extent{}, false
	}
	i := m.next(from)
	e := m.ext[i]
	if e.Length > maxLen {
		n := maxLen - maxLen%m.align
		if n <= 0 {
			n = m.align
		}
		m.ext[i].Offset += n
		m.ext[i].Length -= n
		m.bytes -= n
		return track.Extent{Offset: e.Offset, Length: n}, true
	}
	m.ext = slices.Delete(m.ext, i, i+1)
	m.bytes -= e.Length
	m.emptied()
	return e, true
}

// Peek returns the range Take(from, ...) would take from, without taking
// it.
func (m *extentMap) Peek(from int64) (track.Extent, bool) {
	if len(m.ext) == 0 {
		return track.Extent{}, false
	}
	return m.ext[m.next(from)], true
}

// next is the index of the first range ending after from, or 0 (the
// elevator wraps) when there is none.
func (m *extentMap) next(from int64) int {
	i := sort.Search(len(m.ext), func(i int) bool { return m.ext[i].Offset+m.ext[i].Length > from })
	if i == len(m.ext) {
		i = 0
	}
	return i
}

func (m *extentMap) emptied() {
	if len(m.ext) == 0 {
		m.oldest = time.Time{}
		m.coarsened = false
	}
}
