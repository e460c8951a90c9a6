package testimage

import (
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
)

const (
	// BootMarker is the line the image's init prints on the serial console
	// (ttyS0) once its network and HTTP server are up.
	BootMarker = "FERRY-BOOT-OK"
	// HTTPPort is the guest TCP port the image serves HTTP on.
	HTTPPort = 80
	// HTTPBody is the body the image serves at "/" (a file on the root
	// file system, /www/index.html).
	HTTPBody = "ferry test image\n"
	// GuestAddr is the guest's static address on QEMU's user-mode network.
	GuestAddr = "10.0.2.15"
	// GuestAgentChannel is the virtio-serial port the image's QEMU guest
	// agent (Debian's qemu-ga) listens on, when the machine has one.
	GuestAgentChannel = "org.qemu.guest_agent.0"
)

// builderVersion changes whenever the image layout changes, so cached
// images built by an older builder are not reused.
const builderVersion = "6"

// DefaultDebDir is where scripts/setup.sh downloads the kernel package.
const DefaultDebDir = "/var/cache/ferry/testimage"

// Image is a built disk image. Path is shared by every user of the cache:
// read it, serve it, copy it, but do not write to it.
type Image struct {
	Path string // raw disk image
	Size int64  // bytes

	// Kernel and Initrd are copies of what the boot partition holds, for
	// direct kernel boot.
	Kernel, Initrd string
	KernelVersion  string
}

// Options configure [Build]. The zero value uses the defaults.
type Options struct {
	// DebDir holds linux-image-*-amd64_*.deb and
	// qemu-guest-agent_*_amd64.deb; default $FERRY_TESTIMAGE_DEBS or
	// [DefaultDebDir]. When it lacks one, Build downloads it there with
	// apt-get download.
	DebDir string
	// CacheDir holds built images; default $TMPDIR/ferry-testimage.
	CacheDir string
	// Busybox is a statically linked busybox; default the "busybox" on PATH.
	Busybox string
}

// ErrMissingTool is wrapped by Build's error when a tool or package the
// builder needs is not installed; scripts/setup.sh installs them.
var ErrMissingTool = errors.New("missing tool (run scripts/setup.sh)")

// requiredTools are the programs Build runs.
var requiredTools = []string{"dpkg-deb", "tar", "mkfs.ext4", "mkfs.vfat", "mcopy", "syslinux"}

// syslinux files taken from Debian's syslinux and syslinux-common packages.
const (
	syslinuxMBR     = "/usr/lib/syslinux/mbr/mbr.bin"
	syslinuxModules = "/usr/lib/syslinux/modules/bios"
)

// initramfsModules are loaded by the initramfs, with their dependencies.
// button and evdev let the guest see the ACPI power button (QMP
// system_powerdown), which busybox acpid turns into a clean power-off.
// virtio_console gives the guest agent its virtio-serial port.
var initramfsModules = []string{"virtio_pci", "virtio_blk", "virtio_net", "virtio_console", "crc32c_generic", "ext4", "button", "evdev"}

