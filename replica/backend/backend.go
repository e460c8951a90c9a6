// Package backend defines the narrow object-storage interface the replica
// store keeps its chunks, block maps and snapshot metadata in.
//
// Implementations live in their own packages named after what they talk to
// (replica/fs, replica/s3) and are checked by the conformance suite in
// replica/backendtest. Retry, rate limiting or logging belong in wrappers
// that embed a Backend, not in the store.
package backend

import (
	"context"
	"errors"
)

// ErrNotFound is returned (possibly wrapped) by Get and Size when the named
// object does not exist. Callers test it with errors.Is.
var ErrNotFound = errors.New("object not found")

// ErrCorrupt is returned (wrapped) by Get when the object exists but its
// stored bytes fail a check of the backend's own (a pack file's checksum),
// so the caller can treat it as damage rather than as an I/O failure.
var ErrCorrupt = errors.New("object fails its backend checksum")

// Backend stores immutable, named objects.
//
// Contract every implementation keeps (replica/backendtest checks it):
//
//   - Names are slash-separated relative paths of the characters
//     [A-Za-z0-9._-/]; no element is empty, "." or "..", and no element
//     starts with ".". Invalid names are an error, never a path escape.
//   - Put is atomic and durable: when it returns nil the whole object is
//     stored and survives a crash of this process or the machine; a reader
//     or a crash at any instant sees either the previous object (or none) or
//     the complete new one, never a prefix. Putting an existing name
//     replaces it.
//   - Get returns the complete object or an error wrapping ErrNotFound when
//     it does not exist. Get never returns a partial object as success.
//   - Delete removes an object; deleting a missing object is not an error.
//   - List calls fn for every object whose name starts with prefix, in no
//     particular order, with its size. Objects put before List starts and
//     not deleted before it ends are reported; objects put or deleted
//     concurrently may or may not be. An error returned by fn stops the
//     listing and is returned.
//   - All methods are safe for concurrent use. Errors other than
//     ErrNotFound may be transient; the store retries whole operations, the
//     backend need not.
type Backend interface {
	// Put stores data under name atomically and durably.
	Put(ctx context.Context, name string, data []byte) error
	// Get returns the object's contents or an error wrapping ErrNotFound.
	// The caller owns the returned slice and may modify it.
	Get(ctx context.Context, name string) ([]byte, error)
	// Delete removes the object; a missing object is not an error.
	Delete(ctx context.Context, name string) error
	// List reports every object whose name starts with prefix.
	List(ctx context.Context, prefix string, fn func(name string, size int64) error) error
	// Close releases resources held by the backend.
	Close() error
}

// ValidName reports whether name satisfies the naming rules of the Backend
// contract.
func ValidName(name string) bool {
	if name == "" || len(name) > 1024 {
		return false
	}
	start := 0
	for i := 0; i <= len(name); i++ {
		if i == len(name) || name[i] == '/' {
			elem := name[start:i]
			if elem == "" || elem[0] == '.' {
				return false
			}
			start = i + 1
			continue
		}
		c := name[i]
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9', c == '.', c == '_', c == '-':
		default:
			return false
		}
	}
	return true
}

// ValidPrefix reports whether prefix may be passed to List: empty, or a
// valid name optionally followed by a slash.
func ValidPrefix(prefix string) bool {
	if prefix == "" {
		return true
	}
	if prefix[len(prefix)-1] == '/' {
		prefix = prefix[:len(prefix)-1]
	}
	return ValidName(prefix)
}

// Batcher is implemented by backends that make many objects durable
// together more cheaply than one Put each. replica/fs does: a Put pays a
// file fsync and a directory fsync in series, a batch pays one fsync per
// file, all in parallel, and one fsync per directory at commit.
type Batcher interface {
	// NewBatch returns an empty batch.
	NewBatch() Batch
}

// Batch stages objects and makes them durable together.
//
// Contract (replica/backendtest checks it):
//
//   - Put stages an object. It is safe for concurrent use, but not
//     concurrently with Commit or Abort. A staged object may stay
//     invisible to Get and List until Commit returns.
//   - Commit returns nil only when every staged object is stored and
//     durable, exactly as if each had been put with Backend.Put. A batch
//     is done after Commit or Abort.
//   - At any instant (a crash, a failed Commit, Abort) every staged name
//     holds either its previous object (or none) or the complete new one,
//     never a prefix.
//   - Abort discards what it can; objects may already be visible.
type Batch interface {
	// Put stages data under name.
	Put(ctx context.Context, name string, data []byte) error
	// Commit makes every staged object durable and visible.
	Commit(ctx context.Context) error
	// Abort discards the batch.
	Abort()
}

// NewBatch returns a batch for b: b's own when b implements Batcher,
// otherwise one whose Put is b.Put and whose Commit does nothing more.
func NewBatch(b Backend) Batch {
	if bb, ok := b.(Batcher); ok {
		return bb.NewBatch()
	}
	return putBatch{b}
}

type putBatch struct{ b Backend }

func (p putBatch) Put(ctx context.Context, name string, data []byte) error {
	return p.b.Put(ctx, name, data)
}

func (putBatch) Commit(ctx context.Context) error { return ctx.Err() }

func (putBatch) Abort() {}
