// Package export is the launch target that writes a snapshot's disks to
// image files (raw, qcow2 or vmdk) with a JSON manifest, for importing into
// another cloud.
//
// An "instance" of this target is a directory holding one image per disk
// and manifest.json (source server facts, disks with format, size, sha256
// and snapshot id, boot mode). Nothing runs: instances are in state
// launch.Exported, have no console, no network and no port forwards (a
// spec with forwards is refused with launch.ErrNotSupported). Terminate
// removes the files.
//
// Images are written with nbd.Export (qemu-img convert from a private NBD
// export of the snapshot), so the snapshot is only read. Requires qemu-img
// (Debian: qemu-utils).
package export
