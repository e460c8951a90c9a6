package agent

import (
	"bytes"
	"crypto/rand"
	"os"
	"path/filepath"
	"testing"
)

// testDevice opens a file holding data as a device, closed when the test
// ends.
func testDevice(t *testing.T, data []byte) *device {
	t.Helper()
	path := filepath.Join(t.TempDir(), "dev.img")
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	d, err := openDevice(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(d.close)
	return d
}

// readAt returns the same bytes as the file for aligned, unaligned and
// past-the-end ranges, through O_DIRECT where the file system allows it.
func TestDeviceReadAt(t *testing.T) {
	data := make([]byte, 64<<10+1000)
	rand.Read(data)
	d := testDevice(t, data)
	for _, c := range []struct{ off, n int64 }{
		{0, 4096}, {4096, 8192}, {100, 5000}, {4095, 2}, {60 << 10, 8 << 10}, {int64(len(data)) - 10, 100}, {int64(len(data)) + 4096, 512},
	} {
		got := make([]byte, c.n)
		if err := d.readAt(got, c.off); err != nil {
			t.Fatalf("readAt(%d, %d): %v", c.off, c.n, err)
		}
		want := make([]byte, c.n)
		if c.off < int64(len(data)) {
			copy(want, data[c.off:])
		}
		if !bytes.Equal(got, want) {
			t.Fatalf("readAt(%d, %d) differs", c.off, c.n)
		}
	}
}
