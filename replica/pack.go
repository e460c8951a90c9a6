package replica

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"sync"

	"github.com/ferrymigrate/ferry/replica/backend"
)

// Pack files (format 3). Chunks are not stored one object each but
// appended, sealed exactly as a loose chunk object would be (the AEAD's
// additional data is the chunk's name, not the pack's, so a sealed chunk
// can be copied to another pack unchanged), to a pack object
// "packs/<hh>/<id>"; an index object "index/<id>" (sealed, kind
// kindIndex) lists the chunks of pack <id> with their offsets and lengths.
// A batch of chunks (one group commit, one fold) fills one pack per
// packTarget bytes; the packs are made durable first, their indexes
// second, so an index never names a pack that is not complete and
// durable. A pack without an index (a crash between the two, an aborted
// batch) holds nothing anyone references; GC deletes it.

const (
	// packTarget is the size at which a pack is closed and a new one started.
	packTarget = 16 << 20
	indexMagic = "FIX1"
	// indexHeaderSize: magic, pack size u64, entry count u32.
	indexHeaderSize = 4 + 8 + 4
	// indexEntrySize: hash, offset u64, length u32.
	indexEntrySize = 32 + 8 + 4
	// packBufCap is the capacity of a pack buffer: packTarget plus the
	// largest sealed chunk (4 MiB of content, envelope and payload header).
	packBufCap = packTarget + 4<<20 + 64
	// maxPackSize bounds the pack size an index may claim.
	maxPackSize = 1 << 32
)

// indexEntry is one chunk of a pack.
type indexEntry struct {
	h    Hash
	off  int64
	size int64 // bytes of the sealed chunk
}

// packInfo is a durable pack and its index.
type packInfo struct {
	id      string // 32 hex digits
	size    int64
	entries []indexEntry // ascending offsets
}

// chunkLoc says where a stored chunk's sealed object is.
type chunkLoc struct {
	pack *packInfo // nil: a loose object chunks/<hh>/<hash> (format 1 and 2)
	off  int64
	size int64
}

func packName(id string) string  { return "packs/" + id[:2] + "/" + id }
func indexName(id string) string { return "index/" + id }

