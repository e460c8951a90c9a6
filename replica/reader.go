package replica

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sort"
	"sync"
	"sync/atomic"
	"time"
)

// Extent is a range of a disk and whether it reads as zeros (a hole or a
// zeroed range) or holds data.
type Extent struct {
	Offset, Length int64
	Zero           bool
}

// piece is a journal extent overlaid on one chunk.
type piece struct {
	off, len int64 // absolute disk offset and length
	zero     bool
	seg      *segment
	pos      int64 // file offset of the byte at off (data pieces)
	// stored: a whole chunk stored directly (recChunks), read from chunk
	// hash; a zero hash is a zero piece instead.
	stored bool
	hash   Hash
}

func (p piece) end() int64 { return p.off + p.len }

// overlay maps chunk index to the sorted, non-overlapping journal pieces
// that override the base map inside that chunk.
type overlay map[int64][]piece

// add overlays [off, off+length) with a zero or data extent.
func (o overlay) add(cs int64, off, length int64, zero bool, seg *segment, pos int64) {
	for c := off / cs; c*cs < off+length; c++ {
		lo, hi := max(off, c*cs), min(off+length, (c+1)*cs)
		p := piece{off: lo, len: hi - lo, zero: zero, seg: seg}
		if !zero {
			p.pos = pos + (lo - off)
		}
		o[c] = insertPiece(o[c], p)
	}
}

// addChunks overlays the whole chunks of a recChunks record.
func (o overlay) addChunks(cs, off int64, hashes []Hash) {
	for i, h := range hashes {
		c := off/cs + int64(i)
		p := piece{off: c * cs, len: cs, zero: h.IsZero(), stored: !h.IsZero(), hash: h}
		o[c] = insertPiece(o[c], p)
	}
}

// insertPiece puts p into the sorted list ps, cutting what it overlaps.
func insertPiece(ps []piece, p piece) []piece {
	out := make([]piece, 0, len(ps)+2)
	placed := false
	for _, q := range ps {
		if q.end() <= p.off {
			out = append(out, q)
			continue
		}
		if q.off >= p.end() {
			if !placed {
				out = append(out, p)
				placed = true
			}
			out = append(out, q)
			continue
		}
		if q.off < p.off {
			l := q
			l.len = p.off - q.off
			out = append(out, l)
		}
		if !placed {
			out = append(out, p)
			placed = true
		}
		if q.end() > p.end() {
			r := q
			r.off = p.end()
			r.len = q.end() - p.end()
			if !q.zero && !q.stored {
				r.pos = q.pos + (p.end() - q.off)
			}
			out = append(out, r)
		}
	}
	if !placed {
		out = append(out, p)
	}
	return out
}

// covered reports whether ps covers [lo, hi) completely.
func covered(ps []piece, lo, hi int64) bool {
	at := lo
	for _, p := range ps {
		if p.off > at {
			return false
		}
		if p.end() > at {
			at = p.end()
		}
		if at >= hi {
			return true
		}
	}
	return at >= hi
}

// Reader reads a disk as it was at one sequence number: a block map plus
// the journal records after it. It implements io.ReaderAt and is safe for
// concurrent use. Close it to release the journal segments and the map it
// pins.
type Reader struct {
	d     *Disk
	seq   uint64
	size  int64
	cs    int64
	base  *blockMap
	ov    overlay
	segs  []*segment
	ctx   context.Context
	mu    sync.Mutex
	close bool
	// lastEnd is where the previous read ended, to detect sequential reads.
	lastEnd atomic.Int64
}

// readAheadBytes is how far past a sequential read chunks are prefetched
// (decrypted in parallel on other cores while the reader copies out).
const readAheadBytes = 8 << 20

var _ io.ReaderAt = (*Reader)(nil)

// Seq returns the sequence number the Reader shows the disk at.
func (r *Reader) Seq() uint64 { return r.seq }

// Size returns the disk's size at the Reader's sequence number.
func (r *Reader) Size() int64 { return r.size }

// OpenHead returns a Reader of the latest durable state, journal included.
func (d *Disk) OpenHead(ctx context.Context) (*Reader, error) {
	return d.OpenAt(ctx, d.DurableSeq())
}

// OpenAt returns a Reader of the disk right after the record with sequence
// number seq (any point in time): seq must be a snapshot's or lie inside
// the journal window (ErrOutsideWindow otherwise).
func (d *Disk) OpenAt(ctx context.Context, seq uint64) (*Reader, error) {
	r, err := d.openAt(ctx, seq)
	if err != nil {
		return nil, fmt.Errorf("open disk %s at %d: %w", d.id, seq, err)
	}
	return r, nil
}

// OpenAtTime returns a Reader of the disk as of time t: after the last
// durable record written at or before t, inside the journal window.
func (d *Disk) OpenAtTime(ctx context.Context, t time.Time) (*Reader, error) {
	seq, err := d.seqAt(t)
	if err != nil {
		return nil, fmt.Errorf("open disk %s at %v: %w", d.id, t, err)
	}
	return d.OpenAt(ctx, seq)
}

