// Package faults holds Ferry's fault-injection suite: a real server (the
// ferry binary) and a real agent on a loop device, joined by a veth pair
// between network namespaces, with fio writing to the source while the
// suite kills processes, cuts, flaps, slows and degrades the link, fills
// the staging disk and grows the source. After each round of faults it
// checks that the replica converges to the source at a drained barrier,
// byte for byte, and that the store verifies clean.
//
// The suite needs root; it skips loudly without it and fails when
// FERRY_TEST_REQUIRE_ALL=1. FERRY_SOAK=1 (or FERRY_FAULTS_DURATION) runs
// it for longer, for benchmarks.
package faults
