package replica

import (
	"context"
	"errors"
	"fmt"
	"math/bits"
	"runtime"
	"slices"
	"sort"
	"sync"
)

// Fold turns every durable journal record not yet in a block map into
// chunks and publishes a new immutable block map at DurableSeq, then trims
// the journal to its window and drops block maps nothing needs. The store
// folds in the background; Fold lets a caller force it.
func (d *Disk) Fold(ctx context.Context) error {
	d.foldMu.Lock()
	defer d.foldMu.Unlock()
	if err := d.gone(); err != nil {
		return err
	}
	seq := d.DurableSeq()
	if seq > d.headSeq() {
		if err := d.foldLocked(ctx, seq); err != nil {
			return fmt.Errorf("fold disk %s: %w", d.id, err)
		}
		d.pending.Store(d.unfoldedBytes())
	}
	if err := d.tidyLocked(ctx); err != nil {
		return fmt.Errorf("fold disk %s: %w", d.id, err)
	}
	return nil
}

// hasMap reports whether a map at seq is published.
func (d *Disk) hasMap(seq uint64) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	_, ok := slices.BinarySearch(d.maps, seq)
	return ok
}

// foldLocked publishes the block map of the disk at seq. Callers hold foldMu.
func (d *Disk) foldLocked(ctx context.Context, seq uint64) error {
	if d.hasMap(seq) {
		return nil
	}
	s := d.s
	s.gcMu.RLock()
	defer s.gcMu.RUnlock()
	r, err := d.openAt(ctx, seq)
	if err != nil {
		return err
	}
	defer r.Close()

	dirty := make([]int64, 0, len(r.ov))
	for c := range r.ov {
		dirty = append(dirty, c)
	}
	sort.Slice(dirty, func(a, b int) bool { return dirty[a] < dirty[b] })
	// Every chunk and page of this fold goes into one batch that becomes
	// durable as a whole before the map that references it is published.
	cb := s.newChunkBatch()
	committed := false
	defer func() {
		if !committed {
			cb.abort()
		}
	}()
	refs, err := d.foldChunks(ctx, cb, r, dirty)
	if err != nil {
		return err
	}

	nChunks := numChunks(r.size, int(r.cs))
	pages := make([]Hash, (nChunks+pageEntries-1)/pageEntries)
	copy(pages, r.base.pages)
	for i := 0; i < len(dirty); {
		p := dirty[i] / pageEntries
		n := min(int64(pageEntries), nChunks-p*pageEntries)
		entries := make([]entry, n)
		if p < int64(len(r.base.pages)) && !r.base.pages[p].IsZero() {
			raw, err := s.getChunk(ctx, r.base.pages[p])
			if err != nil {
				return err
			}
			old, err := decodePage(raw)
			if err != nil {
				return corrupt(chunkName(r.base.pages[p]), err)
			}
			copy(entries, old)
		}
		for ; i < len(dirty) && dirty[i]/pageEntries == p; i++ {
			entries[dirty[i]%pageEntries] = refs[dirty[i]]
		}
		allZero := true
		for _, e := range entries {
			if !e.isZero() {
				allZero = false
				break
			}
		}
		pages[p] = Hash{}
		if !allZero {
			if pages[p], err = s.putChunk(ctx, cb, encodePage(entries)); err != nil {
				return err
			}
		}
	}
	m := &blockMap{
		seq: seq, size: r.size, chunkSize: int(r.cs), time: s.opts.Now().UnixNano(),
		crashBarrier: r.base.crashBarrier, appBarrier: r.base.appBarrier, pages: pages,
	}
	d.j.mu.Lock()
	for _, rec := range d.j.rangeLocked(r.base.seq, seq) {
		if rec.typ == recBarrier {
			m.crashBarrier = rec.seq
			if Consistency(rec.flag) == AppConsistent {
				m.appBarrier = rec.seq
			}
		}
	}
	d.j.mu.Unlock()
	committed = true
	if err := cb.commit(ctx); err != nil {
		return err
	}
	name := mapName(d.id, seq)
	if err := s.be.Put(ctx, name, s.sl.seal(name, kindMap, encodeMap(m))); err != nil {
		return backendErr("publish block map", err)
	}
	d.mu.Lock()
	i, _ := slices.BinarySearch(d.maps, seq)
	d.maps = slices.Insert(d.maps, i, seq)
	d.roots[seq] = m
	d.mu.Unlock()
	return nil
}

