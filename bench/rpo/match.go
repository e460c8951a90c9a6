package rpo

import (
	"encoding/binary"
	"math"
	"slices"
	"sort"
	"sync"
	"time"
)

// stampMagic starts every block the writer writes.
const stampMagic = 0x4f50524f59525246 // "FRRYORPO" little-endian, arbitrary

// blockSize is the writer's block size.
const blockSize = 4096

// putStamp writes the stamp of write seq at the start of a block.
func putStamp(b []byte, seq uint64) {
	binary.LittleEndian.PutUint64(b[0:8], stampMagic)
	binary.LittleEndian.PutUint64(b[8:16], seq)
}

// readStamp returns the stamp of a block, if it has one.
func readStamp(b []byte) (uint64, bool) {
	if len(b) < 16 || binary.LittleEndian.Uint64(b[0:8]) != stampMagic {
		return 0, false
	}
	return binary.LittleEndian.Uint64(b[8:16]), true
}

// written is a block (its offset and stamp) seen in a record.
type written struct {
	rec   uint64 // the record's sequence number on the wire
	off   int64
	stamp uint64
}

// acked is a durable acknowledgement: every record up to seq at time t.
type acked struct {
	seq uint64
	t   time.Time
}

// sourceWrite is a write completed on the source.
type sourceWrite struct {
	off   int64
	stamp uint64
	done  time.Time
}

// Matcher collects what the writer wrote and what the server applied and
// acknowledged, and matches them. It implements dataplane.Observer for
// one server's one disk. Safe for concurrent use.
type Matcher struct {
	server string
	disk   int

	mu     sync.Mutex
	seen   []written     // guarded by mu
	acks   []acked       // guarded by mu; seq increasing
	writes []sourceWrite // guarded by mu
	now    func() time.Time
}

// NewMatcher returns a Matcher of disk (its index in the agent's HELLO)
// of server.
func NewMatcher(server string, disk int) *Matcher {
	return &Matcher{server: server, disk: disk, now: time.Now}
}

// Written notes the stamps of the blocks in a WRITE the server applied.
func (m *Matcher) Written(server string, disk int, seq uint64, off int64, data []byte) {
	if server != m.server || disk != m.disk {
		return
	}
	// Records are block-aligned; stamps sit at the start of a block.
	first := (blockSize - off%blockSize) % blockSize
	var found []written
	for i := first; i+16 <= int64(len(data)); i += blockSize {
		if s, ok := readStamp(data[i:]); ok {
			found = append(found, written{rec: seq, off: off + i, stamp: s})
		}
	}
	if len(found) == 0 {
		return
	}
	m.mu.Lock()
	m.seen = append(m.seen, found...)
	m.mu.Unlock()
}

// Durable notes the time records up to seq were acknowledged durable.
func (m *Matcher) Durable(server string, disk int, seq uint64) {
	if server != m.server || disk != m.disk {
		return
	}
	t := m.now()
	m.mu.Lock()
	if n := len(m.acks); n == 0 || seq > m.acks[n-1].seq {
		m.acks = append(m.acks, acked{seq: seq, t: t})
	}
	m.mu.Unlock()
}

// wrote notes a write completed on the source.
func (m *Matcher) wrote(off int64, stamp uint64, done time.Time) {
	m.mu.Lock()
	m.writes = append(m.writes, sourceWrite{off: off, stamp: stamp, done: done})
	m.mu.Unlock()
}

// reset forgets everything (between runs at different rates).
func (m *Matcher) reset() {
	m.mu.Lock()
	m.seen, m.acks, m.writes = nil, nil, nil
	m.mu.Unlock()
}

// unmatched returns the writes Match finds no durable record for.
func (m *Matcher) unmatched() []sourceWrite {
	m.mu.Lock()
	seen, acks, writes := slices.Clone(m.seen), slices.Clone(m.acks), slices.Clone(m.writes)
	m.mu.Unlock()
	_, un := matchAll(writes, seen, acks)
	return un
}

// Stats summarise the RPO of a set of writes.
type Stats struct {
	Writes int `json:"writes"`
	// Unmatched writes never reached the replica durably while watched.
	Unmatched int     `json:"unmatched"`
	P50       float64 `json:"p50_seconds"`
	P99       float64 `json:"p99_seconds"`
	Max       float64 `json:"max_seconds"`
}

// Match computes each write's RPO: the time from its completion on the
// source to the first durable acknowledgement of a record that holds the
// block with its stamp or a later one (a later write to the same block
// carries everything the earlier one did for that block).
func (m *Matcher) Match() Stats {
	m.mu.Lock()
	seen := slices.Clone(m.seen)
	acks := slices.Clone(m.acks)
	writes := slices.Clone(m.writes)
	m.mu.Unlock()
	return match(writes, seen, acks)
}

func match(writes []sourceWrite, seen []written, acks []acked) Stats {
	st, _ := matchAll(writes, seen, acks)
	return st
}

func matchAll(writes []sourceWrite, seen []written, acks []acked) (Stats, []sourceWrite) {
	// Durable time of each seen block: the first ack at or above its record.
	type durable struct {
		stamp uint64
		t     time.Time
	}
	byOff := map[int64][]durable{}
	for _, w := range seen {
		i := sort.Search(len(acks), func(i int) bool { return acks[i].seq >= w.rec })
		if i == len(acks) {
			continue // not durable yet
		}
		byOff[w.off] = append(byOff[w.off], durable{stamp: w.stamp, t: acks[i].t})
	}
	// Per block, sorted by stamp, the earliest durable time of any stamp
	// at or above each entry (a suffix minimum).
	for off, ds := range byOff {
		slices.SortFunc(ds, func(a, b durable) int { return cmpU64(a.stamp, b.stamp) })
		for i := len(ds) - 2; i >= 0; i-- {
			if ds[i+1].t.Before(ds[i].t) {
				ds[i].t = ds[i+1].t
			}
		}
		byOff[off] = ds
	}
	st := Stats{Writes: len(writes)}
	var rpo []float64
	var un []sourceWrite
	for _, w := range writes {
		ds := byOff[w.off]
		i := sort.Search(len(ds), func(i int) bool { return ds[i].stamp >= w.stamp })
		if i == len(ds) {
			st.Unmatched++
			un = append(un, w)
			continue
		}
		// A block cannot be durable before the write completed; a
		// negative value means the record was read between the write
		// reaching the device and the writer noting its completion.
		rpo = append(rpo, max(0, ds[i].t.Sub(w.done).Seconds()))
	}
	if len(rpo) == 0 {
		return st, un
	}
	slices.Sort(rpo)
	st.P50 = quantile(rpo, 0.50)
	st.P99 = quantile(rpo, 0.99)
	st.Max = rpo[len(rpo)-1]
	return st, un
}

func cmpU64(a, b uint64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// quantile is the nearest-rank quantile of sorted v.
func quantile(v []float64, q float64) float64 {
	i := int(math.Ceil(q*float64(len(v)))) - 1
	return v[min(max(i, 0), len(v)-1)]
}