// Build returns the test image, building it unless the cache already holds
// one built from the same inputs. Concurrent callers, in this process or
// others, build it once.
func Build(ctx context.Context, opts Options) (*Image, error) {
	for _, tool := range requiredTools {
		if _, err := exec.LookPath(tool); err != nil {
			return nil, fmt.Errorf("testimage: %s not found: %w", tool, ErrMissingTool)
		}
	}
	for _, f := range []string{syslinuxMBR, filepath.Join(syslinuxModules, "ldlinux.c32")} {
		if _, err := os.Stat(f); err != nil {
			return nil, fmt.Errorf("testimage: %s (syslinux-common): %w", f, ErrMissingTool)
		}
	}
	if opts.Busybox == "" {
		p, err := exec.LookPath("busybox")
		if err != nil {
			return nil, fmt.Errorf("testimage: busybox (busybox-static) not found: %w", ErrMissingTool)
		}
		opts.Busybox = p
	}
	if opts.DebDir == "" {
		opts.DebDir = os.Getenv("FERRY_TESTIMAGE_DEBS")
	}
	if opts.DebDir == "" {
		opts.DebDir = DefaultDebDir
	}
	if opts.CacheDir == "" {
		opts.CacheDir = filepath.Join(os.TempDir(), "ferry-testimage")
	}
	deb, err := findKernelDeb(ctx, opts.DebDir)
	if err != nil {
		return nil, err
	}
	qgaDeb, err := findDeb(ctx, opts.DebDir, "qemu-guest-agent_*_amd64.deb", "qemu-guest-agent")
	if err != nil {
		return nil, err
	}
	qga, err := unpackGuestAgent(ctx, qgaDeb)
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(qga.dir())
	key, err := cacheKey(append([]string{deb, qgaDeb, opts.Busybox, syslinuxMBR, filepath.Join(syslinuxModules, "ldlinux.c32"), "/usr/bin/syslinux"}, qga.libs...)...)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(opts.CacheDir, 0o755); err != nil {
		return nil, fmt.Errorf("testimage: create cache dir: %w", err)
	}
	lock, err := os.OpenFile(filepath.Join(opts.CacheDir, "lock"), os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, fmt.Errorf("testimage: open lock: %w", err)
	}
	defer lock.Close()
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX); err != nil {
		return nil, fmt.Errorf("testimage: lock cache: %w", err)
	}
	defer syscall.Flock(int(lock.Fd()), syscall.LOCK_UN)

	dir := filepath.Join(opts.CacheDir, key)
	img := &Image{
		Path:   filepath.Join(dir, "disk.raw"),
		Kernel: filepath.Join(dir, "vmlinuz"),
		Initrd: filepath.Join(dir, "initrd.img"),
	}
	if load(img, dir) {
		return img, nil
	}
	tmp, err := os.MkdirTemp(opts.CacheDir, "build-")
	if err != nil {
		return nil, fmt.Errorf("testimage: %w", err)
	}
	defer os.RemoveAll(tmp)
	if err := build(ctx, tmp, deb, opts.Busybox, qga); err != nil {
		return nil, err
	}
	os.RemoveAll(dir)
	if err := os.Rename(filepath.Join(tmp, "out"), dir); err != nil {
		return nil, fmt.Errorf("testimage: %w", err)
	}
	if !load(img, dir) {
		return nil, fmt.Errorf("testimage: built image missing from %s", dir)
	}
	pruneCache(opts.CacheDir, key)
	return img, nil
}

// pruneCache removes images built from other inputs (older kernels or
// builders) and builds abandoned by killed processes; it runs under the
// cache lock.
func pruneCache(cacheDir, keep string) {
	entries, _ := os.ReadDir(cacheDir)
	for _, e := range entries {
		if e.IsDir() && e.Name() != keep {
			os.RemoveAll(filepath.Join(cacheDir, e.Name()))
		}
	}
}

// load fills in img from a complete image in dir and reports whether there
// was one.
func load(img *Image, dir string) bool {
	v, err := os.ReadFile(filepath.Join(dir, "kernel-version"))
	if err != nil {
		return false
	}
	fi, err := os.Stat(img.Path)
	if err != nil {
		return false
	}
	img.Size = fi.Size()
	img.KernelVersion = string(v)
	return true
}

// findKernelDeb returns the newest linux-image-*-amd64 package in dir,
// downloading the one linux-image-amd64 depends on when there is none.
func findKernelDeb(ctx context.Context, dir string) (string, error) {
	glob := func() []string {
		m, _ := filepath.Glob(filepath.Join(dir, "linux-image-*-amd64_*_amd64.deb"))
		sort.Strings(m)
		return m
	}
	if m := glob(); len(m) > 0 {
		return m[len(m)-1], nil
	}
	out, err := exec.CommandContext(ctx, "apt-cache", "depends", "linux-image-amd64").Output()
	if err != nil {
		return "", fmt.Errorf("testimage: no kernel package in %s and apt-cache depends failed (%v): %w", dir, err, ErrMissingTool)
	}
	var pkg string
	for _, line := range strings.Split(string(out), "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), "Depends: "); ok && strings.HasPrefix(v, "linux-image-") {
			pkg = v
			break
		}
	}
	if pkg == "" {
		return "", fmt.Errorf("testimage: no kernel package in %s and none named by apt-cache: %w", dir, ErrMissingTool)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", fmt.Errorf("testimage: %w", err)
	}
	cmd := exec.CommandContext(ctx, "apt-get", "download", "-q", pkg)
	cmd.Dir = dir
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("testimage: apt-get download %s: %v: %s: %w", pkg, err, out, ErrMissingTool)
	}
	if m := glob(); len(m) > 0 {
		return m[len(m)-1], nil
	}
	return "", fmt.Errorf("testimage: apt-get download %s left no package in %s: %w", pkg, dir, ErrMissingTool)
}

