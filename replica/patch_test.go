package replica

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/bits"
	"math/rand/v2"
	"strings"
	"testing"
)

func TestPatchRoundTrip(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	base := randData(rng, 16*patchPage)
	withPages := func(b []byte, pages ...int) []byte {
		c := bytes.Clone(b)
		for _, p := range pages {
			c[p*patchPage+7] ^= 0xff
		}
		return c
	}
	short := base[:5*patchPage+100] // a chunk at the end of a disk
	for _, tc := range []struct {
		name          string
		content, base []byte
		changed       int
	}{
		{"equal", base, base, 0},
		{"one page", withPages(base, 3), base, 1},
		{"first and last", withPages(base, 0, 15), base, 2},
		{"short chunk, last page", withPages(short, 5), short, 1},
		{"zero base", append(make([]byte, 9*patchPage), base[:7*patchPage]...), nil, 7},
		{"shorter base, zeros past it", append(bytes.Clone(base[:4*patchPage]), make([]byte, 12*patchPage)...), base[:4*patchPage], 0},
		{"shorter base, data past it", withPages(append(bytes.Clone(base[:4*patchPage]), make([]byte, 12*patchPage)...), 9), base[:4*patchPage], 1},
		{"base shorter by part of a page", withPages(bytes.Clone(base[:3*patchPage]), 2), base[:2*patchPage+10], 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			bm, changed := diffPages(tc.content, tc.base)
			if changed != tc.changed {
				t.Fatalf("changed pages = %d, want %d", changed, tc.changed)
			}
			if changed == 0 {
				return
			}
			p, err := decodePatch(encodePatch(tc.content, bm, changed), 1<<20)
			if err != nil {
				t.Fatal(err)
			}
			for _, r := range [][2]int{{0, len(tc.content)}, {1, 5000}, {patchPage - 1, 2}, {len(tc.content) - 3, 3}} {
				dst := make([]byte, r[1])
				copy(dst, tc.base[min(r[0], len(tc.base)):])
				p.apply(dst, int64(r[0]))
				if want := tc.content[r[0] : r[0]+r[1]]; !bytes.Equal(dst, want) {
					t.Fatalf("apply at %d+%d: differs at byte %d", r[0], r[1], firstDiff(dst, want))
				}
			}
		})
	}
}

func TestDecodePatchErrors(t *testing.T) {
	good := encodePatch(bytes.Repeat([]byte{1}, 2*patchPage), []byte{0b01}, 1)
	for _, tc := range []struct {
		name string
		b    []byte
	}{
		{"empty", nil},
		{"bad magic", append([]byte("FDL2"), good[4:]...)},
		{"zero length", append([]byte("FDL1\x00\x00\x00\x00"), good[8:]...)},
		{"longer than a chunk", append([]byte("FDL1\x00\x00\x20\x00"), good[8:]...)},
		{"no bitmap", good[:8]},
		{"changes nothing", append(append([]byte{}, good[:8]...), 0)},
		{"bit past the chunk", append(append(append([]byte{}, good[:8]...), 0b101), good[9:]...)},
		{"truncated pages", good[:len(good)-1]},
		{"extra bytes", append(bytes.Clone(good), 0)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := decodePatch(tc.b, 1<<20); err == nil {
				t.Fatal("decodePatch accepted it")
			}
		})
	}
}

