// Package e2e runs Ferry's main job end to end with the real binary: a dev
// server, the CLI, and agents pairing from real block devices. It holds
// only tests.
package e2e