// cacheKey hashes the builder version and the identity (name, size, mtime)
// of every input file.
func cacheKey(files ...string) (string, error) {
	h := sha256.New()
	fmt.Fprintln(h, builderVersion)
	for _, f := range files {
		fi, err := os.Stat(f)
		if err != nil {
			return "", fmt.Errorf("testimage: %w", err)
		}
		fmt.Fprintln(h, f, fi.Size(), fi.ModTime().UnixNano())
	}
	return hex.EncodeToString(h.Sum(nil))[:16], nil
}

func run(ctx context.Context, name string, args ...string) error {
	out, err := exec.CommandContext(ctx, name, args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("testimage: %s %s: %w: %s", name, strings.Join(args, " "), err, bytes.TrimSpace(out))
	}
	return nil
}

// Layout of the disk, in MiB: 1 MiB for the MBR and alignment, then the
// boot partition, then the root partition.
const (
	bootMiB = 32
	rootMiB = 48
)

// build writes the image and its kernel and initrd into tmp/out.
func build(ctx context.Context, tmp, deb, busybox string, qga *guestAgent) error {
	kx := filepath.Join(tmp, "kernel")
	if err := os.MkdirAll(kx, 0o755); err != nil {
		return fmt.Errorf("testimage: %w", err)
	}
	// dpkg-deb --fsys-tarfile DEB | tar -x (only the kernel and the module
	// directories the initramfs can need).
	deball := exec.CommandContext(ctx, "dpkg-deb", "--fsys-tarfile", deb)
	untar := exec.CommandContext(ctx, "tar", "-x", "-C", kx, "--wildcards",
		"./boot/vmlinuz-*", "./lib/modules/*/kernel/drivers/*", "./lib/modules/*/kernel/fs/*",
		"./lib/modules/*/kernel/lib/*", "./lib/modules/*/kernel/crypto/*", "./lib/modules/*/kernel/net/*")
	pipe, err := deball.StdoutPipe()
	if err != nil {
		return fmt.Errorf("testimage: %w", err)
	}
	untar.Stdin = pipe
	// One buffer each: exec copies each command's stderr in its own
	// goroutine, and a shared bytes.Buffer would be written by both at once.
	var debErr, tarErr bytes.Buffer
	deball.Stderr, untar.Stderr = &debErr, &tarErr
	if err := deball.Start(); err != nil {
		return fmt.Errorf("testimage: dpkg-deb: %w", err)
	}
	errTar := untar.Run()
	errDeb := deball.Wait()
	if err := errors.Join(errDeb, errTar); err != nil {
		return fmt.Errorf("testimage: unpack %s: %w: %s%s", deb, err, debErr.Bytes(), tarErr.Bytes())
	}
	kernels, _ := filepath.Glob(filepath.Join(kx, "boot", "vmlinuz-*"))
	mods, _ := filepath.Glob(filepath.Join(kx, "lib", "modules", "*"))
	if len(kernels) != 1 || len(mods) != 1 {
		return fmt.Errorf("testimage: %s holds %d kernels and %d module trees, want one each", deb, len(kernels), len(mods))
	}
	version := filepath.Base(mods[0])
	modules, err := moduleClosure(mods[0], initramfsModules)
	if err != nil {
		return fmt.Errorf("testimage: %w", err)
	}
	bb, err := os.ReadFile(busybox)
	if err != nil {
		return fmt.Errorf("testimage: read busybox: %w", err)
	}

	out := filepath.Join(tmp, "out")
	if err := os.MkdirAll(out, 0o755); err != nil {
		return fmt.Errorf("testimage: %w", err)
	}
	kernel := filepath.Join(out, "vmlinuz")
	if err := copyFile(kernels[0], kernel); err != nil {
		return err
	}
	initrd := filepath.Join(out, "initrd.img")
	if err := writeInitramfs(initrd, bb, modules); err != nil {
		return err
	}

	// Root file system.
	root := filepath.Join(tmp, "root")
	for _, d := range []string{"bin", "sbin", "dev", "proc", "sys", "tmp", "www", "etc/acpi/PWRF", "var/run", "var/log"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			return fmt.Errorf("testimage: %w", err)
		}
	}
	files := []struct {
		name string
		perm os.FileMode
		data []byte
	}{
		{"bin/busybox", 0o755, bb},
		{"sbin/init", 0o755, []byte(rootInit)},
		{"www/index.html", 0o644, []byte(HTTPBody)},
		{"etc/hostname", 0o644, []byte("ferry-test\n")},
		{"etc/acpi/PWRF/00000080", 0o755, []byte(powerButton)},
	}
	for _, f := range files {
		if err := os.WriteFile(filepath.Join(root, f.name), f.data, f.perm); err != nil {
			return fmt.Errorf("testimage: %w", err)
		}
	}
	if err := qga.install(root); err != nil {
		return err
	}
	rootImg := filepath.Join(tmp, "root.img")
	if err := run(ctx, "mkfs.ext4", "-q", "-F", "-L", "ferry-root", "-E", "root_owner=0:0", "-d", root, rootImg, fmt.Sprintf("%dM", rootMiB)); err != nil {
		return err
	}

	// Boot partition: FAT with SYSLINUX, the kernel and the initramfs.
	bootImg := filepath.Join(tmp, "boot.img")
	if err := run(ctx, "mkfs.vfat", "-n", "FERRYBOOT", "-C", bootImg, fmt.Sprint(bootMiB*1024)); err != nil {
		return err
	}
	if err := run(ctx, "syslinux", "--install", bootImg); err != nil {
		return err
	}
	cfg := filepath.Join(tmp, "syslinux.cfg")
	if err := os.WriteFile(cfg, []byte(syslinuxCfg), 0o644); err != nil {
		return fmt.Errorf("testimage: %w", err)
	}
	if err := run(ctx, "mcopy", "-i", bootImg, kernel, "::/vmlinuz"); err != nil {
		return err
	}
	if err := run(ctx, "mcopy", "-i", bootImg, initrd, "::/initrd.img"); err != nil {
		return err
	}
	if err := run(ctx, "mcopy", "-i", bootImg, cfg, "::/syslinux.cfg"); err != nil {
		return err
	}

	// The disk: MBR with SYSLINUX's boot code, then the two partitions.
	code, err := os.ReadFile(syslinuxMBR)
	if err != nil {
		return fmt.Errorf("testimage: %w", err)
	}
	const mib = 2048 // sectors
	parts := []partition{
		{Active: true, Type: 0x0e, Start: 1 * mib, Size: bootMiB * mib},
		{Type: 0x83, Start: (1 + bootMiB) * mib, Size: rootMiB * mib},
	}
	mbr, err := mbrSector(code, 0xfe77a001, parts)
	if err != nil {
		return fmt.Errorf("testimage: %w", err)
	}
	disk, err := os.Create(filepath.Join(out, "disk.raw"))
	if err != nil {
		return fmt.Errorf("testimage: %w", err)
	}
	defer disk.Close()
	if err := disk.Truncate(int64(1+bootMiB+rootMiB) << 20); err != nil {
		return fmt.Errorf("testimage: %w", err)
	}
	if _, err := disk.WriteAt(mbr, 0); err != nil {
		return fmt.Errorf("testimage: write mbr: %w", err)
	}
	for i, src := range []string{bootImg, rootImg} {
		if err := copyAt(disk, src, int64(parts[i].Start)*512); err != nil {
			return err
		}
	}
	if err := disk.Close(); err != nil {
		return fmt.Errorf("testimage: %w", err)
	}
	return os.WriteFile(filepath.Join(out, "kernel-version"), []byte(version), 0o644)
}

