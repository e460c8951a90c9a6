// Package sqlite is Ferry's embedded metadata store: a ferry.Store kept in
// one SQLite file (modernc.org/sqlite, pure Go, no cgo).
//
// The database runs in WAL mode with foreign keys on, a busy timeout, and
// synchronous=FULL: a call that returned has reached the disk, as with
// PostgreSQL's default synchronous_commit, so an audit event or a counted
// install-token use survives a power cut. Writes go through one connection
// and every read-modify-write transaction starts with BEGIN IMMEDIATE, so
// it holds SQLite's single write lock from its first read and concurrent
// updates cannot lose one another; plain reads use a small pool of
// read-only connections that WAL lets run beside the writer.
//
// Writes are group-committed: one goroutine owns the write connection and
// runs all the writes waiting for it (up to a bound) in one transaction,
// each inside its own savepoint, then commits once. With thousands of
// agents refreshing their records, a commit's fsync is then paid once per
// group instead of once per call, one after another. The promises are
// unchanged: each call is atomic and isolated from the others in its
// group (one that fails is rolled back to its savepoint, alone), and a
// call returns only once the commit that holds it has reached the disk.
//
// The schema is created and upgraded by SQL migrations embedded in the
// binary and recorded in the schema_migrations table.
package sqlite
