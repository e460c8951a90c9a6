package fs

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ferrymigrate/ferry/replica/backend"
	"github.com/ferrymigrate/ferry/replica/backendtest"
)

func TestConformance(t *testing.T) {
	backendtest.Run(t, func(t *testing.T) backend.Backend {
		b, err := Open(t.TempDir())
		if err != nil {
			t.Fatal(err)
		}
		return b
	})
}

func TestOpenRemovesTemporaryFiles(t *testing.T) {
	dir := t.TempDir()
	b, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Put(context.Background(), "keep", []byte("x")); err != nil {
		t.Fatal(err)
	}
	stale := filepath.Join(dir, tmpDir, "leftover")
	if err := os.WriteFile(stale, []byte("partial"), 0o600); err != nil {
		t.Fatal(err)
	}
	b.Close()
	b, err = Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if _, err := os.Stat(stale); !os.IsNotExist(err) {
		t.Errorf("stale temporary file still present after Open: %v", err)
	}
	n := 0
	if err := b.List(context.Background(), "", func(name string, _ int64) error { n++; return nil }); err != nil {
		t.Fatal(err)
	}
	if n != 1 {
		t.Errorf("List found %d objects, want 1", n)
	}
}

func TestBatchAbortLeavesNothing(t *testing.T) {
	dir := t.TempDir()
	b, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	bt := b.NewBatch()
	for i := 0; i < batchMaxOpen+3; i++ {
		if err := bt.Put(ctx, "chunks/aa/x"+strings.Repeat("0", i%5)+string(rune('a'+i%26)), []byte("data")); err != nil {
			t.Fatal(err)
		}
	}
	bt.Abort()
	if err := bt.Commit(ctx); err == nil {
		t.Error("Commit after Abort succeeded")
	}
	n := 0
	if err := b.List(ctx, "", func(string, int64) error { n++; return nil }); err != nil {
		t.Fatal(err)
	}
	if n != 0 {
		t.Errorf("List found %d objects after Abort, want 0", n)
	}
	err = filepath.WalkDir(filepath.Join(dir, tmpDir), func(p string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			t.Errorf("temporary file %s left after Abort", p)
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
}

func TestConformancePacked(t *testing.T) {
	for _, size := range []int64{1, 4 << 10, defaultPackSize} {
		t.Run(fmt.Sprintf("packsize=%d", size), func(t *testing.T) {
			backendtest.Run(t, func(t *testing.T) backend.Backend {
				b, err := Open(t.TempDir(), Packed(""), PackSize(size))
				if err != nil {
					t.Fatal(err)
				}
				return b
			})
		})
	}
}
