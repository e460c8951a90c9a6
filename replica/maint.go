package replica

import (
	"context"
	"errors"
	"fmt"
	"io"
	"runtime"
	"sort"
	"strings"
	"sync"

	"github.com/ferrymigrate/ferry/replica/backend"
)

// GCStats reports what a garbage collection did.
type GCStats struct {
	Maps       int   // block maps marked from
	Chunks     int   // chunk objects (data and pages) found
	Deleted    int   // chunk objects deleted
	FreedBytes int64 // bytes of deleted objects
}

// GC deletes every chunk that no block map and no journal record
// references (mark and sweep). Writes continue meanwhile: chunks written
// directly by ingest hold journal references (Store.jrefs) from their
// dedup check until their record leaves the journal, and GC skips them;
// folds wait until GC is done, so no fold can reference a chunk GC
// deletes. A block map that cannot be read stops GC before anything is
// deleted.
func (s *Store) GC(ctx context.Context) (GCStats, error) {
	s.gcMu.Lock()
	defer s.gcMu.Unlock()
	var st GCStats
	marked := map[Hash]bool{}
	var maps []string
	if err := s.be.List(ctx, "maps/", func(name string, _ int64) error {
		maps = append(maps, name)
		return nil
	}); err != nil {
		return st, fmt.Errorf("gc: list maps: %w", err)
	}
	for _, name := range maps {
		m, err := s.readMap(ctx, name)
		if errors.Is(err, backend.ErrNotFound) {
			// Pruned since the listing (prunes do not wait for GC): no
			// snapshot, reader or window position needed it.
			continue
		}
		if err != nil {
			return st, fmt.Errorf("gc: %w", err)
		}
		st.Maps++
		for _, p := range m.pages {
			if p.IsZero() || marked[p] {
				continue
			}
			entries, err := s.readPage(ctx, p)
			if err != nil {
				return st, fmt.Errorf("gc: map %s: %w", name, err)
			}
			marked[p] = true
			for _, e := range entries {
				marked[e.h] = true
				if e.delta {
					marked[e.base] = true
				}
			}
		}
	}
	type obj struct {
		h    Hash
		size int64
	}
	var sweep []obj
	if err := s.be.List(ctx, ChunkPrefix, func(name string, size int64) error {
		h, ok := parseChunkName(name)
		if !ok {
			return nil
		}
		st.Chunks++
		if !marked[h] {
			sweep = append(sweep, obj{h, size})
		}
		return nil
	}); err != nil {
		return st, fmt.Errorf("gc: list chunks: %w", err)
	}
	for _, o := range sweep {
		// chunkMu is held across the delete: an ingest that finds the
		// chunk stored takes its journal reference under chunkMu, so it
		// either sees the chunk gone (and stores it again) or keeps it.
		s.chunkMu.Lock()
		if s.jrefs[o.h] > 0 || s.inflight[o.h] != nil {
			s.chunkMu.Unlock()
			continue
		}
		delete(s.known, o.h)
		s.cache.remove(o.h)
		err := s.be.Delete(ctx, chunkName(o.h))
		s.chunkMu.Unlock()
		if err != nil {
			return st, fmt.Errorf("gc: %w", err)
		}
		st.Deleted++
		st.FreedBytes += o.size
	}
	return st, nil
}

func (s *Store) readMap(ctx context.Context, name string) (*blockMap, error) {
	raw, err := s.getSealed(ctx, name, kindMap)
	if err != nil {
		return nil, err
	}
	m, err := decodeMap(raw)
	if err != nil {
		return nil, corrupt(name, err)
	}
	if !strings.HasSuffix(name, fmt.Sprintf("/%016x", m.seq)) {
		return nil, corrupt(name, errors.New("map does not match its name"))
	}
	return m, nil
}

func (s *Store) readPage(ctx context.Context, h Hash) ([]entry, error) {
	raw, err := s.getChunk(ctx, h)
	if err != nil {
		return nil, err
	}
	entries, err := decodePage(raw)
	if err != nil {
		return nil, corrupt(chunkName(h), err)
	}
	return entries, nil
}

