package replica

import (
	"bytes"
	"context"
	"errors"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ferrymigrate/ferry/replica/fs"
)

func randData(rng *rand.Rand, n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(rng.Uint32())
	}
	return b
}

func TestGCVerifyUsage(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t)
	// Whole-chunk writes are journalled as chunk references, which keep
	// their chunks alive while the record is in the journal; one segment
	// per group commit lets the trim below drop all but the newest.
	e.opts.SegmentSize = 1
	s := e.open(t)
	defer s.Close()
	cs := 64 << 10
	d, err := s.CreateDisk(ctx, "d", int64(16*cs), 4096)
	if err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(5, 6))
	m := &model{b: make([]byte, 16*cs)}
	seq := uint64(0)
	var snaps []SnapshotInfo
	for round := 0; round < 3; round++ {
		for i := 0; i < 8; i++ {
			seq++
			data := randData(rng, cs)
			off := int64(rng.IntN(16)) * int64(cs)
			if err := d.Write(ctx, seq, off, data); err != nil {
				t.Fatal(err)
			}
			m.write(off, data)
		}
		seq++
		if err := d.Barrier(ctx, seq, CrashConsistent); err != nil {
			t.Fatal(err)
		}
		sn, err := d.Snapshot(ctx, SnapshotOptions{Consistency: CrashConsistent})
		if err != nil {
			t.Fatal(err)
		}
		snaps = append(snaps, sn)
	}
	rep, err := s.Verify(ctx)
	if err != nil || !rep.OK() {
		t.Fatalf("Verify = %+v, %v", rep, err)
	}
	before := rep.Chunks
	for _, sn := range snaps[:2] {
		if err := d.DeleteSnapshot(ctx, sn.ID); err != nil {
			t.Fatal(err)
		}
	}
	// Snapshots gone, but the journal window still needs the older maps.
	e.opts.Window = Window{MaxBytes: 1, MaxAge: time.Nanosecond}
	s.opts.Window = e.opts.Window
	seq++
	if err := d.Write(ctx, seq, 0, randData(rng, cs)); err != nil {
		t.Fatal(err)
	}
	copy(m.b, mustRead(t, d, 0, cs))
	if err := d.Fold(ctx); err != nil {
		t.Fatal(err)
	}
	rep, err = s.Verify(ctx)
	if err != nil || !rep.OK() {
		t.Fatalf("Verify before GC = %+v, %v", rep, err)
	}
	garbage := rep.Unreferenced
	st, err := s.GC(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if st.Deleted == 0 {
		t.Errorf("GC deleted nothing after deleting snapshots: %+v (chunks before %d)", st, before)
	}
	if st.Deleted != garbage {
		t.Errorf("GC deleted %d chunks, Verify counted %d unreferenced", st.Deleted, garbage)
	}
	rep, err = s.Verify(ctx)
	if err != nil || !rep.OK() {
		t.Fatalf("Verify after GC = %+v, %v", rep, err)
	}
	if rep.Unreferenced != 0 {
		t.Errorf("after GC, %d chunks are still referenced by nothing", rep.Unreferenced)
	}
	checkHead(t, d, m.b)
	r, err := d.OpenSnapshot(ctx, snaps[2].ID)
	if err != nil {
		t.Fatal(err)
	}
	readAll(t, r)
	r.Close()
	u, err := s.Usage(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(u.Disks) != 1 || u.Disks[0].Snapshots != 1 || u.Disks[0].Size != int64(16*cs) || u.StoredBytes == 0 || u.Disks[0].Referenced == 0 || u.Disks[0].Allocated == 0 {
		t.Errorf("Usage = %+v", u)
	}
}

func mustRead(t *testing.T, d *Disk, off int64, n int) []byte {
	t.Helper()
	r, err := d.OpenHead(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	b := make([]byte, n)
	if _, err := r.ReadAt(b, off); err != nil {
		t.Fatal(err)
	}
	return b
}

// TestCorruptionDetected damages a stored chunk three ways, kept as one
// file per chunk and kept in a pack file: the read fails with ErrCorrupt
// naming the chunk, and Verify names it.
func TestCorruptionDetected(t *testing.T) {
	ctx := context.Background()
	tests := []struct {
		name string
		// damage damages the n bytes at off in the file at path: the
		// object itself, or the pack holding it.
		damage func(t *testing.T, path string, off, n int64)
	}{
		{"flipped bit", func(t *testing.T, p string, off, n int64) {
			b, _ := os.ReadFile(p)
			b[off+n/2] ^= 1
			os.WriteFile(p, b, 0o600)
		}},
		{"truncated", func(t *testing.T, p string, off, n int64) {
			os.Truncate(p, 20)
		}},
		{"missing", func(t *testing.T, p string, off, n int64) {
			os.Remove(p)
		}},
	}
	for _, layout := range []string{"files", "packs"} {
		for _, tt := range tests {
			t.Run(layout+"/"+tt.name, func(t *testing.T) {
				e := newEnv(t)
				if layout == "files" {
					e.be.Close()
					be, err := fs.Open(filepath.Join(e.dir, "files"))
					if err != nil {
						t.Fatal(err)
					}
					e.be, e.opts.Backend = be, be
				}
				s := e.open(t)
				d, err := s.CreateDisk(ctx, "d", 1<<20, 4096)
				if err != nil {
					t.Fatal(err)
				}
				data := randData(rand.New(rand.NewPCG(1, 1)), 64<<10)
				if err := d.Write(ctx, 1, 0, data); err != nil {
					t.Fatal(err)
				}
				if err := d.Fold(ctx); err != nil {
					t.Fatal(err)
				}
				s.Close()
				h := (&sealer{hashKey: s.sl.hashKey}).hash(data)
				name := chunkName(h)
				path, off, n := locate(t, e.be, name)
				tt.damage(t, path, off, n)
				e.be.Close() // reopen the backend too: a pack is read at open
				be, err := fs.Open(e.be.Root(), fs.Packed(ChunkPrefix))
				if err != nil {
					t.Fatal(err)
				}
				defer be.Close()
				e.be, e.opts.Backend = be, be
				s = e.open(t)
				defer s.Close()
				d, _ = s.Disk("d")
				r, err := d.OpenHead(ctx)
				if err != nil {
					t.Fatal(err)
				}
				defer r.Close()
				_, err = r.ReadAt(make([]byte, 4096), 0)
				if !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), name) {
					t.Errorf("ReadAt of a damaged chunk = %v, want ErrCorrupt naming %s", err, name)
				}
				rep, err := s.Verify(ctx)
				if err != nil {
					t.Fatal(err)
				}
				found := false
				for _, p := range rep.Problems {
					if strings.Contains(p.String(), name) {
						found = true
					}
				}
				if !found {
					t.Errorf("Verify problems %v do not name %s", rep.Problems, name)
				}
			})
		}
	}
}

