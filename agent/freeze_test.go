package agent

import (
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"testing"
	"time"
)

func TestMountsOn(t *testing.T) {
	mi := filepath.Join(t.TempDir(), "mountinfo")
	const text = `22 1 259:2 / / rw,relatime shared:1 - ext4 /dev/nvme0n1p2 rw
30 22 7:3 / /mnt/data\040dir rw,relatime shared:5 - ext4 /dev/loop3 rw
31 22 7:3 / /srv/bind rw,relatime shared:5 - ext4 /dev/loop3 rw
32 22 253:0 / /var/lib rw - xfs /dev/mapper/vg-lv rw
33 22 0:25 / /run rw - tmpfs tmpfs rw
`
	if err := os.WriteFile(mi, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		nums map[string]bool
		want []string
	}{
		{"loop with a bind mount", map[string]bool{"7:3": true}, []string{"/mnt/data dir"}},
		{"disk and its device-mapper holder", map[string]bool{"259:0": true, "259:2": true, "253:0": true}, []string{"/", "/var/lib"}},
		{"nothing mounted", map[string]bool{"8:16": true}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := mountsOn(mi, tt.nums)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Fatalf("got %q, want %q", got, tt.want)
			}
		})
	}
}

// A freeze ends by itself at its limit even if nobody thaws it.
func TestFreezeThawsOnTimer(t *testing.T) {
	if os.Geteuid() != 0 {
		if os.Getenv("FERRY_TEST_REQUIRE_ALL") == "1" {
			t.Fatal("needs root for a loop device, and FERRY_TEST_REQUIRE_ALL=1 forbids skipping")
		}
		t.Skip("SKIPPED: needs root for a loop device")
	}
	dir := t.TempDir()
	img := filepath.Join(dir, "fs.img")
	run := func(name string, args ...string) string {
		out, err := exec.Command(name, args...).CombinedOutput()
		if err != nil {
			t.Fatalf("%s %v: %v\n%s", name, args, err, out)
		}
		return string(out)
	}
	run("truncate", "-s", "64M", img)
	dev := run("losetup", "-f", "--show", img)
	dev = dev[:len(dev)-1]
	t.Cleanup(func() { exec.Command("losetup", "-d", dev).Run() })
	run("mkfs.ext4", "-q", "-F", dev)
	mnt := filepath.Join(dir, "mnt")
	os.Mkdir(mnt, 0o755)
	run("mount", dev, mnt)
	t.Cleanup(func() { exec.Command("fsfreeze", "-u", mnt).Run(); exec.Command("umount", mnt).Run() })

	nums, err := devNums(dev)
	if err != nil {
		t.Fatal(err)
	}
	mounts, err := mountsOn("/proc/self/mountinfo", nums)
	if err != nil || len(mounts) != 1 {
		t.Fatalf("mounts of %s: %q, %v", dev, mounts, err)
	}
	fz, err := freezeMounts(mounts, 300*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if err := os.WriteFile(filepath.Join(mnt, "f"), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	blocked := time.Since(start)
	if blocked < 200*time.Millisecond || blocked > 1500*time.Millisecond {
		t.Fatalf("a write during a 300 ms freeze waited %v", blocked)
	}
	if err := fz.Thaw(); err != nil {
		t.Fatalf("a second thaw: %v", err)
	}
	t.Logf("write blocked %v by a freeze limited to 300 ms", blocked.Round(time.Millisecond))
}
