package export_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ferrymigrate/ferry/export"
	"github.com/ferrymigrate/ferry/internal/testimage"
	"github.com/ferrymigrate/ferry/launch"
	"github.com/ferrymigrate/ferry/launch/targettest"
	"github.com/ferrymigrate/ferry/nbd"
)

// requireQEMUImg skips loudly without qemu-img, or fails with
// FERRY_TEST_REQUIRE_ALL=1.
func requireQEMUImg(t *testing.T) {
	t.Helper()
	if _, err := exec.LookPath("qemu-img"); err != nil {
		msg := "SKIP: qemu-img not installed (scripts/setup.sh installs qemu-utils)"
		if os.Getenv("FERRY_TEST_REQUIRE_ALL") == "1" {
			t.Fatal(msg + "; FERRY_TEST_REQUIRE_ALL=1 forbids skips")
		}
		t.Skip(msg)
	}
}

// fileDevice is a raw image file as an nbd.Device.
type fileDevice struct {
	*os.File
	size int64
}

func (d fileDevice) Size() int64 { return d.size }

// opener resolves the suite's NBD URLs (targettest.ServeImage serves the
// image as export "snapshot") to the image file itself, as the server's
// launcher resolves its export names to snapshot readers. A URL whose
// socket does not exist fails, like an unreachable export.
func opener(t *testing.T, path string) func(context.Context, string) (nbd.Device, error) {
	return func(ctx context.Context, nbdURL string) (nbd.Device, error) {
		u, err := url.Parse(nbdURL)
		if err != nil {
			return nil, err
		}
		sock := u.Query().Get("socket")
		if fi, err := os.Stat(sock); err != nil || fi.Mode()&os.ModeSocket == 0 {
			return nil, fmt.Errorf("export %s: no NBD server at %s", u.Path, sock)
		}
		if u.Path != "/snapshot" {
			return nil, fmt.Errorf("export %s: %w", u.Path, nbd.ErrUnknownExport)
		}
		f, err := os.Open(path)
		if err != nil {
			return nil, err
		}
		t.Cleanup(func() { f.Close() })
		fi, err := f.Stat()
		if err != nil {
			return nil, err
		}
		return fileDevice{f, fi.Size()}, nil
	}
}

// checkImage fails t unless the instance's image holds the source image
// and the manifest's checksum and sizes are right.
func checkImage(t *testing.T, tg *export.Target, inst *launch.Instance, src string) {
	t.Helper()
	m, err := tg.ReadManifest(inst.ID)
	if err != nil {
		t.Fatal(err)
	}
	if len(m.Disks) != 1 || len(inst.Overlays) != 1 {
		t.Fatalf("manifest %+v for instance %+v", m, inst)
	}
	d := m.Disks[0]
	b, err := os.ReadFile(inst.Overlays[0])
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(b)
	if d.SHA256 != hex.EncodeToString(sum[:]) || d.FileSize != int64(len(b)) {
		t.Errorf("manifest disk %+v: file has sha256 %x, %d bytes", d, sum, len(b))
	}
	fi, err := os.Stat(src)
	if err != nil {
		t.Fatal(err)
	}
	if d.VirtualSize != fi.Size() || !d.Boot {
		t.Errorf("manifest disk %+v, want virtual size %d and boot", d, fi.Size())
	}
	out, err := exec.Command("qemu-img", "compare", "-f", "raw", "-F", d.Format, src, inst.Overlays[0]).CombinedOutput()
	if err != nil {
		t.Errorf("qemu-img compare source with %s image: %v: %s", d.Format, err, out)
	}
}

func TestConformance(t *testing.T) {
	requireQEMUImg(t)
	img := testimage.ForTest(t)
	var last *export.Target
	newTarget := func(t *testing.T, dir string) launch.Target {
		last = export.New(dir, opener(t, img.Path))
		return last
	}
	targettest.Run(t, newTarget, targettest.Image{
		Path:       img.Path,
		BootMarker: testimage.BootMarker,
		HTTPPort:   testimage.HTTPPort,
		HTTPBody:   testimage.HTTPBody,
	}, targettest.Options{
		Files: true,
		CheckFiles: func(t *testing.T, inst *launch.Instance, img targettest.Image) {
			checkImage(t, last, inst, img.Path)
		},
	})
}

// TestFormats writes each format and checks the manifest and the content.
func TestFormats(t *testing.T) {
	requireQEMUImg(t)
	img := testimage.ForTest(t)
	u := targettest.ServeImage(t, img.Path)
	for _, format := range nbd.ExportFormats() {
		t.Run(format, func(t *testing.T) {
			dir := t.TempDir()
			tg := export.New(dir, opener(t, img.Path))
			tg.Format = format
			src := launch.Source{ServerID: "s-1", Hostname: "web-01", OS: "Debian 12", CPUs: 2, RAMBytes: 2 << 30}
			inst, err := tg.Launch(context.Background(), launch.Spec{
				Name: "exp", CPUs: 2, MemoryMiB: 2048, BootMode: launch.UEFI, Source: src,
				Disks: []launch.DiskSource{{NBDURL: u, Name: "sda", Snapshot: "snap-7"}},
			})
			if err != nil {
				t.Fatal(err)
			}
			checkImage(t, tg, inst, img.Path)
			m, err := tg.ReadManifest(inst.ID)
			if err != nil {
				t.Fatal(err)
			}
			if m.Source != src || m.BootMode != launch.UEFI || m.Disks[0].Snapshot != "snap-7" || m.Disks[0].SourceName != "sda" ||
				m.Disks[0].Format != format || !strings.HasPrefix(filepath.Base(inst.Overlays[0]), "disk0.") {
				t.Errorf("manifest %+v", m)
			}
			if err := tg.Terminate(context.Background(), inst.ID); err != nil {
				t.Fatal(err)
			}
			targettest.CheckNothingLeft(t, dir)
		})
	}
}

func TestUnknownFormat(t *testing.T) {
	dir := t.TempDir()
	tg := &export.Target{Dir: dir, Format: "vhdx", Open: opener(t, "/nonexistent")}
	_, err := tg.Launch(context.Background(), launch.Spec{
		Name: "x", CPUs: 1, MemoryMiB: 64, Disks: []launch.DiskSource{{NBDURL: "nbd+unix:///snapshot?socket=/nonexistent"}},
	})
	if !errors.Is(err, launch.ErrNotSupported) || !strings.Contains(err.Error(), "qcow2") {
		t.Fatalf("Launch = %v, want ErrNotSupported naming the formats", err)
	}
	targettest.CheckNothingLeft(t, dir)
}