// checkPatch reads the patch chunk h and checks its encoding.
func (s *Store) checkPatch(ctx context.Context, h Hash) error {
	raw, err := s.getChunk(ctx, h)
	if err != nil {
		return err
	}
	if _, err := decodePatch(raw, s.cfg.ChunkSize); err != nil {
		return fmt.Errorf("delta patch: %w", err)
	}
	return nil
}

// Problem is one damaged or missing object found by Verify.
type Problem struct {
	Object string // backend object name or journal segment path
	Err    error
}

func (p Problem) String() string { return p.Object + ": " + p.Err.Error() }

// Report is the result of Verify.
type Report struct {
	Chunks    int   // chunk objects (data and pages) checked
	Bytes     int64 // bytes of chunk objects read
	Maps      int
	Snapshots int
	Disks     int
	Segments  int // journal segments checked
	// Unreferenced counts sound chunks that no block map, page and
	// journal record references: garbage, which GC deletes. Not a
	// problem; exact only while nothing writes (a chunk stored during
	// Verify may be counted), so an offline check right after GC must
	// find none.
	Unreferenced int
	Problems     []Problem
}

// OK reports whether Verify found no problems.
func (r Report) OK() bool { return len(r.Problems) == 0 }

// Verify scrubs the whole store: every chunk decrypts, decompresses and
// hashes to its name; every block map, page, snapshot and disk object
// decodes; every chunk a map references exists and is sound; every durable
// journal record checks out. Problems are reported by object name; the
// error is for failures to run at all (e.g. the backend cannot list).
func (s *Store) Verify(ctx context.Context) (Report, error) {
	s.gcMu.RLock()
	defer s.gcMu.RUnlock()
	var rep Report
	var mu sync.Mutex
	problem := func(obj string, err error) {
		mu.Lock()
		defer mu.Unlock()
		rep.Problems = append(rep.Problems, Problem{Object: obj, Err: err})
	}
	// Maps are listed before chunks: every chunk a listed map references
	// was stored before the map, hence before the chunk listing.
	var maps, snaps, disks []string
	for _, l := range []struct {
		prefix string
		out    *[]string
	}{{"maps/", &maps}, {"snapshots/", &snaps}, {"disks/", &disks}} {
		if err := s.be.List(ctx, l.prefix, func(name string, _ int64) error {
			*l.out = append(*l.out, name)
			return nil
		}); err != nil {
			return rep, fmt.Errorf("verify: list %s: %w", l.prefix, err)
		}
	}
	// A backend that keeps objects in containers (fs pack files) names
	// the containers it could not read: the objects in them are missing
	// below, and this says why.
	if d, ok := s.be.(interface{ Damaged() map[string]error }); ok {
		for name, err := range d.Damaged() {
			problem(name, fmt.Errorf("unreadable, the objects it holds are missing: %w", err))
		}
	}
	var chunks []Hash
	if err := s.be.List(ctx, ChunkPrefix, func(name string, _ int64) error {
		h, ok := parseChunkName(name)
		if !ok {
			problem(name, errors.New("not a chunk name"))
			return nil
		}
		chunks = append(chunks, h)
		return nil
	}); err != nil {
		return rep, fmt.Errorf("verify: list chunks: %w", err)
	}
	good := make(map[Hash]bool, len(chunks))
	work := make(chan Hash)
	var wg sync.WaitGroup
	for w := 0; w < runtime.GOMAXPROCS(0)+2; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for h := range work {
				obj, err := s.be.Get(ctx, chunkName(h))
				if err != nil {
					if errors.Is(err, backend.ErrNotFound) {
						continue // deleted since the listing
					}
					problem(chunkName(h), err)
					continue
				}
				_, err = s.sl.decodeChunk(h, obj)
				mu.Lock()
				rep.Chunks++
				rep.Bytes += int64(len(obj))
				if err == nil {
					good[h] = true
				}
				mu.Unlock()
				if err != nil {
					problem(chunkName(h), err)
				}
			}
		}()
	}
	for _, h := range chunks {
		if ctx.Err() != nil {
			break
		}
		work <- h
	}
	close(work)
	wg.Wait()
	if err := ctx.Err(); err != nil {
		return rep, err
	}
	gone := func(name string) bool {
		_, err := s.be.Get(ctx, name)
		return errors.Is(err, backend.ErrNotFound)
	}
	mapSet := map[string]bool{}
	pagesOK := map[Hash]bool{}
	patchOK := map[Hash]bool{}
	used := map[Hash]bool{}
	for _, name := range maps {
		m, err := s.readMap(ctx, name)
		if err != nil {
			if !errors.Is(err, backend.ErrNotFound) {
				problem(name, err)
			}
			continue
		}
		rep.Maps++
		mapSet[name] = true
		for _, p := range m.pages {
			if p.IsZero() || pagesOK[p] {
				continue
			}
			used[p] = true
			if !good[p] {
				problem(name, fmt.Errorf("page %s is missing or corrupt", chunkName(p)))
				continue
			}
			entries, err := s.readPage(ctx, p)
			if err != nil {
				problem(chunkName(p), err)
				continue
			}
			ok := true
			for _, e := range entries {
				for _, h := range []Hash{e.h, e.base} {
					used[h] = true
					if !h.IsZero() && !good[h] {
						ok = false
						problem(name, fmt.Errorf("chunk %s is missing or corrupt", chunkName(h)))
					}
				}
				if e.delta && good[e.h] && !patchOK[e.h] {
					if err := s.checkPatch(ctx, e.h); err != nil {
						ok = false
						problem(chunkName(e.h), err)
					} else {
						patchOK[e.h] = true
					}
				}
			}
			pagesOK[p] = ok
		}
	}
	for _, name := range snaps {
		info, err := s.readSnapshot(ctx, name)
		if err != nil {
			if !errors.Is(err, backend.ErrNotFound) {
				problem(name, err)
			}
			continue
		}
		rep.Snapshots++
		if mn := mapName(info.Disk, info.Seq); !mapSet[mn] && !gone(name) {
			problem(name, fmt.Errorf("block map %s is missing or corrupt", mn))
		}
	}
	for _, name := range disks {
		if _, err := s.getSealed(ctx, name, kindDisk); err != nil {
			problem(name, err)
			continue
		}
		rep.Disks++
	}
	for _, d := range s.Disks() {
		n, probs := d.j.verify()
		rep.Segments += n
		for _, p := range probs {
			problem(p.Object, p.Err)
		}
		// Chunks the journal references directly must exist and be sound.
		d.j.mu.Lock()
		type ref struct {
			h   Hash
			seg string
		}
		var refs []ref
		for _, r := range d.j.recs {
			for _, h := range r.hashes {
				used[h] = true
				if !h.IsZero() && !good[h] {
					refs = append(refs, ref{h, r.seg.path})
				}
			}
		}
		d.j.mu.Unlock()
		for _, r := range refs {
			if good[r.h] {
				continue
			}
			obj, err := s.be.Get(ctx, chunkName(r.h))
			if err == nil {
				_, err = s.sl.decodeChunk(r.h, obj)
			}
			if err != nil {
				problem(r.seg, fmt.Errorf("chunk %s is missing or corrupt: %w", chunkName(r.h), err))
				continue
			}
			good[r.h] = true // stored after the listing
		}
	}
	for _, h := range chunks {
		if good[h] && !used[h] {
			rep.Unreferenced++
		}
	}
	sort.Slice(rep.Problems, func(i, j int) bool { return rep.Problems[i].Object < rep.Problems[j].Object })
	return rep, nil
}

