// Package launchbench measures launching a replicated server the way an
// operator does it, end to end on this machine: the real `ferry` binary as
// a `ferry server --dev` process (bench/harness), a real `ferry agent`
// process paired with an install token and replicating a loop device that
// holds the small bootable Linux test image (internal/testimage), the CLI
// commands `ferry launch test|cutover|terminate`, and the qemu launch
// target's real QEMU. It is `ferry bench all`'s launch section.
//
// The figures, each timed from the CLI command's start:
//
//   - test launch: `ferry launch test` to the guest's first console line,
//     minus QEMU's own time to its first console line booting the same
//     image from a local file with the same machine options (goal < 10 s);
//     once with conversion off and, when libguestfs is installed, once
//     with it on;
//   - cutover: `ferry launch cutover` (final sync drained) to the instance
//     running, guest boot excluded (goal < 60 s);
//   - terminate: `ferry launch terminate` of the test instance, booted to
//     its boot marker, to the command's return: the job ended, QEMU gone,
//     the instance's overlays and state removed.
//
// Every process, loop device, overlay and directory the run makes is
// removed when it ends, on error too.
package launchbench
