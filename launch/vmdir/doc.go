// Package vmdir keeps the host files of instances that local launch
// targets (qemu, libvirt) run: the directory of each instance, its
// copy-on-write qcow2 overlays over the snapshots' NBD exports, and the
// JSON state file that lets a target started later (after a server
// restart) find, report and terminate it. It also picks the host ports of
// user-mode port forwards.
//
// The targets differ in how they start and stop a VM; what an instance
// leaves on disk is the same for both, so it is kept here once.
package vmdir
