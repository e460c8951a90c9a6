package track

import (
	"context"
	"errors"
)

// Extent is a dirty byte range of a device.
type Extent struct {
	Offset, Length int64
}

// Batch is what a tracker saw written to one device since the previous
// batch for that device.
type Batch struct {
	// Device is the device path the tracker was started with (e.g.
	// /dev/loop0).
	Device string
	// Extents are coalesced, sorted, non-overlapping dirty ranges, aligned
	// to the device's logical block size.
	Extents []Extent
	// Lost means the tracker may have missed writes (ring overflow, the
	// program detached, events dropped): the agent must rescan the device
	// by hash comparison. Extents are still valid when Lost is set.
	Lost bool
}

// Tracker reports completed writes to the devices it was started for.
// Implementations must report a write only after it completed on the
// device, so that reading the extent afterwards returns the written data
// (or newer data, which a later batch will report again).
type Tracker interface {
	// Next blocks until at least one device has dirty extents (or lost
	// track) or ctx ends, and returns one batch per such device.
	Next(ctx context.Context) ([]Batch, error)
	// Kind names the implementation for the server's state ("ebpf",
	// "rescan").
	Kind() string
	// Close stops tracking and releases kernel resources.
	Close() error
}

// Syncer is implemented by trackers that can vouch for the present, so
// that a drained consistency point needs neither a grace period nor a
// hash comparison.
type Syncer interface {
	// Sync returns n such that every write completed on a tracked device
	// before Sync was called is in the batches of the first n calls of
	// Next that returned batches (counted from the tracker's start), or
	// made one of those batches Lost. The caller, which consumes Next,
	// knows the point is drained once it has applied that many.
	Sync(ctx context.Context) (uint64, error)
}

// ErrClosed is returned (wrapped) by Next after Close.
var ErrClosed = errors.New("tracker closed")
