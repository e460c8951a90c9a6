package replica

import (
	"context"
	"encoding/json"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// packEnv is a store whose journal is trimmed right after each fold, so
// that overwritten chunks become garbage at once.
func packEnv(t *testing.T) *testEnv {
	e := newEnv(t)
	e.opts.SegmentSize = 64 << 10
	e.opts.Window = Window{MaxBytes: 1, MaxAge: time.Nanosecond}
	return e
}

// foldWrite writes data at off and folds. Callers pass unaligned offsets
// so the data goes through the journal and the fold stores its chunks.
func foldWrite(t *testing.T, d *Disk, m *model, seq uint64, off int64, data []byte) {
	t.Helper()
	if err := d.Write(context.Background(), seq, off, data); err != nil {
		t.Fatal(err)
	}
	m.write(off, data)
	if err := d.Fold(context.Background()); err != nil {
		t.Fatal(err)
	}
}

func verifyOK(t *testing.T, s *Store) Report {
	t.Helper()
	rep, err := s.Verify(context.Background())
	if err != nil || !rep.OK() {
		t.Fatalf("Verify = %v, %v", rep.Problems, err)
	}
	return rep
}

func TestGCRepacksAndDeletesPacks(t *testing.T) {
	ctx := context.Background()
	e := packEnv(t)
	s := e.open(t)
	cs := 64 << 10
	d, err := s.CreateDisk(ctx, "d", int64(64*cs), 4096)
	if err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(3, 4))
	m := &model{b: make([]byte, 64*cs)}
	// Pack A: 16 chunks (unaligned write: the fold stores them).
	foldWrite(t, d, m, 1, 4096, randData(rng, 16*cs))
	// Overwrite 14 of A's chunks: A keeps 2 live chunks of 17 → repacked.
	foldWrite(t, d, m, 2, int64(cs)+4096, randData(rng, 14*cs-4096))
	// Pack C, then overwritten entirely → deleted.
	foldWrite(t, d, m, 3, int64(32*cs)+4096, randData(rng, 4*cs))
	foldWrite(t, d, m, 4, int64(32*cs), randData(rng, 6*cs))
	// One more fold, so the journal window (and the maps it keeps as read
	// bases) moves past the overwritten data.
	foldWrite(t, d, m, 5, int64(60*cs), randData(rng, 4096))
	s.chunkMu.Lock()
	before := len(s.packs)
	s.chunkMu.Unlock()
	st, err := s.GC(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("GC: %+v (packs before: %d)", st, before)
	if st.Repacked == 0 || st.PacksGone == 0 || st.Deleted < 14 {
		t.Errorf("GC = %+v, want a repack and deleted packs", st)
	}
	checkHead(t, d, m.b)
	verifyOK(t, s)
	// A second GC finds nothing more to do.
	if st, err := s.GC(ctx); err != nil || st.Repacked != 0 || st.Deleted != 0 {
		t.Errorf("second GC = %+v, %v; want nothing deleted", st, err)
	}
	s.Close()
	s = e.open(t)
	defer s.Close()
	d, _ = s.Disk("d")
	checkHead(t, d, m.b)
	verifyOK(t, s)
}

// A crash during a batch commit can leave an index whose pack is absent
// (Open drops it) or a pack without an index (GC deletes it).
func TestIncompletePackCommit(t *testing.T) {
	ctx := context.Background()
	e := packEnv(t)
	s := e.open(t)
	cs := 64 << 10
	d, err := s.CreateDisk(ctx, "d", int64(8*cs), 4096)
	if err != nil {
		t.Fatal(err)
	}
	m := &model{b: make([]byte, 8*cs)}
	foldWrite(t, d, m, 1, 4096, randData(rand.New(rand.NewPCG(5, 6)), 3*cs))
	// An index without its pack, and a pack without its index.
	id, orphan := newPackID(), newPackID()
	idx := encodeIndex(100, []indexEntry{{h: Hash{9}, off: 0, size: 100}})
	if err := e.be.Put(ctx, indexName(id), s.sl.seal(indexName(id), kindIndex, idx)); err != nil {
		t.Fatal(err)
	}
	if err := e.be.Put(ctx, packName(orphan), make([]byte, 100)); err != nil {
		t.Fatal(err)
	}
	s.Close()
	s = e.open(t)
	defer s.Close()
	if _, err := e.be.Get(ctx, indexName(id)); err == nil {
		t.Errorf("Open kept %s, whose pack is missing", indexName(id))
	}
	verifyOK(t, s)
	st, err := s.GC(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.be.Get(ctx, packName(orphan)); err == nil || st.PacksGone != 1 {
		t.Errorf("GC = %+v; kept the pack without an index: %v", st, err)
	}
	d, _ = s.Disk("d")
	checkHead(t, d, m.b)
	verifyOK(t, s)
}

// A version 2 store keeps its chunks as loose objects: they stay readable
// after the upgrade, new chunks go to packs, and GC deletes loose chunks
// nothing references.
func TestUpgradeFromLooseChunks(t *testing.T) {
	ctx := context.Background()
	e := packEnv(t)
	s := e.open(t)
	cs := 64 << 10
	d, err := s.CreateDisk(ctx, "d", int64(16*cs), 4096)
	if err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(9, 10))
	m := &model{b: make([]byte, 16*cs)}
	foldWrite(t, d, m, 1, 4096, randData(rng, 8*cs))
	// Rewrite the store as version 2 did: every chunk a loose object.
	s.chunkMu.Lock()
	packs := s.packs
	s.chunkMu.Unlock()
	for _, p := range packs {
		data, err := e.be.Get(ctx, packName(p.id))
		if err != nil {
			t.Fatal(err)
		}
		for _, en := range p.entries {
			if err := e.be.Put(ctx, chunkName(en.h), data[en.off:en.off+en.size]); err != nil {
				t.Fatal(err)
			}
		}
		e.be.Delete(ctx, indexName(p.id))
		e.be.Delete(ctx, packName(p.id))
	}
	cfg := s.cfg
	cfg.Version = 2
	raw, _ := json.Marshal(cfg)
	if err := e.be.Put(ctx, "config", raw); err != nil {
		t.Fatal(err)
	}
	s.Close()

	s = e.open(t)
	defer s.Close()
	raw, _ = e.be.Get(ctx, "config")
	var got storeConfig
	if err := json.Unmarshal(raw, &got); err != nil || got.Version != formatVersion {
		t.Fatalf("config after Open: version %d, %v; want %d", got.Version, err, formatVersion)
	}
	d, _ = s.Disk("d")
	checkHead(t, d, m.b)
	if rep := verifyOK(t, s); rep.Packs != 0 {
		t.Errorf("Verify found %d packs in a store of loose chunks", rep.Packs)
	}
	// Overwrite most of it: new chunks go to a pack, the loose ones
	// become garbage.
	foldWrite(t, d, m, 2, 4096, randData(rng, 7*cs))
	foldWrite(t, d, m, 3, int64(12*cs), randData(rng, 4096))
	st, err := s.GC(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if st.Deleted == 0 || st.Packs == 0 {
		t.Errorf("GC = %+v, want loose chunks deleted and packs found", st)
	}
	checkHead(t, d, m.b)
	verifyOK(t, s)
	loose := 0
	filepath.WalkDir(filepath.Join(e.be.Root(), "chunks"), func(_ string, de os.DirEntry, _ error) error {
		if de != nil && !de.IsDir() {
			loose++
		}
		return nil
	})
	if loose == 0 || loose > 3 {
		t.Errorf("%d loose chunks left, want the 1-3 still referenced", loose)
	}
}
