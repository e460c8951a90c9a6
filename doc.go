// Package ferry holds Ferry's domain: source servers and their disks, the
// lifecycle and data-replication state machines, replication and launch
// settings, jobs, applications and waves, API tokens and audit events, and
// the interfaces to the outside systems that keep them (the metadata Store).
//
// It depends on nothing but the standard library, so every other package
// (the SQLite and PostgreSQL stores, the HTTP API, the agent, the CLI) points
// inward to it. Names follow AWS Application Migration Service (MGN), so that
// its users recognise them.
package ferry