// seqAt finds the last record written at or before t.
func (d *Disk) seqAt(t time.Time) (uint64, error) {
	d.mu.Lock()
	trimmed := d.trimmed
	d.mu.Unlock()
	d.j.mu.Lock()
	defer d.j.mu.Unlock()
	ns := t.UnixNano()
	i := sort.Search(len(d.j.recs), func(i int) bool { return d.j.recs[i].time > ns })
	if i == 0 {
		return 0, ErrOutsideWindow
	}
	seq := d.j.recs[i-1].seq
	if seq <= trimmed {
		return 0, ErrOutsideWindow
	}
	return seq, nil
}

// Window returns the oldest and newest sequence numbers OpenAt accepts for
// any point in between (snapshots outside it stay readable).
func (d *Disk) Window() (from, to uint64) {
	d.mu.Lock()
	defer d.mu.Unlock()
	to = d.j.durableSeq()
	for _, m := range d.maps {
		if m >= d.trimmed {
			return m, to
		}
	}
	if d.trimmed == 0 {
		return 0, to
	}
	return to, to
}

func (d *Disk) openAt(ctx context.Context, seq uint64) (*Reader, error) {
	d.mu.Lock()
	if d.deleted {
		d.mu.Unlock()
		return nil, fmt.Errorf("disk %s: deleted: %w", d.id, ErrNotFound)
	}
	d.j.mu.Lock()
	if seq > d.j.durable {
		d.j.mu.Unlock()
		d.mu.Unlock()
		return nil, fmt.Errorf("sequence number %d is not durable yet (%d is): %w", seq, d.j.durable, ErrOutsideWindow)
	}
	// The base is the newest map at or before seq whose successors up to
	// seq are all still in the journal.
	i := sort.Search(len(d.maps), func(i int) bool { return d.maps[i] > seq })
	base := uint64(0)
	found := false
	if i > 0 && (d.maps[i-1] == seq || d.maps[i-1] >= d.trimmed) {
		base, found = d.maps[i-1], true
	} else if d.trimmed == 0 {
		found = true
	}
	if !found {
		d.j.mu.Unlock()
		d.mu.Unlock()
		return nil, ErrOutsideWindow
	}
	recs := append([]jrec(nil), d.j.rangeLocked(base, seq)...)
	segs := pinSegments(recs)
	d.j.mu.Unlock()
	d.pins[base]++
	d.mu.Unlock()

	r := &Reader{d: d, seq: seq, cs: int64(d.s.cfg.ChunkSize), ov: overlay{}, segs: segs, ctx: d.s.ctx}
	m, err := d.root(ctx, base)
	if err != nil {
		r.Close()
		return nil, err
	}
	r.base = m
	r.size = m.size
	for _, rec := range recs {
		switch rec.typ {
		case recWrite:
			r.ov.add(r.cs, rec.off, rec.length, false, rec.seg, rec.pos)
		case recZero:
			r.ov.add(r.cs, rec.off, rec.length, true, nil, 0)
		case recChunks:
			r.ov.addChunks(r.cs, rec.off, rec.hashes)
		case recResize:
			r.size = rec.off
		}
	}
	return r, nil
}

// Close releases the Reader's journal segments and map.
func (r *Reader) Close() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.close {
		return nil
	}
	r.close = true
	r.d.j.unpin(r.segs)
	r.d.mu.Lock()
	base := uint64(0)
	if r.base != nil {
		base = r.base.seq
	}
	r.d.pins[base]--
	if r.d.pins[base] <= 0 {
		delete(r.d.pins, base)
	}
	r.d.mu.Unlock()
	return nil
}

func (r *Reader) closed() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.close
}

// ref returns the base map's entry for chunk c.
func (r *Reader) ref(c int64) (entry, error) {
	p := c / pageEntries
	if p >= int64(len(r.base.pages)) || r.base.pages[p].IsZero() {
		return entry{}, nil
	}
	page, err := r.d.s.getChunk(r.ctx, r.base.pages[p])
	if err != nil {
		return entry{}, err
	}
	if _, err := checkPage(page); err != nil {
		return entry{}, corrupt(chunkName(r.base.pages[p]), err)
	}
	return pageEntry(page, int(c%pageEntries)), nil
}

// readEntry fills dst with chunk e's bytes from offset at within it: its
// full chunk (zeros past its end), then a delta's changed pages.
func (s *Store) readEntry(ctx context.Context, e entry, at int64, dst []byte) error {
	if full := e.full(); full.IsZero() {
		clear(dst)
	} else {
		content, err := s.getChunk(ctx, full)
		if err != nil {
			return err
		}
		n := 0
		if at < int64(len(content)) {
			n = copy(dst, content[at:])
		}
		clear(dst[n:])
	}
	if !e.delta {
		return nil
	}
	raw, err := s.getChunk(ctx, e.h)
	if err != nil {
		return err
	}
	p, err := decodePatch(raw, s.cfg.ChunkSize)
	if err != nil {
		return corrupt(chunkName(e.h), err)
	}
	p.apply(dst, at)
	return nil
}

