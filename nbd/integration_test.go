package nbd

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
)

// These tests drive the server with the real clients Ferry relies on:
// qemu-img (qemu-utils), nbdinfo and nbdcopy (libnbd-bin).

const integrationSize = 24*mib + 4096 // odd tail on purpose

// integrationSetup serves a sparse file image as "disk" and returns the
// image path, its bytes and the socket path.
func integrationSetup(t *testing.T) (string, []byte, string) {
	t.Helper()
	dir := t.TempDir()
	img := makeSparseImage(t, dir, integrationSize)
	want, err := os.ReadFile(img)
	if err != nil {
		t.Fatal(err)
	}
	sock := startServer(t, map[string]Device{"disk": openFileDevice(t, img)})
	return img, want, sock
}

func TestQemuImg(t *testing.T) {
	qemuImg := requireBinary(t, "qemu-img")
	img, want, sock := integrationSetup(t)
	uri := nbdURI(sock, "disk")

	t.Run("info", func(t *testing.T) {
		var info struct {
			VirtualSize int64  `json:"virtual-size"`
			Format      string `json:"format"`
		}
		out := runCmd(t, qemuImg, "info", "--output=json", uri)
		if err := json.Unmarshal([]byte(out), &info); err != nil {
			t.Fatalf("parse qemu-img info: %v\n%s", err, out)
		}
		if info.VirtualSize != integrationSize || info.Format != "raw" {
			t.Fatalf("qemu-img info: size %d format %q, want %d raw", info.VirtualSize, info.Format, integrationSize)
		}
	})
	t.Run("compare", func(t *testing.T) {
		runCmd(t, qemuImg, "compare", "-f", "raw", "-F", "raw", img, uri)
	})
	t.Run("convert", func(t *testing.T) {
		out := filepath.Join(t.TempDir(), "copy.raw")
		runCmd(t, qemuImg, "convert", "-f", "raw", "-O", "raw", uri, out)
		assertFileEqual(t, out, want)
		assertSparse(t, out)
	})
	t.Run("qcow2 overlay backed by the export", func(t *testing.T) {
		// How a test launch boots: a qcow2 overlay whose backing file is
		// the export.
		overlay := filepath.Join(t.TempDir(), "overlay.qcow2")
		runCmd(t, qemuImg, "create", "-f", "qcow2", "-b", uri, "-F", "raw", overlay)
		runCmd(t, qemuImg, "compare", "-f", "qcow2", "-F", "raw", overlay, img)
	})
}

func TestNbdinfoMap(t *testing.T) {
	nbdinfo := requireBinary(t, "nbdinfo")
	_, _, sock := integrationSetup(t)
	out := runCmd(t, nbdinfo, "--map", nbdURI(sock, "disk"))
	// Lines: offset length type description, e.g. "1048576 2097152 3 hole,zero".
	var got []Extent
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		f := strings.Fields(line)
		if len(f) < 4 {
			t.Fatalf("unexpected nbdinfo --map line %q", line)
		}
		off, _ := strconv.ParseInt(f[0], 10, 64)
		n, _ := strconv.ParseInt(f[1], 10, 64)
		got = append(got, Extent{Offset: off, Length: n, Zero: f[2] == "3"})
	}
	// The layout makeSparseImage wrote, merged.
	var want []Extent
	for off := int64(0); off < integrationSize; off += mib {
		n := min(mib, integrationSize-off)
		zero := (off/mib)%3 != 0 && off+mib < integrationSize
		if k := len(want); k > 0 && want[k-1].Zero == zero {
			want[k-1].Length += n
			continue
		}
		want = append(want, Extent{Offset: off, Length: n, Zero: zero})
	}
	if !equalExtents(got, want) {
		t.Fatalf("nbdinfo --map:\n%s\nwant extents %v", out, want)
	}
}

func equalExtents(a, b []Extent) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func TestNbdinfoReadOnly(t *testing.T) {
	nbdinfo := requireBinary(t, "nbdinfo")
	_, _, sock := integrationSetup(t)
	var info struct {
		Exports []struct {
			Name     string   `json:"export-name"`
			ReadOnly bool     `json:"is_read_only"`
			Size     int64    `json:"export-size"`
			Contexts []string `json:"contexts"`
			MultiCon bool     `json:"can_multi_conn"`
		} `json:"exports"`
	}
	out := runCmd(t, nbdinfo, "--json", nbdURI(sock, "disk"))
	if err := json.Unmarshal([]byte(out), &info); err != nil {
		t.Fatalf("parse nbdinfo --json: %v\n%s", err, out)
	}
	if len(info.Exports) != 1 {
		t.Fatalf("nbdinfo --json: %s", out)
	}
	e := info.Exports[0]
	if !e.ReadOnly || !e.MultiCon || e.Size != integrationSize || len(e.Contexts) != 1 || e.Contexts[0] != metaBaseAllocation {
		t.Fatalf("nbdinfo --json: %+v\n%s", e, out)
	}
}

func TestNbdcopy(t *testing.T) {
	nbdcopy := requireBinary(t, "nbdcopy")
	_, want, sock := integrationSetup(t)
	out := filepath.Join(t.TempDir(), "copy.raw")
	if err := os.WriteFile(out, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	// Several connections (CAN_MULTI_CONN) with many requests each.
	runCmd(t, nbdcopy, "--connections=4", "--requests=16", nbdURI(sock, "disk"), out)
	assertFileEqual(t, out, want)
}

func assertFileEqual(t *testing.T, name string, want []byte) {
	t.Helper()
	got, err := os.ReadFile(name)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("%s differs from the source (%d bytes, want %d)", name, len(got), len(want))
	}
}

// assertSparse checks that the holes of the test image stayed holes.
func assertSparse(t *testing.T, name string) {
	t.Helper()
	var st syscall.Stat_t
	if err := syscall.Stat(name, &st); err != nil {
		t.Fatal(err)
	}
	if used := st.Blocks * 512; used > integrationSize/2 {
		t.Fatalf("%s uses %d bytes of %d: not sparse", name, used, int64(integrationSize))
	}
}
