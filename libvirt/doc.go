// Package libvirt is the launch target that runs instances as transient
// libvirt domains, defined through libvirtd's RPC API (the pure-Go client
// github.com/digitalocean/go-libvirt on libvirtd's unix socket; no virsh,
// no cgo).
//
// Each instance boots from copy-on-write qcow2 overlays, created in the
// instance's directory with qemu-img as the qemu target does, whose
// backing is the snapshot's NBD export; the domain XML (built with
// encoding/xml) names the overlay as a file disk and the export as its
// network backingStore, so libvirt 9 opens the chain itself and a launch
// copies nothing. Spec.Prepare runs on the overlays before the domain
// starts. The serial console goes to console.log; the domain type is
// "kvm" when qemu.DetectAccel finds KVM really runs a guest, "qemu" (TCG)
// otherwise. Networking is QEMU user-mode NAT with host forwards passed
// through <qemu:commandline>: libvirt 9.0 only takes <portForward> with
// the passt backend. QEMU runs as the Ferry process's user (a static DAC
// seclabel without relabelling), so it can open the overlays and the NBD
// socket Ferry owns.
//
// Domains are transient: one that stops disappears from libvirt, and
// Terminate (ACPI shutdown, then destroy) leaves no definition behind.
// Every instance has a JSON state file in the target's directory, so a
// Target created after a restart finds, reports and terminates instances
// an earlier one launched.
//
// Requires a local libvirtd with the QEMU driver (Debian:
// libvirt-daemon-system, tested with libvirt 9.0.0 and QEMU 7.2), and
// qemu-img (qemu-utils).
package libvirt