// verify re-reads every durable record of every segment and checks it.
func (j *journal) verify() (int, []Problem) {
	j.mu.Lock()
	type segCheck struct {
		s    *segment
		size int64
	}
	var segs []segCheck
	for _, s := range j.segs {
		s.refs++
		segs = append(segs, segCheck{s, s.size})
	}
	j.mu.Unlock()
	var probs []Problem
	buf := make([]byte, recHeaderSize+maxExtent)
	for _, sc := range segs {
		if p := j.verifySegment(sc.s, sc.size, buf); p != nil {
			probs = append(probs, *p)
		}
	}
	j.mu.Lock()
	for _, sc := range segs {
		j.unrefLocked(sc.s)
	}
	j.mu.Unlock()
	return len(segs), probs
}

// verifySegment decodes every record of s's first size bytes.
func (j *journal) verifySegment(s *segment, size int64, buf []byte) *Problem {
	f, err := j.files.acquire(s)
	if err != nil {
		return &Problem{s.path, err}
	}
	defer j.files.release(s)
	sr := io.NewSectionReader(f, 0, size)
	var hdr [segHeaderSize]byte
	if _, err := io.ReadFull(sr, hdr[:]); err != nil || string(hdr[:8]) != segMagic {
		return &Problem{s.path, errors.New("bad segment header")}
	}
	pos := int64(segHeaderSize)
	for pos < size {
		h := buf[:recHeaderSize]
		if _, err := sr.ReadAt(h, pos); err != nil {
			return &Problem{s.path, fmt.Errorf("record at %d of %d: %w", pos, size, err)}
		}
		_, total, err := decodeRecordHeader(h)
		if err == nil && total > recHeaderSize {
			_, err = sr.ReadAt(buf[recHeaderSize:total], pos+recHeaderSize)
		}
		if err == nil {
			_, _, _, err = decodeRecord(buf[:total])
		}
		if err != nil {
			return &Problem{s.path, fmt.Errorf("record at %d: %w", pos, err)}
		}
		pos += int64(total)
	}
	return nil
}

