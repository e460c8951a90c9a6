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
)

// TestDeleteDisk deletes a disk that shares chunks with another: it is
// refused while read, then everything of it goes, GC frees only its own
// chunks, the other disk reads back, its id can be created afresh, and a
// deletion cut short after the disk object went is finished at Open.
func TestDeleteDisk(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t)
	s := e.open(t)
	cs := int(e.opts.ChunkSize)
	size := int64(8 * cs)
	rng := rand.New(rand.NewPCG(7, 8))
	shared := randData(rng, cs)
	// fill writes a shared chunk and a chunk of the disk's own, takes a
	// snapshot and returns the disk's content.
	fill := func(s *Store, id string) (*Disk, []byte) {
		t.Helper()
		d, err := s.CreateDisk(ctx, id, size, 4096)
		if err != nil {
			t.Fatal(err)
		}
		img := make([]byte, size)
		own := randData(rng, cs)
		copy(img, shared)
		copy(img[2*cs:], own)
		if err := d.Write(ctx, 1, 0, shared); err != nil {
			t.Fatal(err)
		}
		if err := d.Write(ctx, 2, int64(2*cs), own); err != nil {
			t.Fatal(err)
		}
		if err := d.Write(ctx, 3, int64(4*cs), own[:4096]); err != nil { // a journal data record
			t.Fatal(err)
		}
		copy(img[4*cs:], own[:4096])
		if err := d.Barrier(ctx, 4, CrashConsistent); err != nil {
			t.Fatal(err)
		}
		if _, err := d.Snapshot(ctx, SnapshotOptions{Consistency: CrashConsistent}); err != nil {
			t.Fatal(err)
		}
		return d, img
	}
	readAll := func(d *Disk) ([]byte, error) {
		r, err := d.OpenHead(ctx)
		if err != nil {
			return nil, err
		}
		defer r.Close()
		b := make([]byte, d.Size())
		_, err = r.ReadAt(b, 0)
		return b, err
	}
	objects := func(prefix string) []string {
		t.Helper()
		var names []string
		if err := e.be.List(ctx, prefix, func(name string, _ int64) error {
			names = append(names, name)
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		return names
	}
	gone := func(id string) {
		t.Helper()
		for _, p := range []string{"disks/" + id, "maps/" + id + "/", "snapshots/" + id + "/"} {
			for _, n := range objects(p) {
				if n == p || strings.HasPrefix(n, p) && strings.HasSuffix(p, "/") {
					t.Errorf("%s is still in the backend", n)
				}
			}
		}
		if _, err := os.Stat(filepath.Join(e.opts.Dir, "disks", id)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("the journal of %s is still there: %v", id, err)
		}
	}
	verifyClean := func(s *Store) {
		t.Helper()
		if _, err := s.GC(ctx); err != nil {
			t.Fatal(err)
		}
		rep, err := s.Verify(ctx)
		if err != nil || len(rep.Problems) > 0 || rep.Unreferenced != 0 {
			t.Fatalf("verify: %+v, %v", rep, err)
		}
	}

	a, _ := fill(s, "a")
	b, imgB := fill(s, "b")
	if err := a.Fold(ctx); err != nil {
		t.Fatal(err)
	}
	before := len(objects(ChunkPrefix))

	r, err := a.OpenHead(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.DeleteDisk(ctx, "a"); !errors.Is(err, ErrBusy) {
		t.Fatalf("delete a disk being read: %v, want ErrBusy", err)
	}
	r.Close()
	if err := s.DeleteDisk(ctx, "a"); err != nil {
		t.Fatal(err)
	}
	if err := s.DeleteDisk(ctx, "a"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("delete it again: %v, want ErrNotFound", err)
	}
	if _, err := s.Disk("a"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Disk after delete: %v", err)
	}
	// The old handle refuses everything.
	if err := a.Write(ctx, 5, 0, shared); err == nil {
		t.Error("a write to the deleted disk succeeded")
	}
	if _, err := a.Snapshot(ctx, SnapshotOptions{}); !errors.Is(err, ErrNotFound) {
		t.Errorf("snapshot of the deleted disk: %v, want ErrNotFound", err)
	}
	if _, err := a.OpenHead(ctx); !errors.Is(err, ErrNotFound) {
		t.Errorf("read of the deleted disk: %v, want ErrNotFound", err)
	}
	if err := a.Fold(ctx); !errors.Is(err, ErrNotFound) {
		t.Errorf("fold of the deleted disk: %v, want ErrNotFound", err)
	}
	gone("a")
	verifyClean(s)
	if after := len(objects(ChunkPrefix)); after >= before {
		t.Errorf("GC after the delete left %d chunk objects of %d", after, before)
	}
	if got, err := readAll(b); err != nil || !bytes.Equal(got, imgB) {
		t.Fatalf("the other disk after the delete and GC: %v", err)
	}

	// The id is free again, and the new disk is empty.
	a2, err := s.CreateDisk(ctx, "a", size, 4096)
	if err != nil {
		t.Fatal(err)
	}
	if got, err := readAll(a2); err != nil || !bytes.Equal(got, make([]byte, size)) {
		t.Fatalf("a disk created with a deleted one's id is not empty: %v", err)
	}
	if n := len(a2.Snapshots()); n != 0 {
		t.Fatalf("the new disk has %d snapshots", n)
	}

	// A deletion cut short right after the disk object went.
	fill(s, "c")
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := e.be.Delete(ctx, "disks/c"); err != nil {
		t.Fatal(err)
	}
	s = e.open(t)
	defer s.Close()
	if _, err := s.Disk("c"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("half-deleted disk after Open: %v", err)
	}
	gone("c")
	verifyClean(s)
	b, err = s.Disk("b")
	if err != nil {
		t.Fatal(err)
	}
	if got, err := readAll(b); err != nil || !bytes.Equal(got, imgB) {
		t.Fatalf("the other disk after a reopen: %v", err)
	}
}
