package replica

import (
	"bytes"
	"context"
	"errors"
	"io"
	"math/rand/v2"
	"path/filepath"
	"testing"
	"time"

	"github.com/ferrymigrate/ferry/replica/fs"
)

type testEnv struct {
	dir  string
	be   *fs.Backend
	keys *KeyFile
	opts Options
}

func newEnv(t testing.TB) *testEnv {
	t.Helper()
	dir := t.TempDir()
	be, err := fs.Open(filepath.Join(dir, "backend"), fs.Packed(ChunkPrefix))
	if err != nil {
		t.Fatal(err)
	}
	// The backend compacts packs in the background (after a GC, say):
	// stop it before the directory is removed, or a pack it is writing
	// makes the removal fail.
	t.Cleanup(func() { be.Close() })
	keys, err := CreateKeyFile(filepath.Join(dir, "key"))
	if err != nil {
		t.Fatal(err)
	}
	return &testEnv{dir: dir, be: be, keys: keys, opts: Options{
		Dir: filepath.Join(dir, "staging"), Backend: be, Keys: keys,
		ChunkSize: 64 << 10, FoldInterval: -1, SegmentSize: 1 << 20,
	}}
}

func (e *testEnv) open(t testing.TB) *Store {
	t.Helper()
	s, err := Open(context.Background(), e.opts)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// model is the expected content of a disk.
type model struct{ b []byte }

func (m *model) write(off int64, data []byte) { copy(m.b[off:], data) }
func (m *model) zero(off, n int64)            { clear(m.b[off : off+n]) }

// modelWriter returns a function that writes data at off to d, with the
// sequence number after *seq, and to m.
func modelWriter(t testing.TB, d *Disk, m *model, seq *uint64) func(off int64, data []byte) {
	return func(off int64, data []byte) {
		t.Helper()
		*seq++
		if err := d.Write(context.Background(), *seq, off, data); err != nil {
			t.Fatal(err)
		}
		m.write(off, data)
	}
}

func readAll(t testing.TB, r *Reader) []byte {
	t.Helper()
	buf := make([]byte, r.Size())
	if n, err := r.ReadAt(buf, 0); err != nil || n != len(buf) {
		t.Fatalf("ReadAt(all) = %d, %v", n, err)
	}
	return buf
}

func checkHead(t testing.TB, d *Disk, want []byte) {
	t.Helper()
	r, err := d.OpenHead(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if got := readAll(t, r); !bytes.Equal(got, want) {
		t.Fatalf("head content differs from the model (first difference at %d)", firstDiff(got, want))
	}
}

func firstDiff(a, b []byte) int {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	return min(len(a), len(b))
}

func TestWriteFoldReadBack(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t)
	s := e.open(t)
	const size = 4 << 20
	d, err := s.CreateDisk(ctx, "disk-1", size, 4096)
	if err != nil {
		t.Fatal(err)
	}
	m := &model{b: make([]byte, size)}
	rng := rand.New(rand.NewPCG(1, 2))
	seq := uint64(0)
	for round := 0; round < 4; round++ {
		for i := 0; i < 50; i++ {
			seq++
			off := int64(rng.IntN(size/4096)) * 4096
			n := int64(1+rng.IntN(40)) * 4096
			n = min(n, size-off)
			if rng.IntN(5) == 0 {
				if err := d.WriteZeroes(ctx, seq, off, n); err != nil {
					t.Fatal(err)
				}
				m.zero(off, n)
				continue
			}
			data := make([]byte, n)
			for j := range data {
				data[j] = byte(rng.IntN(4)) // compressible
			}
			if err := d.Write(ctx, seq, off, data); err != nil {
				t.Fatal(err)
			}
			m.write(off, data)
		}
		checkHead(t, d, m.b)
		if err := d.Fold(ctx); err != nil {
			t.Fatal(err)
		}
		checkHead(t, d, m.b)
	}
	if got := d.DurableSeq(); got != seq {
		t.Errorf("DurableSeq = %d, want %d", got, seq)
	}
	// Duplicate sequence numbers after a resume are ignored.
	if err := d.Write(ctx, seq-3, 0, bytes.Repeat([]byte{9}, 4096)); err != nil {
		t.Fatalf("duplicate write: %v", err)
	}
	checkHead(t, d, m.b)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s = e.open(t)
	defer s.Close()
	d, err = s.Disk("disk-1")
	if err != nil {
		t.Fatal(err)
	}
	checkHead(t, d, m.b)
	if got := d.DurableSeq(); got != seq {
		t.Errorf("DurableSeq after reopen = %d, want %d", got, seq)
	}
}

func TestReadErrors(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t)
	s := e.open(t)
	defer s.Close()
	d, err := s.CreateDisk(ctx, "d", 1<<20, 4096)
	if err != nil {
		t.Fatal(err)
	}
	r, err := d.OpenHead(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	buf := make([]byte, 8192)
	tests := []struct {
		name  string
		off   int64
		wantN int
	}{
		{"past end", 1 << 20, 0},
		{"straddles end", 1<<20 - 4096, 4096},
		{"negative", -1, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			n, err := r.ReadAt(buf, tt.off)
			if n != tt.wantN || !errors.Is(err, ErrOutOfRange) {
				t.Errorf("ReadAt(%d) = %d, %v; want %d, ErrOutOfRange", tt.off, n, err, tt.wantN)
			}
		})
	}
	if _, err := r.ReadAt(buf, 1<<20); !errors.Is(err, io.EOF) {
		t.Errorf("ReadAt past end = %v, want io.EOF too", err)
	}
	writes := []struct {
		name string
		off  int64
		n    int
		want error
	}{
		{"unaligned offset", 100, 4096, ErrUnaligned},
		{"unaligned length", 0, 100, ErrUnaligned},
		{"past end", 1 << 20, 4096, ErrOutOfRange},
	}
	for i, tt := range writes {
		t.Run("write "+tt.name, func(t *testing.T) {
			err := d.Write(ctx, uint64(i+1), tt.off, make([]byte, tt.n))
			if !errors.Is(err, tt.want) {
				t.Errorf("Write = %v, want %v", err, tt.want)
			}
		})
	}
}

