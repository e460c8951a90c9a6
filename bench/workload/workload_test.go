package workload

import (
	"bytes"
	"os"
	"path/filepath"
	"syscall"
	"testing"
)

// TestWriteImageRestores checks that writing an image over one that was
// changed (as the bench's incremental runs change it) gives back the same
// bytes as a new image, with the zero half a hole again.
func TestWriteImageRestores(t *testing.T) {
	dir := t.TempDir()
	const size = 8 * MiB
	fresh, reused := filepath.Join(dir, "fresh.img"), filepath.Join(dir, "reused.img")
	if err := WriteImage(reused, size); err != nil {
		t.Fatal(err)
	}
	for _, seed := range []uint64{1, 2} {
		if err := ChangeBlocks(reused, size, 64, seed); err != nil {
			t.Skipf("O_DIRECT writes are not supported here: %v", err)
		}
	}
	// A longer image is cut back to size.
	f, err := os.OpenFile(reused, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.Write(bytes.Repeat([]byte{7}, MiB)); err != nil {
		t.Fatal(err)
	}
	f.Close()
	if err := WriteImage(reused, size); err != nil {
		t.Fatal(err)
	}
	if err := WriteImage(fresh, size); err != nil {
		t.Fatal(err)
	}
	a, err := os.ReadFile(fresh)
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(reused)
	if err != nil {
		t.Fatal(err)
	}
	if len(a) != size || !bytes.Equal(a, b) {
		t.Fatalf("restored image differs from a new one (%d and %d bytes)", len(a), len(b))
	}
	if !bytes.Equal(a[:size/2], make([]byte, size/2)) {
		t.Fatal("the first half is not zeros")
	}
	var st syscall.Stat_t
	if err := syscall.Stat(reused, &st); err != nil {
		t.Fatal(err)
	}
	if alloc := st.Blocks * 512; alloc > size/2+MiB {
		t.Errorf("restored image has %d bytes allocated, want about %d: the zero half is not a hole", alloc, size/2)
	}
}