// foldChunks stores the content of the dirty chunks as r shows them, in
// parallel, and returns their entries.
func (d *Disk) foldChunks(ctx context.Context, cb *chunkBatch, r *Reader, dirty []int64) (map[int64]entry, error) {
	refs := make(map[int64]entry, len(dirty))
	var mu sync.Mutex
	var firstErr error
	work := make(chan int64)
	var wg sync.WaitGroup
	// Chunk puts wait on the backend (an fsync, a network round trip) far
	// longer than they compute, so run many more of them than there are CPUs.
	workers := min(len(dirty), max(32, 2*runtime.GOMAXPROCS(0)))
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			// Taken on the first chunk that must be read: most of a
			// fold's chunks are often linked or zero, and thousands of
			// disks fold at once on a busy server.
			var buf []byte
			defer func() {
				if buf != nil {
					d.s.foldBufs.Put(&buf)
				}
			}()
			for c := range work {
				n := min(r.cs, r.size-c*r.cs)
				h, err := d.foldChunk(ctx, cb, r, c, n, &buf)
				mu.Lock()
				if err != nil && firstErr == nil {
					firstErr = err
					cancel()
				}
				refs[c] = h
				mu.Unlock()
			}
		}()
	}
	for _, c := range dirty {
		if ctx.Err() != nil {
			break
		}
		work <- c
	}
	close(work)
	wg.Wait()
	if firstErr == nil && ctx.Err() != nil {
		firstErr = ctx.Err()
	}
	return refs, firstErr
}

// foldChunk stores chunk c (n bytes) as r shows it, reading it into *buf
// (taken from the store's pool here when nil; its old content is never
// read) unless it can be linked or is all zeros. When
// at most 1/maxDeltaFraction of its pages differ from its full chunk in
// the base map, only those pages are stored, as a delta over that chunk.
func (d *Disk) foldChunk(ctx context.Context, cb *chunkBatch, r *Reader, c, n int64, buf *[]byte) (entry, error) {
	if n <= 0 {
		return entry{}, errors.New("chunk past the end of the disk")
	}
	// A chunk last written whole by ingest is stored already: link it.
	if ps := r.ov[c]; len(ps) == 1 && ps[0].off == c*r.cs && ps[0].len == r.cs && n == r.cs {
		if ps[0].stored {
			return entry{h: ps[0].hash}, nil
		}
		if ps[0].zero {
			return entry{}, nil
		}
	}
	if *buf == nil {
		if p, ok := d.s.foldBufs.Get().(*[]byte); ok && int64(len(*p)) >= r.cs {
			*buf = *p
		} else {
			*buf = make([]byte, r.cs)
		}
	}
	b := (*buf)[:n]
	if e, ok, err := d.foldTouched(ctx, cb, r, c, b); ok || err != nil {
		return e, err
	}
	if err := r.readChunk(c, c*r.cs, b); err != nil {
		return entry{}, err
	}
	// The base of a delta is the chunk's full chunk in the base map or a
	// whole chunk an ingest record in the journal stored (an initial sync
	// followed by scattered writes before the first fold), whichever
	// differs from the content in fewer pages. Both are usually cached:
	// readChunk just read them. A zero full chunk (never written) is
	// diffed too: a few writes into an empty region store a few pages.
	old, err := r.ref(c)
	if err != nil {
		return entry{}, err
	}
	cands := []Hash{old.full()}
	for _, p := range r.ov[c] {
		if p.stored && !slices.Contains(cands, p.hash) {
			cands = append(cands, p.hash)
		}
	}
	best, bestChanged := Hash{}, -1
	var bestMap []byte
	for _, full := range cands {
		var base []byte
		if !full.IsZero() {
			if base, err = d.s.getChunk(ctx, full); err != nil {
				return entry{}, err
			}
		}
		bitmap, changed := diffPages(b, base)
		if bestChanged < 0 || changed < bestChanged {
			best, bestChanged, bestMap = full, changed, bitmap
		}
	}
	switch {
	case bestChanged == 0:
		return entry{h: best}, nil
	case bestChanged*maxDeltaFraction <= patchPages(len(b)):
		h, err := d.s.putChunk(ctx, cb, encodePatch(b, bestMap, bestChanged))
		return entry{h: h, base: best, delta: true}, err
	}
	h, err := d.s.putChunk(ctx, cb, b)
	return entry{h: h}, err
}