func TestExtents(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t)
	s := e.open(t)
	defer s.Close()
	cs := int64(64 << 10)
	d, err := s.CreateDisk(ctx, "d", 8*cs, 4096)
	if err != nil {
		t.Fatal(err)
	}
	data := bytes.Repeat([]byte{1}, int(cs))
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(d.Write(ctx, 1, cs, data))   // chunk 1
	must(d.Write(ctx, 2, 3*cs, data)) // chunk 3
	must(d.Fold(ctx))
	must(d.Write(ctx, 3, 5*cs, data[:8192]))     // journal data in chunk 5
	must(d.WriteZeroes(ctx, 4, 3*cs+4096, 4096)) // zero inside chunk 3
	r, err := d.OpenHead(ctx)
	must(err)
	defer r.Close()
	got, err := r.Extents(0, 8*cs)
	must(err)
	want := []Extent{
		{0, cs, true},
		{cs, cs, false},
		{2 * cs, cs, true},
		{3 * cs, 4096, false},
		{3*cs + 4096, 4096, true},
		{3*cs + 8192, cs - 8192, false},
		{4 * cs, cs, true},
		{5 * cs, 8192, false},
		{5*cs + 8192, 3*cs - 8192, true},
	}
	if len(got) != len(want) {
		t.Fatalf("Extents = %v, want %v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("extent %d = %+v, want %+v", i, got[i], want[i])
		}
	}
	if _, err := r.Extents(0, 9*cs); !errors.Is(err, ErrOutOfRange) {
		t.Errorf("Extents past end = %v, want ErrOutOfRange", err)
	}
}

func TestSnapshotsAndPointInTime(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t)
	now := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
	e.opts.Now = func() time.Time { return now }
	s := e.open(t)
	defer s.Close()
	const size = 1 << 20
	d, err := s.CreateDisk(ctx, "d", size, 4096)
	if err != nil {
		t.Fatal(err)
	}
	m := &model{b: make([]byte, size)}
	states := map[uint64][]byte{}
	times := map[uint64]time.Time{}
	rng := rand.New(rand.NewPCG(3, 4))
	if _, err := d.Snapshot(ctx, SnapshotOptions{Consistency: CrashConsistent}); !errors.Is(err, ErrNoBarrier) {
		t.Errorf("Snapshot without a barrier = %v, want ErrNoBarrier", err)
	}
	var snaps []SnapshotInfo
	for seq := uint64(1); seq <= 60; seq++ {
		now = now.Add(time.Second)
		if seq%10 == 0 {
			c := CrashConsistent
			if seq%20 == 0 {
				c = AppConsistent
			}
			if err := d.Barrier(ctx, seq, c); err != nil {
				t.Fatal(err)
			}
			info, err := d.Snapshot(ctx, SnapshotOptions{Consistency: CrashConsistent})
			if err != nil {
				t.Fatal(err)
			}
			if info.Seq != seq || info.Consistency != c {
				t.Errorf("snapshot = %+v, want seq %d, %v", info, seq, c)
			}
			snaps = append(snaps, info)
		} else {
			data := make([]byte, 4096*(1+rng.IntN(4)))
			for i := range data {
				data[i] = byte(rng.Uint32())
			}
			off := int64(rng.IntN(size/4096-4)) * 4096
			if err := d.Write(ctx, seq, off, data); err != nil {
				t.Fatal(err)
			}
			m.write(off, data)
		}
		states[seq] = append([]byte(nil), m.b...)
		times[seq] = now
	}
	for _, sn := range snaps {
		r, err := d.OpenSnapshot(ctx, sn.ID)
		if err != nil {
			t.Fatal(err)
		}
		if got := readAll(t, r); !bytes.Equal(got, states[sn.Seq]) {
			t.Errorf("snapshot %s differs from the state at %d", sn.ID, sn.Seq)
		}
		r.Close()
	}
	for _, seq := range []uint64{1, 7, 33, 59, 60} {
		r, err := d.OpenAt(ctx, seq)
		if err != nil {
			t.Fatal(err)
		}
		if got := readAll(t, r); !bytes.Equal(got, states[seq]) {
			t.Errorf("OpenAt(%d) differs from the state then", seq)
		}
		r.Close()
		r, err = d.OpenAtTime(ctx, times[seq])
		if err != nil {
			t.Fatal(err)
		}
		if r.Seq() != seq {
			t.Errorf("OpenAtTime(%v) at seq %d, want %d", times[seq], r.Seq(), seq)
		}
		r.Close()
	}
	if _, err := d.OpenAt(ctx, 61); !errors.Is(err, ErrOutsideWindow) {
		t.Errorf("OpenAt(not yet durable) = %v, want ErrOutsideWindow", err)
	}
	if got := len(d.Snapshots()); got != len(snaps) {
		t.Errorf("Snapshots() has %d, want %d", got, len(snaps))
	}
	if err := d.DeleteSnapshot(ctx, snaps[0].ID); err != nil {
		t.Fatal(err)
	}
	if err := d.DeleteSnapshot(ctx, snaps[0].ID); !errors.Is(err, ErrNotFound) {
		t.Errorf("second DeleteSnapshot = %v, want ErrNotFound", err)
	}
	if _, err := d.Snapshot(ctx, SnapshotOptions{Consistency: AppConsistent}); err != nil {
		t.Fatal(err)
	}
}
