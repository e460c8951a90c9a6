// Package launch is the domain of launch targets: where a test or cutover
// instance of a replicated server runs.
//
// A [Spec] describes an instance (disks read from snapshot NBD exports,
// CPUs, memory, boot mode, port forwards); a [Target] starts it and returns
// the live [Instance]. Each target lives in a package named after the
// system it drives (qemu, libvirt, export); launch/targettest is the
// conformance suite every target passes.
//
// Launch reads snapshots only, never the live replica, so a launch never
// pauses replication.
package launch
