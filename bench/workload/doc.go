// Package workload makes the data the benchmarks move: disk images of
// half zeros, a quarter text and a quarter random bytes (a used server
// disk in miniature), aligned buffers for O_DIRECT, and random block
// changes.
package workload