// ReadAt reads len(p) bytes at off. A read that extends past the end of
// the disk returns the bytes before the end and an error wrapping both
// ErrOutOfRange and io.EOF. A missing or damaged object is an error naming
// it, never data.
func (r *Reader) ReadAt(p []byte, off int64) (int, error) {
	if r.closed() {
		return 0, ErrClosed
	}
	if off < 0 {
		return 0, fmt.Errorf("read at %d: %w", off, ErrOutOfRange)
	}
	want := len(p)
	var eof error
	if off >= r.size {
		return 0, fmt.Errorf("read at %d of a %d-byte disk: %w: %w", off, r.size, ErrOutOfRange, io.EOF)
	}
	if int64(want) > r.size-off {
		p = p[:r.size-off]
		eof = fmt.Errorf("read %d bytes at %d of a %d-byte disk: %w: %w", want, off, r.size, ErrOutOfRange, io.EOF)
	}
	r.readAhead(off, int64(len(p)))
	n := 0
	for n < len(p) {
		at := off + int64(n)
		c := at / r.cs
		end := min(off+int64(len(p)), (c+1)*r.cs)
		if err := r.readChunk(c, at, p[n:n+int(end-at)]); err != nil {
			return n, err
		}
		n += int(end - at)
	}
	return n, eof
}

// readAhead starts loading, in the background, the base chunks of a read
// after its first chunk and, when the read continues a sequential run, the
// chunks up to readAheadBytes past it.
func (r *Reader) readAhead(off, length int64) {
	end := off + length
	prev := r.lastEnd.Swap(end)
	first, last := off/r.cs+1, (end-1)/r.cs
	if d := off - prev; d >= -readAheadBytes && d <= readAheadBytes && prev > 0 {
		ahead := min(int64(readAheadBytes), r.d.s.opts.CacheSize/4)
		last = (min(end+ahead, r.size) - 1) / r.cs
	}
	for c := first; c <= last; c++ {
		if covered(r.ov[c], c*r.cs, min((c+1)*r.cs, r.size)) {
			continue
		}
		e, err := r.ref(c)
		if err != nil {
			return // the demand read reports it
		}
		r.d.s.prefetch(e.h)
		if e.delta {
			r.d.s.prefetch(e.base)
		}
	}
}

// readChunk fills dst with the disk bytes at off, all inside chunk c.
func (r *Reader) readChunk(c, off int64, dst []byte) error {
	hi := off + int64(len(dst))
	ps := r.ov[c]
	if !covered(ps, off, hi) {
		e, err := r.ref(c)
		if err != nil {
			return err
		}
		if err := r.d.s.readEntry(r.ctx, e, off-c*r.cs, dst); err != nil {
			return err
		}
	}
	for _, p := range ps {
		lo, e := max(p.off, off), min(p.end(), hi)
		if lo >= e {
			continue
		}
		part := dst[lo-off : e-off]
		if p.zero {
			clear(part)
			continue
		}
		if p.stored {
			content, err := r.d.s.getChunk(r.ctx, p.hash)
			if err != nil {
				return err
			}
			n := 0
			if start := lo - c*r.cs; start < int64(len(content)) {
				n = copy(part, content[start:])
			}
			clear(part[n:])
			continue
		}
		if err := r.d.j.readAt(p.seg, part, p.pos+(lo-p.off)); err != nil {
			if errors.Is(err, io.EOF) {
				return corrupt(p.seg.path, fmt.Errorf("journal record at %d is truncated", p.pos))
			}
			return fmt.Errorf("read journal segment: %w", err)
		}
	}
	return nil
}

// Extents reports which parts of [off, off+length) hold data and which
// read as zeros, in order, adjacent extents of the same kind merged. Data
// extents may contain zeros; Zero extents never contain anything else.
func (r *Reader) Extents(off, length int64) ([]Extent, error) {
	if r.closed() {
		return nil, ErrClosed
	}
	if off < 0 || length < 0 || off > r.size || length > r.size-off {
		return nil, fmt.Errorf("extents of %d bytes at %d of a %d-byte disk: %w", length, off, r.size, ErrOutOfRange)
	}
	var out []Extent
	emit := func(e Extent) {
		if e.Length <= 0 {
			return
		}
		if n := len(out); n > 0 && out[n-1].Zero == e.Zero && out[n-1].Offset+out[n-1].Length == e.Offset {
			out[n-1].Length += e.Length
			return
		}
		out = append(out, e)
	}
	end := off + length
	for at := off; at < end; {
		c := at / r.cs
		hi := min(end, (c+1)*r.cs)
		ps := r.ov[c]
		baseZero := true
		if !covered(ps, at, hi) {
			e, err := r.ref(c)
			if err != nil {
				return nil, err
			}
			baseZero = e.isZero()
		}
		pos := at
		for _, p := range ps {
			lo, e := max(p.off, at), min(p.end(), hi)
			if lo >= e {
				continue
			}
			emit(Extent{Offset: pos, Length: lo - pos, Zero: baseZero})
			emit(Extent{Offset: lo, Length: e - lo, Zero: p.zero})
			pos = e
		}
		emit(Extent{Offset: pos, Length: hi - pos, Zero: baseZero})
		at = hi
	}
	return out, nil
}
