// Package qmp is a small client for the QEMU Machine Protocol over a unix
// socket: it reads the greeting, negotiates capabilities, runs commands
// (each with its own id, so replies and asynchronous events may
// interleave) and delivers events to whoever waits for them.
//
// Package qemu launches instances; this package only talks to a QEMU
// process someone else started (the connector's hypervisor sources).
package qmp
