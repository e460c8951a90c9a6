// Package replica is Ferry's replica store: it keeps every replicated
// write of every source disk durable, deduplicated and encrypted, and
// serves any snapshot (or any point inside the journal window) as a
// random-access block device.
//
// # Model
//
// A Store holds Disks. A Disk has a size, a block size (4 KiB by default)
// and receives extents with strictly increasing sequence numbers:
// Disk.Write / Disk.Append (data), Disk.WriteZeroes (zeros without data),
// Disk.Barrier (a crash- or app-consistent point) and Disk.Resize (grow).
// A write returns only once its journal record is fsync'd; concurrent
// writers, and one writer with many Appends in flight, share one fsync
// (group commit). Disk.DurableSeq is where an agent resumes; a sequence
// number at or below the last accepted one is ignored, so a resumed stream
// may repeat itself.
//
// # Storage
//
// The journal lives on the local staging directory (Options.Dir): one
// directory per disk holding append-only segments of CRC-checked records.
// A background fold (every Options.FoldInterval, or sooner when
// Options.FoldBytes are pending) turns the journal into fixed-size chunks
// (Store.ChunkSize) stored on the Backend, content-addressed by a BLAKE3
// hash keyed per store, zstd-compressed when that saves an eighth, and
// sealed with XChaCha20-Poly1305 (or AES-256-GCM) under a data key that a
// KeyProvider wraps. All-zero chunks are never stored and identical chunks
// of all disks are stored once. Every fold publishes an immutable block
// map (a root listing pages of chunk hashes; pages are chunks too, so maps
// share unchanged pages). A snapshot names a block map. The on-disk format
// is described in docs/storage.md.
//
// # Reading
//
// Disk.OpenSnapshot, Disk.OpenHead (latest durable state, journal
// included), Disk.OpenAt and Disk.OpenAtTime (any point inside the journal
// window) return a Reader: an io.ReaderAt with Size and Extents (data
// versus zero ranges), backed by a shared cache of decrypted chunks. A read
// past the end is an error wrapping ErrOutOfRange; a missing or damaged
// object is a CorruptError naming it, never data.
//
// # Maintenance
//
// Disk.ApplyRetention deletes snapshots a RetentionPolicy drops (the
// newest is always kept); Store.GC deletes chunks no block map references
// while writes go on; Store.Verify checks every object; Store.Usage
// reports logical and stored bytes.
//
// # Crash safety
//
// Every backend object is written atomically (backend contract) and only
// referenced after it is durable: chunks before pages, pages before the map
// root, the map root before the snapshot metadata; the journal is trimmed
// only after a durable trim mark. A crash at any instant leaves every
// acknowledged write and every snapshot readable, and Verify clean.
// crash_test.go kills a writing process at random moments to check this.
package replica
