// Package suite is `ferry bench all`: it runs every benchmark section
// (the machine's limits, initial sync, incremental sync, continuous
// replication RPO and agent footprint, dedup, and the scale, launch and
// connector sections where they are wired), puts every figure in one
// table beside its ceiling or peer and its goal, writes the run as JSON
// and as an SVG chart, and compares it with a committed reference run,
// flagging any figure more than 10 % worse.
//
// The pure parts (Report, Compare, WriteSVG, the table) are separate from
// the sections so they can be tested without root or a data disk.
package suite
