// Package track is the agent's change tracking: what the source server
// wrote since the last look, as dirty byte extents per replicated device.
// The Tracker interface has two implementations: the eBPF tracker (package
// ebpf: a program on the block layer's request-completion tracepoint) and,
// where eBPF cannot load, a periodic rescan that compares block hashes.
// Either may declare that it lost track (overflow, detach, restart): the
// agent then rescans by hash comparison against the replica, never a full
// re-copy.
package track
