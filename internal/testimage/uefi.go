package testimage

import (
	"bytes"
	"compress/gzip"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
)

// UEFIBootMarker is the line the UEFI image's init prints on the serial
// console (ttyS0) once the kernel GRUB loaded under UEFI firmware runs.
const UEFIBootMarker = "FERRY-UEFI-BOOT-OK"

// uefiTools are the programs BuildUEFI runs (grub-efi-amd64-bin, mtools,
// dosfstools).
var uefiTools = []string{"grub-mkstandalone", "mkfs.vfat", "mmd", "mcopy"}

// grubEFIModules is where grub-efi-amd64-bin keeps the x86_64-efi modules.
const grubEFIModules = "/usr/lib/grub/x86_64-efi"

// espMiB is the size of the UEFI image's EFI system partition.
const espMiB = 48

// BuildUEFI writes dir/uefi.raw, a disk that boots only under UEFI
// firmware (OVMF): an MBR whose one partition is an EFI system partition
// (type 0xEF, FAT, made without mounting) holding \EFI\BOOT\BOOTX64.EFI, a
// GRUB image from grub-mkstandalone with its grub.cfg built in, and
// base's kernel with a busybox initramfs that prints UEFIBootMarker on
// the serial console. There is no boot code in the MBR, so BIOS firmware
// finds nothing to boot. It takes a second or two; the result is not
// cached. Errors wrap ErrMissingTool when a tool is not installed.
func BuildUEFI(ctx context.Context, base *Image, dir string) (*Image, error) {
	for _, tool := range uefiTools {
		if _, err := exec.LookPath(tool); err != nil {
			return nil, fmt.Errorf("testimage: %s not found: %w", tool, ErrMissingTool)
		}
	}
	if _, err := os.Stat(filepath.Join(grubEFIModules, "linux.mod")); err != nil {
		return nil, fmt.Errorf("testimage: %s (grub-efi-amd64-bin): %w", grubEFIModules, ErrMissingTool)
	}
	busybox, err := exec.LookPath("busybox")
	if err != nil {
		return nil, fmt.Errorf("testimage: busybox (busybox-static) not found: %w", ErrMissingTool)
	}
	bb, err := os.ReadFile(busybox)
	if err != nil {
		return nil, fmt.Errorf("testimage: read busybox: %w", err)
	}
	tmp, err := os.MkdirTemp(dir, "uefi-build-")
	if err != nil {
		return nil, fmt.Errorf("testimage: %w", err)
	}
	defer os.RemoveAll(tmp)

	cfg := filepath.Join(tmp, "grub.cfg")
	if err := os.WriteFile(cfg, []byte(grubCfg), 0o644); err != nil {
		return nil, fmt.Errorf("testimage: %w", err)
	}
	efi := filepath.Join(tmp, "BOOTX64.EFI")
	// Only the modules grub.cfg needs, in the image's memdisk: the whole
	// set would triple its size.
	if err := run(ctx, "grub-mkstandalone", "-O", "x86_64-efi", "-o", efi,
		"--install-modules=part_msdos fat search search_fs_file linux normal configfile echo serial terminal all_video gzio",
		"--modules=part_msdos fat",
		"--locales=", "--fonts=", "--themes=",
		"boot/grub/grub.cfg="+cfg); err != nil {
		return nil, err
	}
	initrd := filepath.Join(tmp, "initrd.img")
	if err := writeUEFIInitramfs(initrd, bb); err != nil {
		return nil, err
	}
	esp := filepath.Join(tmp, "esp.img")
	if err := run(ctx, "mkfs.vfat", "-F", "32", "-n", "FERRYESP", "-C", esp, fmt.Sprint(espMiB*1024)); err != nil {
		return nil, err
	}
	if err := run(ctx, "mmd", "-i", esp, "::/EFI", "::/EFI/BOOT"); err != nil {
		return nil, err
	}
	marker := filepath.Join(tmp, "ferry-uefi")
	if err := os.WriteFile(marker, []byte("ferry UEFI test image\n"), 0o644); err != nil {
		return nil, fmt.Errorf("testimage: %w", err)
	}
	for _, c := range [][2]string{{efi, "::/EFI/BOOT/BOOTX64.EFI"}, {base.Kernel, "::/vmlinuz"}, {initrd, "::/initrd.img"}, {marker, "::/ferry-uefi"}} {
		if err := run(ctx, "mcopy", "-i", esp, c[0], c[1]); err != nil {
			return nil, err
		}
	}

	const mib = 2048 // sectors
	parts := []partition{{Type: 0xef, Start: 1 * mib, Size: espMiB * mib}}
	mbr, err := mbrSector(nil, 0xfe77a0e1, parts)
	if err != nil {
		return nil, fmt.Errorf("testimage: %w", err)
	}
	// Initrd stays empty: the one built here lives only on the ESP.
	img := &Image{Path: filepath.Join(dir, "uefi.raw"), Size: int64(1+espMiB) << 20, Kernel: base.Kernel, KernelVersion: base.KernelVersion}
	disk, err := os.Create(img.Path)
	if err != nil {
		return nil, fmt.Errorf("testimage: %w", err)
	}
	defer disk.Close()
	if err := disk.Truncate(img.Size); err != nil {
		return nil, fmt.Errorf("testimage: %w", err)
	}
	if _, err := disk.WriteAt(mbr, 0); err != nil {
		return nil, fmt.Errorf("testimage: write mbr: %w", err)
	}
	if err := copyAt(disk, esp, int64(parts[0].Start)*512); err != nil {
		return nil, err
	}
	if err := disk.Close(); err != nil {
		return nil, fmt.Errorf("testimage: %w", err)
	}
	return img, nil
}

// grubCfg finds the ESP by a file only it has, then boots the kernel with
// its console on the first serial port; GRUB's own output goes there too.
const grubCfg = `serial --unit=0 --speed=115200
terminal_input serial console
terminal_output serial console
set timeout=0
search --no-floppy --set=root --file /ferry-uefi
echo "ferry-grub: booting the kernel from $root"
linux /vmlinuz console=ttyS0,115200 loglevel=4 panic=-1
initrd /initrd.img
boot
`

// uefiInit prints the marker and waits; the kernel's built-in 8250 serial
// driver is all it needs.
const uefiInit = `#!/bin/busybox sh
/bin/busybox mkdir -p /proc /sys
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t sysfs sysfs /sys
[ -d /sys/firmware/efi ] && fw=UEFI || fw=BIOS
echo "` + UEFIBootMarker + ` firmware=$fw"
while true; do /bin/busybox sleep 3600; done
`

func writeUEFIInitramfs(path string, busybox []byte) error {
	var buf bytes.Buffer
	zw, _ := gzip.NewWriterLevel(&buf, gzip.BestSpeed)
	c := &cpioWriter{w: zw}
	for _, d := range []string{"bin", "dev", "proc", "sys"} {
		c.Dir(d)
	}
	c.CharDev("dev/console", 0o600, 5, 1)
	c.CharDev("dev/null", 0o666, 1, 3)
	c.File("bin/busybox", 0o755, busybox)
	c.File("init", 0o755, []byte(uefiInit))
	if err := c.Close(); err != nil {
		return fmt.Errorf("testimage: write initramfs: %w", err)
	}
	if err := zw.Close(); err != nil {
		return fmt.Errorf("testimage: write initramfs: %w", err)
	}
	return os.WriteFile(path, buf.Bytes(), 0o644)
}
