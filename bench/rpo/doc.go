// Package rpo measures continuous replication as an operator feels it:
// the recovery point (RPO) of each write, from its completion on the
// source to the replication server's durable acknowledgement of a
// record holding it (or a newer write to the same block), and the agent's
// CPU and memory while it keeps up.
//
// A writer in the bench process writes random 4 KiB blocks to a loop
// device with O_DIRECT at a set rate; every block carries a stamp (a
// magic and a sequence number) and its completion time is noted. The
// agent runs as its own `ferry agent` process with the eBPF tracker. The
// data plane runs in the bench process with an Observer that notes the
// stamps in every WRITE it applies and the time of every durable
// acknowledgement, so each write is matched to the acknowledgement that
// made it (or its successor) durable, with no sampling and no polling.
package rpo
