package nbd

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
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

// TestQemuSystemOverlay opens a qcow2 overlay backed by the export in
// qemu-system-x86_64, as a test launch does, and reads and writes through
// it with the monitor's qemu-io (no guest needed).
func TestQemuSystemOverlay(t *testing.T) {
	qemuImg := requireBinary(t, "qemu-img")
	qemuSystem := requireBinary(t, "qemu-system-x86_64")
	data := make([]byte, 4*mib)
	for i := range mib {
		data[i] = 0x5a
	}
	dev := memExtentDevice{&memDevice{data: data, holes: []Extent{{Offset: mib, Length: 3 * mib, Zero: true}}}}
	sock := startServer(t, map[string]Device{"snap": dev})
	overlay := filepath.Join(t.TempDir(), "overlay.qcow2")
	runCmd(t, qemuImg, "create", "-q", "-f", "qcow2", "-b", nbdURI(sock, "snap"), "-F", "raw", overlay)

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, qemuSystem, "-machine", "none", "-nodefaults", "-display", "none",
		"-monitor", "stdio", "-drive", "file="+overlay+",if=none,id=d0")
	cmd.Stdin = strings.NewReader(strings.Join([]string{
		`qemu-io d0 "read -P 0x5a 0 1M"`,
		`qemu-io d0 "read -P 0 1M 3M"`,
		`qemu-io d0 "write -P 0xab 4096 4096"`,
		`qemu-io d0 "read -P 0xab 4096 4096"`,
		`qemu-io d0 "read -P 0x5a 8192 1040384"`,
		"quit", ""}, "\n"))
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("qemu-system-x86_64: %v\n%s", err, out)
	}
	s := string(out)
	for _, want := range []string{"read 1048576/1048576 bytes", "read 3145728/3145728 bytes", "wrote 4096/4096 bytes", "read 4096/4096 bytes", "read 1040384/1040384 bytes"} {
		if !strings.Contains(s, want) {
			t.Errorf("qemu-io output lacks %q", want)
		}
	}
	if strings.Contains(s, "failed") || strings.Contains(s, "rror") {
		t.Errorf("qemu-io reports a failure")
	}
	if t.Failed() {
		t.Fatalf("qemu-io through the overlay:\n%s", s)
	}
	// The export itself is untouched: the write went to the overlay.
	if data[4096] != 0x5a {
		t.Fatal("write reached the device")
	}
}