// locate finds where the fs backend keeps object name: its own file, or
// a pack file and the object's offset in it.
func locate(t *testing.T, be *fs.Backend, name string) (path string, off, n int64) {
	t.Helper()
	obj, err := be.Get(context.Background(), name)
	if err != nil {
		t.Fatal(err)
	}
	if p := filepath.Join(be.Root(), name); fileExists(p) {
		return p, 0, int64(len(obj))
	}
	var packs []string
	filepath.WalkDir(filepath.Join(be.Root(), ".packs"), func(p string, d os.DirEntry, err error) error {
		if err == nil && strings.HasSuffix(p, ".pack") {
			packs = append(packs, p)
		}
		return nil
	})
	for _, p := range packs {
		raw, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		if i := bytes.Index(raw, obj); i >= 0 {
			return p, int64(i), int64(len(obj))
		}
	}
	t.Fatalf("%s is neither a file nor in any of the packs %v", name, packs)
	return "", 0, 0
}

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

func TestWrongOrMissingKey(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t)
	s := e.open(t)
	s.Close()
	other, err := CreateKeyFile(filepath.Join(e.dir, "other-key"))
	if err != nil {
		t.Fatal(err)
	}
	opts := e.opts
	opts.Keys = other
	if _, err := Open(ctx, opts); !errors.Is(err, ErrWrongKey) {
		t.Errorf("Open with another key = %v, want ErrWrongKey", err)
	}
	opts.Keys = nil
	if _, err := Open(ctx, opts); !errors.Is(err, ErrNoKey) {
		t.Errorf("Open without a key = %v, want ErrNoKey", err)
	}
	if _, err := LoadKeyFile(filepath.Join(e.dir, "absent")); !errors.Is(err, ErrNoKey) {
		t.Errorf("LoadKeyFile(absent) = %v, want ErrNoKey", err)
	}
	os.Chmod(filepath.Join(e.dir, "key"), 0o644)
	if _, err := LoadKeyFile(filepath.Join(e.dir, "key")); err == nil {
		t.Error("LoadKeyFile of a world-readable key succeeded")
	}
}

