// Package dataplane is the replication server's listener (port 1500):
// agents connect over TLS 1.3 with the client certificate issued at
// pairing, and nothing else is accepted. Each connection is checked
// against the metadata store, so a disconnected or re-paired server's old
// certificate stops working at once.
//
// Today it authenticates agents, records them as seen and keeps the
// connection open as the agent's presence; the replication protocol
// (docs/protocol.md) is carried on these connections.
package dataplane
