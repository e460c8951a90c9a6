// Package qemu is the launch target that runs instances as local
// qemu-system-x86_64 processes.
//
// Each instance boots from copy-on-write qcow2 overlays whose backing files
// are the snapshots' NBD exports, so launching copies nothing and never
// writes to a snapshot. QEMU runs daemonized with a pidfile, its serial
// console written to a log file and a QMP socket for control; user-mode NAT
// forwards host ports into the guest. Guests run under KVM when a probe
// shows KVM really runs a guest (it switches to protected mode and returns
// from an interrupt, which a broken nested or paravirtual KVM fails), and
// under TCG otherwise.
//
// Every instance has a JSON state file in the target's directory, so a
// Target created after a restart finds, reports and terminates instances
// an earlier one launched.
//
// Requires qemu-system-x86_64 and qemu-img (Debian: qemu-system-x86,
// qemu-utils); UEFI boot also needs OVMF (Debian: ovmf).
package qemu