func TestRetentionSelect(t *testing.T) {
	now := time.Date(2025, 3, 10, 12, 0, 0, 0, time.UTC)
	// One snapshot every 5 minutes for 9 days.
	var snaps []SnapshotInfo
	for i := 0; i < 9*24*12; i++ {
		snaps = append(snaps, SnapshotInfo{ID: snapshotID(uint64(i + 1)), Seq: uint64(i + 1), Time: now.Add(-time.Duration(i) * 5 * time.Minute)})
	}
	keep, drop := DefaultRetention().Select(snaps, now)
	if len(keep)+len(drop) != len(snaps) {
		t.Fatalf("keep %d + drop %d != %d", len(keep), len(drop), len(snaps))
	}
	// 6-7 ten-minute buckets in the last hour, ~24 hourly, ~7 daily, overlapping.
	if len(keep) < 30 || len(keep) > 40 {
		t.Errorf("kept %d snapshots, want about 37", len(keep))
	}
	if keep[0].Seq != 1 {
		t.Errorf("newest snapshot not kept")
	}
	for _, k := range keep {
		if now.Sub(k.Time) >= 7*24*time.Hour {
			t.Errorf("kept a snapshot %v old", now.Sub(k.Time))
		}
	}
	tests := []struct {
		name  string
		snaps []SnapshotInfo
		want  int
	}{
		{"newest always kept", []SnapshotInfo{{Seq: 1, Time: now.Add(-30 * 24 * time.Hour)}}, 1},
		{"keep flag", []SnapshotInfo{{Seq: 2, Time: now}, {Seq: 1, Time: now.Add(-30 * 24 * time.Hour), Keep: true}}, 2},
		{"same bucket", []SnapshotInfo{{Seq: 2, Time: now.Add(-time.Minute)}, {Seq: 1, Time: now.Add(-2 * time.Minute)}}, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			keep, _ := DefaultRetention().Select(tt.snaps, now)
			if len(keep) != tt.want {
				t.Errorf("kept %d, want %d", len(keep), tt.want)
			}
		})
	}
}

func TestApplyRetention(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t)
	now := time.Date(2025, 3, 10, 0, 0, 0, 0, time.UTC)
	e.opts.Now = func() time.Time { return now }
	s := e.open(t)
	defer s.Close()
	d, err := s.CreateDisk(ctx, "d", 1<<20, 4096)
	if err != nil {
		t.Fatal(err)
	}
	for seq := uint64(1); seq <= 20; seq++ {
		now = now.Add(3 * time.Minute)
		if err := d.Write(ctx, seq, 0, bytes.Repeat([]byte{byte(seq)}, 4096)); err != nil {
			t.Fatal(err)
		}
		if _, err := d.Snapshot(ctx, SnapshotOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	dropped, err := d.ApplyRetention(ctx, now)
	if err != nil {
		t.Fatal(err)
	}
	left := d.Snapshots()
	if len(dropped) == 0 || len(left)+len(dropped) != 20 || left[len(left)-1].Seq != 20 {
		t.Errorf("ApplyRetention dropped %d, left %d (newest %d)", len(dropped), len(left), left[len(left)-1].Seq)
	}
	for _, sn := range left {
		r, err := d.OpenSnapshot(ctx, sn.ID)
		if err != nil {
			t.Fatal(err)
		}
		b := make([]byte, 4096)
		if _, err := r.ReadAt(b, 0); err != nil || b[0] != byte(sn.Seq) {
			t.Errorf("snapshot %s reads %d, %v; want %d", sn.ID, b[0], err, sn.Seq)
		}
		r.Close()
	}
	if _, err := s.GC(ctx); err != nil {
		t.Fatal(err)
	}
	if rep, err := s.Verify(ctx); err != nil || !rep.OK() {
		t.Fatalf("Verify = %+v, %v", rep, err)
	}
}

// Chunks stored directly by whole-chunk writes are referenced only by the
// journal until a fold: GC must keep them, and a dedup hit on a chunk GC
// would otherwise delete must keep it too.
func TestGCKeepsJournalChunks(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t)
	s := e.open(t)
	defer s.Close()
	cs := 64 << 10
	d, err := s.CreateDisk(ctx, "d", int64(8*cs), 4096)
	if err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(7, 8))
	m := &model{b: make([]byte, 8*cs)}
	a := randData(rng, 2*cs)
	if err := d.Write(ctx, 1, 0, a); err != nil {
		t.Fatal(err)
	}
	m.write(0, a)
	// Folded, then overwritten: the map no longer references a's chunks.
	if err := d.Fold(ctx); err != nil {
		t.Fatal(err)
	}
	b := randData(rng, 2*cs)
	if err := d.Write(ctx, 2, 0, b); err != nil {
		t.Fatal(err)
	}
	// a again elsewhere, unfolded: a dedup hit on chunks only the journal
	// references.
	if err := d.Write(ctx, 3, int64(4*cs), a); err != nil {
		t.Fatal(err)
	}
	m.write(0, b)
	m.write(int64(4*cs), a)
	if _, err := s.GC(ctx); err != nil {
		t.Fatal(err)
	}
	checkHead(t, d, m.b)
	if rep, err := s.Verify(ctx); err != nil || !rep.OK() {
		t.Fatalf("Verify = %v, %v", rep.Problems, err)
	}
	if err := d.Fold(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := s.GC(ctx); err != nil {
		t.Fatal(err)
	}
	checkHead(t, d, m.b)
	s.Close()
	s = e.open(t)
	d, _ = s.Disk("d")
	checkHead(t, d, m.b)
	if _, err := s.GC(ctx); err != nil {
		t.Fatal(err)
	}
	checkHead(t, d, m.b)
	if rep, err := s.Verify(ctx); err != nil || !rep.OK() {
		t.Fatalf("Verify = %v, %v", rep.Problems, err)
	}
}