// syslinuxCfg boots the kernel straight away, with its console on the
// first serial port.
const syslinuxCfg = `SERIAL 0 115200
DEFAULT linux
PROMPT 0
TIMEOUT 0
LABEL linux
  KERNEL /vmlinuz
  INITRD /initrd.img
  APPEND root=/dev/vda2 console=ttyS0,115200 loglevel=4 panic=-1
`

// initramfsInit loads the modules, mounts the root file system and hands
// over to its init. A failure powers the machine off (panic=-1 reboots
// it), so a broken image fails fast instead of hanging.
const initramfsInit = `#!/bin/busybox sh
/bin/busybox mkdir -p /proc /sys /dev /newroot
/bin/busybox mount -t devtmpfs devtmpfs /dev
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t sysfs sysfs /sys
/bin/busybox --install -s /bin
export PATH=/bin
echo "ferry-initramfs: loading modules"
for m in $(cat /modules.order); do insmod /lib/modules/$m; done
root=/dev/vda2
for a in $(cat /proc/cmdline); do case "$a" in root=*) root="${a#root=}";; esac; done
i=0
while [ ! -b "$root" ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done
if ! mount -t ext4 "$root" /newroot; then
	echo "ferry-initramfs: cannot mount $root"; ls /dev; sleep 1; poweroff -f
fi
mount --move /dev /newroot/dev
umount /proc /sys
exec switch_root /newroot /sbin/init
`

