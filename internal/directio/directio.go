// Package directio holds what every O_DIRECT user in Ferry needs: the
// alignment and aligned buffers. The agent reads source disks with
// O_DIRECT (no page cache pollution on a production server), and the
// benches write their images and changes with it.
package directio

import "unsafe"

// Align is the alignment O_DIRECT needs for buffers, offsets and lengths
// on any Linux device and file system: the largest logical block size in
// use (4 KiB sectors), a multiple of the 512-byte ones.
const Align = 4096

// Buf returns n bytes whose first byte is Align-aligned. The Go heap
// gives no alignment guarantee, so it allocates Align more and slices.
func Buf(n int) []byte {
	b := make([]byte, n+Align)
	off := int((Align - uintptr(unsafe.Pointer(unsafe.SliceData(b)))%Align) % Align)
	return b[off : off+n : off+n]
}

// Aligned reports whether b's first byte is Align-aligned.
func Aligned(b []byte) bool {
	return uintptr(unsafe.Pointer(unsafe.SliceData(b)))%Align == 0
}

// Up rounds n up to a multiple of Align.
func Up(n int64) int64 {
	return (n + Align - 1) &^ (Align - 1)
}
