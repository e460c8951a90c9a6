package replica

import (
	"errors"
	"fmt"

	"github.com/ferrymigrate/ferry/replica/backend"
)

// Errors callers test with errors.Is.
var (
	// ErrNotFound is backend.ErrNotFound: an object, disk or snapshot does not exist.
	ErrNotFound = backend.ErrNotFound
	// ErrWrongKey means the key provider's key does not open this store.
	ErrWrongKey = errors.New("wrong key for this store")
	// ErrNoKey means the key (file) is missing.
	ErrNoKey = errors.New("key not found")
	// ErrCorrupt marks an object or journal record that fails its checksum,
	// authentication, hash or format checks, or is missing although referenced.
	ErrCorrupt = errors.New("corrupt object")
	// ErrNoSpace means a write failed because the file system is full. The
	// store stays consistent; the write can be retried once space is freed.
	ErrNoSpace = errors.New("no space left on device")
	// ErrOutOfRange means an offset or length lies outside the disk.
	ErrOutOfRange = errors.New("out of range")
	// ErrUnaligned means an offset or length is not a multiple of the disk's block size.
	ErrUnaligned = errors.New("not aligned to the block size")
	// ErrClosed means the store or reader is closed.
	ErrClosed = errors.New("closed")
	// ErrExists means a disk with that id already exists.
	ErrExists = errors.New("already exists")
	// ErrBusy means a disk is in use (a reader has it open) and cannot be
	// deleted now.
	ErrBusy = errors.New("in use")
	// ErrNoBarrier means no barrier of the requested consistency exists to snapshot at.
	ErrNoBarrier = errors.New("no barrier of the requested consistency")
	// ErrOutsideWindow means a point in time is no longer (or not yet) inside the journal window.
	ErrOutsideWindow = errors.New("outside the journal window")
	// ErrLocked means another process has the staging directory open.
	ErrLocked = errors.New("store is in use by another process")
)

// CorruptError names an object (backend object name, or journal segment
// path) that failed a check. It matches ErrCorrupt with errors.Is.
type CorruptError struct {
	Object string
	Err    error
}

func (e *CorruptError) Error() string { return fmt.Sprintf("%s: corrupt: %v", e.Object, e.Err) }

// Unwrap returns the underlying cause.
func (e *CorruptError) Unwrap() error { return e.Err }

// Is reports whether target is ErrCorrupt.
func (e *CorruptError) Is(target error) bool { return target == ErrCorrupt }

func corrupt(object string, err error) error { return &CorruptError{Object: object, Err: err} }
