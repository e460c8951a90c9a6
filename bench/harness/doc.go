// Package harness runs a real replication server for the benchmarks in
// the benchmark's own process: a SQLite metadata store with one source
// server, a CA, a replica store on the data disk and the data plane on
// loopback TLS 1.3. The agent runs in the same process (Agent) or as a
// `ferry agent` process given a state directory (WriteAgentState).
// Benchmarks that need the whole server (control plane, jobs, launch
// targets) start `ferry server --dev` as a child process instead
// (StartServer).
package harness
