// Package protocol is the framed binary protocol between the agent and the
// replication server, carried over the mutual-TLS data-plane connection
// (port 1500). docs/protocol.md documents every message byte by byte.
//
// A frame is a 4-byte big-endian length (of what follows), a 1-byte message
// type and the message body; integers in bodies are little endian. The
// decoder bounds every allocation by the frame size (at most MaxFrame) and
// never panics on any input; it is fuzzed (FuzzDecode).
package protocol
