// Package testimage builds a small, real, bootable Linux disk for tests.
//
// The disk is a raw image with an MBR partition table: partition 1 is a FAT
// boot partition holding SYSLINUX, Debian's kernel (linux-image-amd64) and a
// tiny busybox initramfs that loads the virtio and ext4 modules; partition 2
// is an ext4 root file system holding busybox-static, whose init prints
// [BootMarker] to the serial console and serves HTTP on [HTTPPort]. The disk
// boots on its own through the BIOS, the way a migrated disk does; under
// QEMU TCG it reaches the marker in a few seconds.
//
// Building needs no root privileges: mkfs.ext4 -d fills the root file
// system, mkfs.vfat, mtools and syslinux write the boot partition, and the
// partition table is written here. The kernel is taken from its .deb
// (apt-get download, then unpacked) so the machine's /boot is not touched.
// scripts/setup.sh installs the tools and downloads the package.
//
// Built images are cached under the system temporary directory, keyed by
// every input, so tests in one run (and later runs) build an image once.
package testimage