// foldTouched folds chunk c into b as a patch of the pages its journal
// writes touched (and an earlier patch's), without reading its full chunk,
// when every touched page is written whole and they are few enough for a
// patch. It reports false, having done nothing, otherwise. Reading and
// diffing the full chunk would also drop pages rewritten with the same
// bytes, but costs decrypting and decompressing a whole chunk per few
// changed pages: that was most of the fold after an incremental sync of
// scattered writes.
func (d *Disk) foldTouched(ctx context.Context, cb *chunkBatch, r *Reader, c int64, b []byte) (entry, bool, error) {
	ps := r.ov[c]
	if len(ps) == 0 {
		return entry{}, false, nil
	}
	pages := patchPages(len(b))
	bitmap := make([]byte, (pages+7)/8)
	changed := 0
	lo := c * r.cs
	for _, p := range ps {
		if p.stored {
			return entry{}, false, nil // a whole stored chunk may be the better base
		}
		first, last := (p.off-lo)/patchPage, (p.end()-lo-1)/patchPage
		for pg := first; pg <= last && pg < int64(pages); pg++ {
			if bitmap[pg/8]&(1<<(pg%8)) != 0 {
				continue
			}
			if !covered(ps, lo+pg*patchPage, lo+min((pg+1)*patchPage, int64(len(b)))) {
				return entry{}, false, nil
			}
			bitmap[pg/8] |= 1 << (pg % 8)
			changed++
		}
	}
	old, err := r.ref(c)
	if err != nil {
		return entry{}, false, err
	}
	var prev patch
	if old.delta {
		raw, err := d.s.getChunk(ctx, old.h)
		if err != nil {
			return entry{}, false, err
		}
		if prev, err = decodePatch(raw, d.s.cfg.ChunkSize); err != nil {
			return entry{}, false, corrupt(chunkName(old.h), err)
		}
		if prev.n != len(b) {
			return entry{}, false, nil // the disk was resized since
		}
		for i := range bitmap {
			changed += bits.OnesCount8(prev.bitmap[i] &^ bitmap[i])
			bitmap[i] |= prev.bitmap[i]
		}
	}
	if changed*maxDeltaFraction > pages {
		return entry{}, false, nil
	}
	if old.delta {
		prev.apply(b, 0)
	}
	for pg := 0; pg < pages; pg++ {
		if bitmap[pg/8]&(1<<(pg%8)) == 0 {
			continue
		}
		plo, phi := int64(pg*patchPage), min(int64((pg+1)*patchPage), int64(len(b)))
		if !covered(ps, lo+plo, lo+phi) {
			continue // an earlier patch's page, applied above
		}
		if err := r.readChunk(c, lo+plo, b[plo:phi]); err != nil {
			return entry{}, false, err
		}
	}
	h, err := d.s.putChunk(ctx, cb, encodePatch(b, bitmap, changed))
	return entry{h: h, base: old.full(), delta: true}, true, err
}

// tidyLocked trims the journal to its window and deletes block maps that
// no snapshot, reader or window position needs. Callers hold foldMu.
func (d *Disk) tidyLocked(ctx context.Context) error {
	head := d.headSeq()
	w := d.s.opts.Window
	n, through := d.j.trimPlan(head, w.MaxBytes, w.MaxAge)
	if n > 0 {
		// The mark goes first: after a crash the journal must never be
		// trusted to hold records it no longer has.
		d.mu.Lock()
		through = max(through, d.trimmed)
		d.mu.Unlock()
		if err := d.writeTrimmed(through); err != nil {
			return err
		}
		d.mu.Lock()
		d.trimmed = through
		d.mu.Unlock()
		if err := d.j.removeOldest(n); err != nil {
			return err
		}
	}
	return d.pruneMapsLocked(ctx)
}

// pruneMapsLocked deletes maps that are not the newest, not a snapshot's,
// not pinned by a reader and not usable as a base for reads inside the
// journal window. Callers hold foldMu.
func (d *Disk) pruneMapsLocked(ctx context.Context) error {
	d.mu.Lock()
	keep := map[uint64]bool{}
	for _, s := range d.snaps {
		keep[s.Seq] = true
	}
	var drop []uint64
	kept := d.maps[:0:0]
	for i, m := range d.maps {
		if i == len(d.maps)-1 || keep[m] || d.pins[m] > 0 || m >= d.trimmed {
			kept = append(kept, m)
			continue
		}
		drop = append(drop, m)
		delete(d.roots, m)
	}
	d.maps = kept
	d.mu.Unlock()
	for _, m := range drop {
		if err := d.s.be.Delete(ctx, mapName(d.id, m)); err != nil {
			return fmt.Errorf("delete block map: %w", err)
		}
	}
	return nil
}