// chunkEntry returns the head map's entry for chunk c.
func chunkEntry(t *testing.T, d *Disk, c int64) entry {
	t.Helper()
	r, err := d.OpenHead(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	e, err := r.ref(c)
	if err != nil {
		t.Fatal(err)
	}
	return e
}

// TestFoldDeltas writes scattered 4 KiB blocks over folded data: the fold
// stores only the changed pages over the full chunk, later folds replace
// the patch (never a patch of a patch), past a quarter of the chunk's
// pages the chunk is stored whole again, and every state reads back,
// survives GC of the maps in between, verifies clean and reopens.
func TestFoldDeltas(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t)
	e.opts.SegmentSize = 1 // one segment per commit: trims drop the old records
	s := e.open(t)
	cs := int64(s.ChunkSize()) // 64 KiB: 16 pages, deltas up to 4
	const chunks = 4
	d, err := s.CreateDisk(ctx, "d", chunks*cs, 4096)
	if err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(7, 8))
	m := &model{b: make([]byte, chunks*cs)}
	seq := uint64(0)
	write := modelWriter(t, d, m, &seq)
	fold := func() {
		t.Helper()
		if err := d.Fold(ctx); err != nil {
			t.Fatal(err)
		}
		checkHead(t, d, m.b)
	}
	// Chunks 0-2 whole; chunk 3 never written.
	for c := int64(0); c < 3; c++ {
		write(c*cs, randData(rng, int(cs)))
	}
	fold()
	base := chunkEntry(t, d, 0)
	if base.delta || base.h.IsZero() {
		t.Fatalf("chunk 0 after a whole write = %+v, want a full chunk", base)
	}
	stored := func() int64 {
		u, err := s.Usage(ctx)
		if err != nil {
			t.Fatal(err)
		}
		return u.StoredBytes
	}
	before := stored()

	// Two scattered blocks in chunk 0, one in the empty chunk 3.
	write(1*4096, randData(rng, 4096))
	write(9*4096, randData(rng, 4096))
	write(3*cs+5*4096, randData(rng, 4096))
	fold()
	got := chunkEntry(t, d, 0)
	if !got.delta || got.base != base.h {
		t.Fatalf("chunk 0 after 2 scattered writes = %+v, want a delta over %s", got, base.h)
	}
	if z := chunkEntry(t, d, 3); !z.delta || !z.base.IsZero() {
		t.Fatalf("chunk 3 after 1 write = %+v, want a delta over zeros", z)
	}
	if grew := stored() - before; grew > 4*4096+2048 {
		t.Errorf("3 scattered 4 KiB writes grew the store by %d bytes, want about 12 KiB (no whole chunk)", grew)
	}
	seq++
	if err := d.Barrier(ctx, seq, CrashConsistent); err != nil {
		t.Fatal(err)
	}
	snap, err := d.Snapshot(ctx, SnapshotOptions{Consistency: CrashConsistent})
	if err != nil {
		t.Fatal(err)
	}
	atSnap := bytes.Clone(m.b)

	// A third block: the patch is replaced, still over the same base.
	write(12*4096, randData(rng, 4096))
	fold()
	if got := chunkEntry(t, d, 0); !got.delta || got.base != base.h {
		t.Fatalf("chunk 0 after 3 writes = %+v, want a delta over the same base", got)
	}
	// Writing a block back to the base's bytes removes it from the patch.
	write(12*4096, bytes.Clone(atSnap[12*4096:13*4096]))

	// Two more blocks: 4 of 16 pages differ, still a delta; then a fifth.
	write(14*4096, randData(rng, 4096))
	write(15*4096, randData(rng, 4096))
	fold()
	if got := chunkEntry(t, d, 0); !got.delta {
		t.Fatalf("chunk 0 with 4 of 16 pages changed = %+v, want a delta", got)
	}
	write(6*4096, randData(rng, 4096))
	fold()
	rebased := chunkEntry(t, d, 0)
	if rebased.delta || rebased.h == base.h {
		t.Fatalf("chunk 0 with 5 of 16 pages changed = %+v, want a new full chunk", rebased)
	}
	write(2*4096, randData(rng, 4096))
	fold()
	if got := chunkEntry(t, d, 0); !got.delta || got.base != rebased.h {
		t.Fatalf("chunk 0 after the rebase and 1 write = %+v, want a delta over the new full chunk", got)
	}

	// GC with only the head map and the snapshot's left: the snapshot's
	// delta base and the head's both survive.
	if _, err := s.GC(ctx); err != nil {
		t.Fatal(err)
	}
	r, err := d.OpenSnapshot(ctx, snap.ID)
	if err != nil {
		t.Fatal(err)
	}
	if b := readAll(t, r); !bytes.Equal(b, atSnap) {
		t.Fatalf("snapshot after GC differs at byte %d", firstDiff(b, atSnap))
	}
	r.Close()
	checkHead(t, d, m.b)
	rep, err := s.Verify(ctx)
	if err != nil || !rep.OK() {
		t.Fatalf("Verify = %v, %v", rep.Problems, err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s = e.open(t)
	defer s.Close()
	if d, err = s.Disk("d"); err != nil {
		t.Fatal(err)
	}
	checkHead(t, d, m.b)
	ext, err := mustReader(t, d).Extents(3*cs, cs)
	if err != nil {
		t.Fatal(err)
	}
	if len(ext) != 1 || ext[0].Zero {
		t.Errorf("extents of chunk 3 (a delta over zeros) = %+v, want one data extent", ext)
	}

	// A delta whose base is gone is reported by Verify and by reads,
	// naming the base, never read as zeros.
	head := chunkEntry(t, d, 0)
	if err := e.be.Delete(ctx, chunkName(head.base)); err != nil {
		t.Fatal(err)
	}
	s.cache.remove(head.base)
	rep, err = s.Verify(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if rep.OK() || !bytes.Contains([]byte(rep.Problems[0].String()), []byte(head.base.String())) {
		t.Errorf("Verify with a delta's base deleted = %v, want a problem naming %s", rep.Problems, head.base)
	}
	_, err = mustReader(t, d).ReadAt(make([]byte, 4096), 0)
	var ce *CorruptError
	if !errors.As(err, &ce) || !bytes.Contains([]byte(err.Error()), []byte(head.base.String())) {
		t.Errorf("read of a delta whose base is gone = %v, want a CorruptError naming %s", err, head.base)
	}
}

func mustReader(t *testing.T, d *Disk) *Reader {
	t.Helper()
	r, err := d.OpenHead(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	return r
}

// TestFormatUpgrade: an older store is upgraded to the current format at
// Open (so older versions refuse it once it may hold delta pages or S2
// chunks); a newer one is refused.
func TestFormatUpgrade(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct {
		version int
		wantErr bool
	}{{1, false}, {2, false}, {3, false}, {formatVersion, false}, {formatVersion + 1, true}} {
		e := newEnv(t)
		e.open(t).Close()
		raw, err := e.be.Get(ctx, "config")
		if err != nil {
			t.Fatal(err)
		}
		var cfg map[string]any
		if err := json.Unmarshal(raw, &cfg); err != nil {
			t.Fatal(err)
		}
		cfg["version"] = tc.version
		raw, _ = json.Marshal(cfg)
		if err := e.be.Put(ctx, "config", raw); err != nil {
			t.Fatal(err)
		}
		s, err := Open(ctx, e.opts)
		if tc.wantErr {
			if err == nil || !strings.Contains(err.Error(), fmt.Sprintf("version %d", tc.version)) {
				t.Errorf("open a format %d store: %v, want an error naming the version", tc.version, err)
			}
			if err == nil {
				s.Close()
			}
			continue
		}
		if err != nil {
			t.Fatalf("open a format %d store: %v", tc.version, err)
		}
		s.Close()
		raw, _ = e.be.Get(ctx, "config")
		if err := json.Unmarshal(raw, &cfg); err != nil || cfg["version"] != float64(formatVersion) {
			t.Errorf("format %d store after Open: version %v, want %d", tc.version, cfg["version"], formatVersion)
		}
	}
}

// TestFoldTouched: a fold whose journal writes cover whole pages patches
// just those pages (and an earlier patch's) without reading the full
// chunk, so a page rewritten with its old bytes stays in the patch; a
// write that covers part of a page takes the diffing path, which drops
// such pages. Every state reads back.
func TestFoldTouched(t *testing.T) {
	ctx := context.Background()
	s := newEnv(t).open(t)
	cs := int64(s.ChunkSize())                  // 64 KiB: 16 pages, deltas up to 4
	d, err := s.CreateDisk(ctx, "d", 2*cs, 512) // sectors: a write may cover part of a page
	if err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(9, 10))
	m := &model{b: make([]byte, 2*cs)}
	seq := uint64(0)
	write := modelWriter(t, d, m, &seq)
	page := func(c, p int64) int64 { return c*cs + p*patchPage }
	patchOf := func(c int64) (entry, int) {
		t.Helper()
		if err := d.Fold(ctx); err != nil {
			t.Fatal(err)
		}
		checkHead(t, d, m.b)
		e := chunkEntry(t, d, c)
		if !e.delta {
			return e, 0
		}
		raw, err := s.getChunk(ctx, e.h)
		if err != nil {
			t.Fatal(err)
		}
		p, err := decodePatch(raw, int(cs))
		if err != nil {
			t.Fatal(err)
		}
		n := 0
		for _, b := range p.bitmap {
			n += bits.OnesCount8(b)
		}
		return e, n
	}
	write(0, randData(rng, int(2*cs)))
	base, _ := patchOf(0)

	write(page(0, 1), randData(rng, patchPage))
	write(page(0, 3), randData(rng, patchPage))
	write(page(0, 5), bytes.Clone(m.b[page(0, 5):page(0, 6)])) // its old bytes
	if e, n := patchOf(0); !e.delta || e.base != base.h || n != 3 {
		t.Fatalf("3 whole pages written = %+v with %d pages, want a patch of 3 over %s", e, n, base.h)
	}
	write(page(0, 3), randData(rng, patchPage)) // again, inside the patch
	write(page(0, 7), randData(rng, patchPage))
	if e, n := patchOf(0); !e.delta || e.base != base.h || n != 4 {
		t.Fatalf("a patch of 3 and 2 pages written = %+v with %d pages, want a patch of 4 (1, 3, 5, 7)", e, n)
	}
	write(page(0, 2)+512, randData(rng, 512)) // part of a page: diffed
	if e, n := patchOf(0); !e.delta || e.base != base.h || n != 4 {
		t.Fatalf("a partial page written = %+v with %d pages, want the diff's 4 (1, 2, 3, 7)", e, n)
	}
	seq++
	if err := d.WriteZeroes(ctx, seq, page(1, 9), 2*patchPage); err != nil {
		t.Fatal(err)
	}
	m.zero(page(1, 9), 2*patchPage)
	if e, n := patchOf(1); !e.delta || n != 2 {
		t.Fatalf("2 pages zeroed in a full chunk = %+v with %d pages, want a patch of 2", e, n)
	}
	for p := int64(10); p < 15; p++ {
		write(page(0, p), randData(rng, patchPage))
	}
	if e, _ := patchOf(0); e.delta {
		t.Fatalf("9 of 16 pages changed = %+v, want a full chunk", e)
	}
}