// rootInit is the root file system's init: network up on QEMU's user-mode
// network, HTTP server on /www, the QEMU guest agent on its virtio-serial
// port when the machine has one, then the boot marker.
const rootInit = `#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
hostname -F /etc/hostname
ip link set lo up
ip addr add ` + GuestAddr + `/24 dev eth0
ip link set eth0 up
ip route add default via 10.0.2.2
httpd -p 80 -h /www
acpid -c /etc/acpi -l /var/log/acpid.log
for p in /sys/class/virtio-ports/*; do
	[ "$(cat $p/name 2>/dev/null)" = ` + GuestAgentChannel + ` ] || continue
	/sbin/qemu-ga -d -m virtio-serial -p /dev/${p##*/} -f /var/run/qemu-ga.pid -t /var/run || echo "ferry-test: qemu-ga failed"
done
echo "` + BootMarker + `"
while true; do sleep 3600; done
`

// powerButton is run by busybox acpid when the ACPI power button is
// pressed: flush the disk and power off.
const powerButton = `#!/bin/sh
echo "ferry-test: power button, powering off"
sync
mount -o remount,ro /
poweroff -f
`

func writeInitramfs(path string, busybox []byte, modules []string) error {
	var buf bytes.Buffer
	zw, _ := gzip.NewWriterLevel(&buf, gzip.BestSpeed)
	c := &cpioWriter{w: zw}
	for _, d := range []string{"bin", "dev", "proc", "sys", "newroot", "lib", "lib/modules"} {
		c.Dir(d)
	}
	c.CharDev("dev/console", 0o600, 5, 1)
	c.CharDev("dev/null", 0o666, 1, 3)
	c.File("bin/busybox", 0o755, busybox)
	c.File("init", 0o755, []byte(initramfsInit))
	var order []string
	for _, m := range modules {
		data, err := os.ReadFile(m)
		if err != nil {
			return fmt.Errorf("testimage: %w", err)
		}
		c.File("lib/modules/"+filepath.Base(m), 0o644, data)
		order = append(order, filepath.Base(m))
	}
	c.File("modules.order", 0o644, []byte(strings.Join(order, "\n")+"\n"))
	if err := c.Close(); err != nil {
		return fmt.Errorf("testimage: write initramfs: %w", err)
	}
	if err := zw.Close(); err != nil {
		return fmt.Errorf("testimage: write initramfs: %w", err)
	}
	return os.WriteFile(path, buf.Bytes(), 0o644)
}

func copyFile(src, dst string) error {
	data, err := os.ReadFile(src)
	if err != nil {
		return fmt.Errorf("testimage: %w", err)
	}
	if err := os.WriteFile(dst, data, 0o644); err != nil {
		return fmt.Errorf("testimage: %w", err)
	}
	return nil
}

func copyAt(dst *os.File, src string, off int64) error {
	f, err := os.Open(src)
	if err != nil {
		return fmt.Errorf("testimage: %w", err)
	}
	defer f.Close()
	if _, err := io.Copy(io.NewOffsetWriter(dst, off), f); err != nil {
		return fmt.Errorf("testimage: copy %s into disk: %w", filepath.Base(src), err)
	}
	return nil
}
