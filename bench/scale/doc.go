// Package scale measures one Ferry server holding many agents: it starts
// `ferry server` as its own process (so /proc shows the server's RSS and
// CPU alone), pairs N simulated agents through the control plane with a
// real install token and their own keys, connects each over mutual TLS 1.3
// to the data plane, runs the real initial sync of a small virtual disk
// that is mostly zeros, then writes a few KB/s per agent and measures the
// time from a WRITE sent to its durable ACK, the server's RSS and CPU, and
// the latency of the control plane's filtered server list.
//
// The agents speak package protocol exactly as `ferry agent` does; only
// the disk is virtual (its content is generated, never read from a
// device). It is a benchmark (`ferry bench scale`), not a test.
package scale