// DiskUsage is one disk's share of the store.
type DiskUsage struct {
	Disk string
	// Size is the disk's logical size.
	Size int64
	// Allocated is the logical bytes of non-zero chunks in the newest block map.
	Allocated int64
	// Referenced is the stored (compressed, encrypted) bytes of the distinct
	// chunks any of the disk's block maps references; chunks shared with
	// other disks count for each of them.
	Referenced int64
	// Snapshots is the number of snapshots.
	Snapshots int
	// JournalBytes is the size of the disk's journal on the staging directory.
	JournalBytes int64
}

// Usage is the store's space accounting.
type Usage struct {
	Disks []DiskUsage
	// LogicalBytes is the sum of the disks' sizes.
	LogicalBytes int64
	// StoredBytes is the size of all chunk objects: what the store really
	// uses after deduplication and compression.
	StoredBytes int64
	// Chunks is the number of chunk objects.
	Chunks int
}

// Usage reports logical and stored bytes per disk and for the store. It
// reads every block map and page, so it costs about as much as a GC mark.
func (s *Store) Usage(ctx context.Context) (Usage, error) {
	var u Usage
	s.chunkMu.Lock()
	u.Chunks = len(s.known)
	for _, n := range s.known {
		u.StoredBytes += n
	}
	sizes := make(map[Hash]int64, len(s.known))
	for h, n := range s.known {
		sizes[h] = n
	}
	s.chunkMu.Unlock()
	for _, d := range s.Disks() {
		du := DiskUsage{Disk: d.id, Size: d.Size(), Snapshots: len(d.Snapshots()), JournalBytes: d.j.bytes()}
		u.LogicalBytes += du.Size
		d.mu.Lock()
		maps := append([]uint64(nil), d.maps...)
		d.mu.Unlock()
		seen := map[Hash]bool{}
		for i, seq := range maps {
			m, err := d.root(ctx, seq)
			if err != nil {
				if !d.hasMap(seq) {
					continue // pruned meanwhile
				}
				return u, fmt.Errorf("usage of disk %s: %w", d.id, err)
			}
			for _, p := range m.pages {
				if p.IsZero() {
					continue
				}
				if !seen[p] {
					seen[p] = true
					du.Referenced += sizes[p]
				}
				entries, err := s.readPage(ctx, p)
				if err != nil {
					return u, fmt.Errorf("usage of disk %s: %w", d.id, err)
				}
				for _, e := range entries {
					if e.isZero() {
						continue
					}
					if i == len(maps)-1 {
						du.Allocated += int64(s.cfg.ChunkSize)
					}
					for _, h := range []Hash{e.h, e.base} {
						if !h.IsZero() && !seen[h] {
							seen[h] = true
							du.Referenced += sizes[h]
						}
					}
				}
			}
			if i == len(maps)-1 {
				du.Allocated = min(du.Allocated, m.size)
			}
		}
		u.Disks = append(u.Disks, du)
	}
	return u, nil
}
