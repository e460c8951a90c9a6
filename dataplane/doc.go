// Package dataplane is the replication server inside `ferry server`: the
// listener (port 1500) that agents and the connector replicate into.
//
// Agents connect over TLS 1.3 with the client certificate issued at
// pairing, and nothing else is accepted. Each connection is checked
// against the metadata store, so a disconnected or re-paired server's old
// certificate stops working at once; one session per server, a newer one
// replacing the older.
//
// A session speaks the replication protocol (package protocol,
// docs/protocol.md): HELLO and its disk layout, WRITEs and ZEROs applied
// to the replica store (package replica) and acknowledged once durable,
// with write credit as flow control; HASH_REQUESTs answered from the
// replica for rescans; barriers that become snapshots (crash- or
// app-consistent); STATS and heartbeats. Alongside it, the session keeps
// the server's record in the metadata store current: the replication state
// (DeriveState, state.go), per-disk figures, lag and ETA, the lifecycle's
// move to READY_FOR_TEST when the initial sync is durable, and the
// replication error codes (STALLED, UNSTABLE_NETWORK in unstable.go,
// AGENT_NOT_SEEN in notseen.go). It sends the agent the operator's
// settings (bandwidth, pause/stop, disconnect from the service) as they
// change.
//
// Beyond sessions: point-in-time snapshot passes and their retention
// (pit.go), on-demand snapshots (snapshots.go), per-server traffic
// counters (traffic.go) and deleting a server's replica (delete.go).
package dataplane
