package libguestfs

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ferrymigrate/ferry/internal/testimage"
)

func TestRewriteFstab(t *testing.T) {
	in := "# /etc/fstab\n/dev/vda2 / ext4 errors=remount-ro 0 1\nUUID=abcd /home ext4 defaults 0 2\n/dev/sdb1\t/data\txfs\tdefaults\t0 2\nproc /proc proc defaults 0 0\n/dev/nvme0n1p3 none swap sw 0 0\n"
	uuids := map[string]string{"/dev/vda2": "1111", "/dev/sdb1": "2222", "/dev/nvme0n1p3": ""}
	got, done := rewriteFstab(in, func(dev string) string { return uuids[dev] })
	want := "# /etc/fstab\nUUID=1111 / ext4 errors=remount-ro 0 1\nUUID=abcd /home ext4 defaults 0 2\nUUID=2222\t/data\txfs\tdefaults\t0 2\nproc /proc proc defaults 0 0\n/dev/nvme0n1p3 none swap sw 0 0\n"
	if got != want {
		t.Errorf("rewriteFstab:\ngot  %q\nwant %q", got, want)
	}
	if len(done) != 2 {
		t.Errorf("changes %v, want 2", done)
	}
}

func TestApplianceDevice(t *testing.T) {
	s := &session{disks: []string{"/dev/sda", "/dev/sdb"}}
	tests := []struct {
		guest, want string
		ok          bool
	}{
		{"/dev/vda2", "/dev/sda2", true},
		{"/dev/sda", "/dev/sda", true},
		{"/dev/xvdb1", "/dev/sdb1", true},
		{"/dev/hdb", "/dev/sdb", true},
		{"/dev/nvme1n1p3", "/dev/sdb3", true},
		{"/dev/vdc1", "", false},
		{"/dev/mapper/root", "", false},
		{"/dev/sda1/../x", "", false},
	}
	for _, tt := range tests {
		got, ok := s.applianceDevice(tt.guest)
		if got != tt.want || ok != tt.ok {
			t.Errorf("applianceDevice(%q) = %q, %v; want %q, %v", tt.guest, got, ok, tt.want, tt.ok)
		}
	}
}

func TestValidGuestPath(t *testing.T) {
	for p, want := range map[string]bool{
		"/etc/fstab": true, "/etc/../etc/fstab": false, "etc/fstab": false, "/etc/fstab/": false,
		"/etc/a\nb": false, "/": true, "": false,
	} {
		if got := validGuestPath(p); got != want {
			t.Errorf("validGuestPath(%q) = %v, want %v", p, got, want)
		}
	}
}

// requireGuestfish skips loudly without libguestfs, or fails with
// FERRY_TEST_REQUIRE_ALL=1.
func requireGuestfish(t *testing.T, err error) {
	t.Helper()
	if err == nil {
		return
	}
	msg := "SKIP: " + err.Error()
	if os.Getenv("FERRY_TEST_REQUIRE_ALL") == "1" {
		t.Fatal(msg + "; FERRY_TEST_REQUIRE_ALL=1 forbids skips")
	}
	t.Skip(msg)
}

// TestConvertTestImage converts an overlay of the busybox test image whose
// copy has an fstab naming devices: the fstab is rewritten to UUIDs (seen
// afterwards with guestfish), every other step reports why it changed
// nothing, and the overlay's backing file is untouched.
func TestConvertTestImage(t *testing.T) {
	c := &Converter{}
	requireGuestfish(t, c.Available())
	img := testimage.ForTest(t)
	ctx := context.Background()
	dir := t.TempDir()
	base := filepath.Join(dir, "base.raw")
	if out, err := exec.Command("cp", "--sparse=always", img.Path, base).CombinedOutput(); err != nil {
		t.Fatalf("copy image: %v: %s", err, out)
	}
	const fstab = "# test\n/dev/vda2 / ext4 defaults 0 1\n/dev/vda1 /boot vfat defaults 0 2\n"
	if err := testimage.WriteFile(ctx, base, "/etc/fstab", []byte(fstab)); err != nil {
		t.Fatal(err)
	}
	overlay := filepath.Join(dir, "disk0.qcow2")
	if out, err := exec.Command("qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b", base, overlay).CombinedOutput(); err != nil {
		t.Fatalf("create overlay: %v: %s", err, out)
	}

	start := time.Now()
	changes, err := c.Convert(ctx, []string{overlay}, []string{"qcow2"}, Options{CloudInit: &CloudInit{UserData: "#cloud-config\n"}})
	if errors.Is(err, ErrUnavailable) {
		requireGuestfish(t, err)
	}
	if err != nil {
		t.Fatalf("Convert: %v (changes so far %v)", err, changes)
	}
	t.Logf("conversion took %v", time.Since(start).Round(time.Millisecond))
	got := map[string]Change{}
	for _, ch := range changes {
		t.Logf("change: %s", ch)
		got[ch.Step] = ch
	}
	if ch := got["fstab"]; !ch.Applied || !strings.Contains(ch.Detail, "/dev/vda2 → UUID=") || !strings.Contains(ch.Detail, "/dev/vda1 → UUID=") {
		t.Errorf("fstab change %+v, want both entries moved to UUIDs", ch)
	}
	for _, step := range []string{"persistent-net", "network", "initramfs", "cloud-init"} {
		if ch, ok := got[step]; !ok || ch.Applied || ch.Detail == "" {
			t.Errorf("%s: %+v, want a no-op with its reason", step, ch)
		}
	}

	cat := exec.Command("guestfish", "--ro", "--format=qcow2", "-a", overlay, "-m", "/dev/sda2", "--", "cat", "/etc/fstab")
	cat.Env = append(os.Environ(), DefaultEnv...)
	out, err := cat.CombinedOutput()
	if err != nil {
		t.Fatalf("guestfish cat /etc/fstab: %v: %s", err, out)
	}
	t.Logf("fstab in the overlay after conversion:\n%s", out)
	if strings.Contains(string(out), "/dev/vda") || strings.Count(string(out), "UUID=") != 2 {
		t.Errorf("fstab after conversion:\n%s", out)
	}
	if b, err := testimage.ReadFile(ctx, base, "/etc/fstab"); err != nil || string(b) != fstab {
		t.Errorf("the overlay's backing file changed: fstab %q, %v", b, err)
	}
}