func newPackID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// validPackID reports whether id is 32 lower-case hex digits.
func validPackID(id string) bool {
	if len(id) != 32 {
		return false
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}

// parsePackName returns the id of a pack object name.
func parsePackName(name string) (string, bool) {
	const p = "packs/xx/"
	if len(name) != len(p)+32 || name[:6] != "packs/" || name[8] != '/' {
		return "", false
	}
	id := name[len(p):]
	return id, validPackID(id) && name[6:8] == id[:2]
}

// encodeIndex encodes a pack index:
//
//	"FIX1" | pack size u64 | entry count u32 |
//	entry count × (chunk hash 32 | offset u64 | length u32)
//
// all little endian, entries in ascending, non-overlapping offset order.
func encodeIndex(size int64, entries []indexEntry) []byte {
	b := make([]byte, indexHeaderSize, indexHeaderSize+indexEntrySize*len(entries))
	copy(b, indexMagic)
	binary.LittleEndian.PutUint64(b[4:], uint64(size))
	binary.LittleEndian.PutUint32(b[12:], uint32(len(entries)))
	for _, e := range entries {
		b = append(b, e.h[:]...)
		b = binary.LittleEndian.AppendUint64(b, uint64(e.off))
		b = binary.LittleEndian.AppendUint32(b, uint32(e.size))
	}
	return b
}

// decodeIndex decodes and checks a pack index: every entry is a non-zero
// hash whose bytes lie inside the pack, after the previous entry's.
func decodeIndex(b []byte) (int64, []indexEntry, error) {
	if len(b) < indexHeaderSize || string(b[:4]) != indexMagic {
		return 0, nil, errors.New("bad index header")
	}
	size := binary.LittleEndian.Uint64(b[4:])
	n := binary.LittleEndian.Uint32(b[12:])
	if size > maxPackSize {
		return 0, nil, fmt.Errorf("pack size %d exceeds %d", size, maxPackSize)
	}
	if uint64(len(b)-indexHeaderSize) != uint64(n)*indexEntrySize {
		return 0, nil, fmt.Errorf("index of %d bytes for %d entries", len(b), n)
	}
	entries := make([]indexEntry, n)
	end := uint64(0)
	for i := range entries {
		p := b[indexHeaderSize+i*indexEntrySize:]
		e := &entries[i]
		copy(e.h[:], p[:32])
		off := binary.LittleEndian.Uint64(p[32:])
		ln := uint64(binary.LittleEndian.Uint32(p[40:]))
		if e.h.IsZero() {
			return 0, nil, fmt.Errorf("entry %d: zero hash", i)
		}
		if ln == 0 || off < end || off > size || ln > size-off {
			return 0, nil, fmt.Errorf("entry %d: %d bytes at %d, outside the %d-byte pack or overlapping", i, ln, off, size)
		}
		e.off, e.size = int64(off), int64(ln)
		end = off + ln
	}
	return int64(size), entries, nil
}

// packBuf is a pack being filled in memory by a chunkBatch.
type packBuf struct {
	info    *packInfo
	bp      *[]byte        // pooled buffer; *bp holds the pack so far
	writers sync.WaitGroup // fills of reserved space in progress
}

var packPool = sync.Pool{New: func() any { return new([]byte) }}

func newPackBuf() *packBuf {
	bp := packPool.Get().(*[]byte)
	if cap(*bp) < packBufCap {
		// A pack closes at the first chunk that takes it to packTarget.
		*bp = make([]byte, 0, packBufCap)
	}
	*bp = (*bp)[:0]
	return &packBuf{info: &packInfo{id: newPackID()}, bp: bp}
}

func (p *packBuf) release() {
	if p.bp != nil {
		packPool.Put(p.bp)
		p.bp = nil
	}
}

// addObject appends the sealed chunk obj of h to the batch's current pack.
func (cb *chunkBatch) addObject(ctx context.Context, h Hash, obj []byte) error {
	return cb.addSealed(ctx, h, len(obj), func(dst []byte) { copy(dst, obj) })
}

// addSealed reserves n bytes for the sealed chunk h in the batch's
// current pack and calls fill to write them there, outside the batch's
// lock, so chunks are sealed in parallel straight into the pack. The pack
// is staged in the backend batch once it is full and every fill is done.
func (cb *chunkBatch) addSealed(ctx context.Context, h Hash, n int, fill func(dst []byte)) error {
	if n > packBufCap-packTarget {
		return fmt.Errorf("sealed chunk of %d bytes is too large for a pack", n)
	}
	cb.mu.Lock()
	if cb.cur == nil {
		cb.cur = newPackBuf()
		cb.s.chunkMu.Lock()
		cb.s.pending[cb.cur.info.id] = true
		cb.s.chunkMu.Unlock()
	}
	p := cb.cur
	off := len(*p.bp)
	*p.bp = (*p.bp)[:off+n]
	dst := (*p.bp)[off : off+n : off+n]
	p.info.entries = append(p.info.entries, indexEntry{h: h, off: int64(off), size: int64(n)})
	cb.staged[h] = chunkLoc{pack: p.info, off: int64(off), size: int64(n)}
	p.writers.Add(1)
	full := len(*p.bp) >= packTarget
	if full {
		cb.cur = nil
		cb.flushing.Add(1)
	}
	cb.mu.Unlock()
	fill(dst)
	p.writers.Done()
	if !full {
		return nil
	}
	defer cb.flushing.Done()
	p.writers.Wait()
	return cb.stagePack(ctx, p)
}

// stagePack puts a complete pack into the backend batch (on fs: written,
// not yet synced) and remembers it for its index.
func (cb *chunkBatch) stagePack(ctx context.Context, p *packBuf) error {
	p.info.size = int64(len(*p.bp))
	err := cb.b.Put(ctx, packName(p.info.id), *p.bp)
	p.release()
	cb.mu.Lock()
	cb.packs = append(cb.packs, p.info)
	cb.mu.Unlock()
	return err
}

// commitPacks makes the batch's packs and their indexes durable, in one
// backend batch: the pack is staged before its index (backends without a
// batch put them in that order), and an index whose pack a crash left
// absent or short is dropped at Open (see loadIndexes).
func (cb *chunkBatch) commitPacks(ctx context.Context) error {
	cb.flushing.Wait()
	cb.mu.Lock()
	last := cb.cur
	cb.cur = nil
	cb.mu.Unlock()
	if last != nil {
		last.writers.Wait()
		if err := cb.stagePack(ctx, last); err != nil {
			cb.b.Abort()
			return err
		}
	}
	for _, p := range cb.packs {
		name := indexName(p.id)
		if err := cb.b.Put(ctx, name, cb.s.sl.seal(name, kindIndex, encodeIndex(p.size, p.entries))); err != nil {
			cb.b.Abort()
			return err
		}
	}
	return cb.b.Commit(ctx)
}

// readObject returns the sealed object of chunk h from wherever it is
// stored. A chunk moved by a repack while being read is read again from
// its new place.
func (s *Store) readObject(ctx context.Context, h Hash) ([]byte, error) {
	for try := 0; ; try++ {
		s.chunkMu.Lock()
		loc, ok := s.known[h]
		s.chunkMu.Unlock()
		if !ok || loc.pack == nil {
			obj, err := s.be.Get(ctx, chunkName(h))
			if err != nil {
				if errors.Is(err, backend.ErrNotFound) {
					return nil, corrupt(chunkName(h), errors.New("missing"))
				}
				return nil, fmt.Errorf("read chunk: %w", err)
			}
			return obj, nil
		}
		name := packName(loc.pack.id)
		obj, err := backend.GetRange(ctx, s.be, name, loc.off, loc.size)
		switch {
		case err == nil:
			return obj, nil
		case errors.Is(err, backend.ErrNotFound):
			s.chunkMu.Lock()
			now, ok := s.known[h]
			s.chunkMu.Unlock()
			if ok && now != loc && try < 3 {
				continue // repacked meanwhile
			}
			return nil, corrupt(chunkName(h), fmt.Errorf("missing: pack %s not found", name))
		case errors.Is(err, backend.ErrOutOfRange):
			return nil, corrupt(chunkName(h), fmt.Errorf("pack %s: %w", name, err))
		default:
			return nil, fmt.Errorf("read chunk %s: %w", chunkName(h), err)
		}
	}
}

// loadIndexes reads every pack index into s.known and s.packs (at Open).
// An index that fails to read for another reason than damage stops Open.
// A damaged index is logged and skipped: its chunks read as missing
// (CorruptError naming them) and Verify names the index, but the rest of
// the store stays usable. An index whose pack is absent or shorter than
// it says is what a crash during a batch commit leaves (the index became
// durable, the pack did not); nothing references its chunks (the journal
// record or block map is written only after the commit), so it is
// deleted.
func (s *Store) loadIndexes(ctx context.Context) error {
	packSizes := map[string]int64{}
	if err := s.be.List(ctx, "packs/", func(name string, size int64) error {
		if id, ok := parsePackName(name); ok {
			packSizes[id] = size
		}
		return nil
	}); err != nil {
		return fmt.Errorf("list packs: %w", err)
	}
	var names []string
	if err := s.be.List(ctx, "index/", func(name string, _ int64) error {
		names = append(names, name)
		return nil
	}); err != nil {
		return fmt.Errorf("list pack indexes: %w", err)
	}
	packs := make([]*packInfo, len(names))
	err := parallelDo(ctx, len(names), 8, func(i int) error {
		p, err := s.readIndex(ctx, names[i])
		if errors.Is(err, ErrCorrupt) {
			s.opts.Logf("replica: skipping pack index: %v", err)
			return nil
		}
		packs[i] = p
		return err
	})
	if err != nil {
		return err
	}
	for _, p := range packs {
		if p == nil {
			continue
		}
		if size, ok := packSizes[p.id]; !ok || size < p.size {
			if err := s.be.Delete(ctx, indexName(p.id)); err != nil {
				return fmt.Errorf("delete index of an incomplete pack: %w", err)
			}
			s.opts.Logf("replica: deleted %s: its pack is missing or short (a crash during a commit)", indexName(p.id))
			continue
		}
		s.addPackLocked(p)
	}
	return nil
}

// readIndex reads and decodes the index object name.
func (s *Store) readIndex(ctx context.Context, name string) (*packInfo, error) {
	id := name[len("index/"):]
	if !validPackID(id) {
		return nil, corrupt(name, errors.New("not a pack index name"))
	}
	raw, err := s.getSealed(ctx, name, kindIndex)
	if err != nil {
		return nil, err
	}
	size, entries, err := decodeIndex(raw)
	if err != nil {
		return nil, corrupt(name, err)
	}
	return &packInfo{id: id, size: size, entries: entries}, nil
}

// addPackLocked records a durable pack's chunks as stored. Callers hold
// chunkMu (or own s exclusively).
func (s *Store) addPackLocked(p *packInfo) {
	s.packs[p.id] = p
	for _, e := range p.entries {
		if _, ok := s.known[e.h]; !ok {
			s.known[e.h] = chunkLoc{pack: p, off: e.off, size: e.size}
		}
	}
}

// parallelDo runs fn(0..n-1) on up to workers goroutines and returns the
// first error.
func parallelDo(ctx context.Context, n, workers int, fn func(i int) error) error {
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		first error
		next  int
	)
	for w := 0; w < min(n, workers); w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				mu.Lock()
				i := next
				next++
				stop := first != nil
				mu.Unlock()
				if i >= n || stop {
					return
				}
				err := ctx.Err()
				if err == nil {
					err = fn(i)
				}
				if err != nil {
					mu.Lock()
					if first == nil {
						first = err
					}
					mu.Unlock()
				}
			}
		}()
	}
	wg.Wait()
	return first
}
