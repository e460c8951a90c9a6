package replica

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"
)

// TestSyncerBatches: syncs asked for together are served by one syncfs
// once enough wait, by parallel fdatasyncs below that, and by plain
// fdatasyncs after close; every caller gets its answer.
func TestSyncerBatches(t *testing.T) {
	dir := t.TempDir()
	s, err := newSyncer(dir, 4)
	if err != nil {
		t.Fatal(err)
	}
	var files []*os.File
	for i := range 64 {
		f, err := os.Create(filepath.Join(dir, fmt.Sprint(i)))
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		files = append(files, f)
	}
	if !s.covers(dir) {
		t.Fatal("the syncer does not cover its own directory")
	}
	if s.covers("/proc") {
		t.Error("the syncer covers /proc, another file system")
	}
	for round := range 20 {
		var wg sync.WaitGroup
		errs := make(chan error, len(files))
		for _, f := range files {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if _, err := f.Write([]byte("x")); err != nil {
					errs <- err
					return
				}
				errs <- s.sync(f)
			}()
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			if err != nil {
				t.Fatalf("round %d: %v", round, err)
			}
		}
	}
	s.mu.Lock()
	fds, sfs := s.fdatasyncs, s.syncfss
	s.mu.Unlock()
	t.Logf("1280 syncs: %d syncfs, %d fdatasync", sfs, fds)
	if sfs == 0 {
		t.Errorf("64 files synced at once 20 times: no syncfs, %d fdatasyncs", fds)
	}
	s.close()
	if err := s.sync(files[0]); err != nil {
		t.Errorf("sync after close: %v", err)
	}
}

// TestManyDisksShareSyncs: appends to many disks at once are all
// durable (they read back after a reopen) and share syncs.
func TestManyDisksShareSyncs(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t)
	s := e.open(t)
	const disks, writes = 64, 10
	var ds []*Disk
	for i := range disks {
		d, err := s.CreateDisk(ctx, fmt.Sprintf("d%02d", i), 1<<20, 4096)
		if err != nil {
			t.Fatal(err)
		}
		ds = append(ds, d)
	}
	var wg sync.WaitGroup
	errs := make(chan error, disks)
	for i, d := range ds {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for w := range writes {
				b := make([]byte, 4096)
				b[0], b[1] = byte(i), byte(w)
				if err := d.Write(ctx, uint64(w+1), int64(w)*4096, b); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	s.syncer.mu.Lock()
	fds, sfs := s.syncer.fdatasyncs, s.syncer.syncfss
	s.syncer.mu.Unlock()
	t.Logf("%d appends: %d syncfs, %d fdatasync", disks*writes, sfs, fds)
	if sfs+fds >= disks*writes {
		t.Errorf("%d appends took %d syncs: none shared", disks*writes, sfs+fds)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s = e.open(t)
	defer s.Close()
	for i := range disks {
		d, err := s.Disk(fmt.Sprintf("d%02d", i))
		if err != nil {
			t.Fatal(err)
		}
		want := make([]byte, 1<<20)
		for w := range writes {
			want[w*4096], want[w*4096+1] = byte(i), byte(w)
		}
		checkHead(t, d, want)
	}
}
