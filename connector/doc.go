// Package connector is Ferry's agentless replication for QEMU/KVM, the
// SMS-style connector that runs beside a hypervisor instead of inside the
// source servers.
//
// For each QEMU process (reached over its QMP socket, package qmp) it
// discovers the VM's facts, and on each run of a replication job:
//
//   - in one QMP transaction starts image fleecing (a blockdev-backup
//     sync=none job into a temporary qcow2 overlay whose backing is the
//     disk: a stable point in time), disables the dirty bitmap of the
//     previous run and adds a new persistent one, and merges what the
//     previous bitmaps recorded into a temporary bitmap to export;
//   - exports the point in time read-only over NBD from QEMU itself
//     (nbd-server-start on a private unix socket, block-export-add);
//   - reads only the extents the qemu:dirty-bitmap context reports (the
//     first run reads what base:allocation reports as data), with package
//     nbd's client, and sends them over the agents' data plane (package
//     protocol), ending with a SNAPSHOT on every disk;
//   - cleans up the export and the fleecing node, and drops the previous
//     bitmap only after the server acknowledged the snapshot as durable.
//
// A bitmap that is missing (QEMU restarted, a raw disk that cannot persist
// bitmaps) or inconsistent (QEMU crashed) makes that disk's run a full
// hash comparison against the replica (HASH_REQUEST), never a silent gap.
//
// Each VM is its own source server with its own certificate (see
// docs/connector.md and docs/security.md). Jobs (schedule, retention,
// states as in AWS SMS) live in the connector's state directory.
package connector
