// Package jobs runs launch and terminate jobs: test launches, cutovers and
// terminations, for one server or a wave, each with a timestamped job log,
// one active job per server, and lifecycle moves that follow the state
// machine. Snapshots come from a Snapshotter (the replication server) and
// instances from a Launcher (a launch target); both are interfaces so the
// assembly in package server chooses the real ones.
package jobs
