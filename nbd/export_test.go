package nbd

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestExport(t *testing.T) {
	qemuImg := requireBinary(t, "qemu-img")
	dir := t.TempDir()
	img := makeSparseImage(t, dir, integrationSize)
	dev := openFileDevice(t, img)
	for _, format := range ExportFormats() {
		t.Run(format, func(t *testing.T) {
			dst := filepath.Join(t.TempDir(), "out."+format)
			if err := Export(context.Background(), dev, format, dst); err != nil {
				t.Fatalf("Export: %v", err)
			}
			var info struct {
				Format      string `json:"format"`
				VirtualSize int64  `json:"virtual-size"`
				ActualSize  int64  `json:"actual-size"`
			}
			out := runCmd(t, qemuImg, "info", "--output=json", dst)
			if err := json.Unmarshal([]byte(out), &info); err != nil {
				t.Fatalf("parse qemu-img info: %v\n%s", err, out)
			}
			if info.Format != format || info.VirtualSize != integrationSize {
				t.Fatalf("qemu-img info: %s", out)
			}
			if info.ActualSize > integrationSize/2 {
				t.Errorf("%s export uses %d bytes for a 1/3-full %d-byte disk: not sparse", format, info.ActualSize, int64(integrationSize))
			}
			runCmd(t, qemuImg, "compare", "-f", format, "-F", "raw", dst, img)
			if leftovers, _ := filepath.Glob(filepath.Join(filepath.Dir(dst), ".*partial")); len(leftovers) != 0 {
				t.Errorf("temporary files left: %v", leftovers)
			}
		})
	}
}

func TestExportErrors(t *testing.T) {
	requireBinary(t, "qemu-img")
	data := make([]byte, 4*mib)
	dir := t.TempDir()
	tests := []struct {
		name    string
		dev     Device
		format  string
		dst     string
		want    []string // substrings of the error
		noFiles bool
	}{
		{name: "unknown format", dev: &memDevice{data: data}, format: "vhdx", dst: filepath.Join(dir, "a"),
			want: []string{`unsupported format "vhdx"`, "raw, qcow2, vmdk"}},
		{name: "device read error", dev: &memDevice{data: data, fail: 2 * mib}, format: "qcow2", dst: filepath.Join(dir, "b"),
			want: []string{"qemu-img convert", "injected media error", "offset"}},
		{name: "missing directory", dev: &memDevice{data: data}, format: "raw", dst: filepath.Join(dir, "no", "such", "dir", "c"),
			want: []string{"create temporary file"}},
		{name: "destination is a directory", dev: &memDevice{data: data}, format: "raw", dst: dir,
			want: []string{"not a regular file"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := Export(context.Background(), tt.dev, tt.format, tt.dst)
			if err == nil {
				t.Fatal("Export succeeded")
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q lacks %q", err, w)
				}
			}
			if tt.dst != dir {
				if _, serr := os.Stat(tt.dst); serr == nil {
					t.Errorf("failed export left %s", tt.dst)
				}
			}
		})
	}
	if left, _ := filepath.Glob(filepath.Join(dir, ".*")); len(left) != 0 {
		t.Errorf("temporary files left: %v", left)
	}
}

func TestExportCancel(t *testing.T) {
	requireBinary(t, "qemu-img")
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	err := Export(ctx, &memDevice{data: make([]byte, mib)}, "raw", filepath.Join(t.TempDir(), "x"))
	if err == nil || !strings.Contains(err.Error(), "context canceled") {
		t.Fatalf("Export with a cancelled context = %v", err)
	}
}
