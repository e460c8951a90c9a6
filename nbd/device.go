package nbd

import (
	"errors"
	"io"
)

// Device is a read-only block device served by a [Server].
//
// ReadAt must be safe for concurrent use, as [io.ReaderAt] requires: the
// Server issues reads of one connection in parallel. Size is the device's
// length in bytes and must not change while the device is served.
//
// A Device that also implements [Extenter] reports holes to clients
// (NBD_CMD_BLOCK_STATUS with "base:allocation"); without it every byte is
// reported as data.
type Device interface {
	io.ReaderAt
	Size() int64
}

// Extent is a byte range of a [Device]. Zero means the range reads as zeros
// and holds no data (a hole); otherwise it holds data.
type Extent struct {
	Offset, Length int64
	Zero           bool
}

// Extenter is implemented by devices that know where their holes are.
//
// Extents describes the range [off, off+length) as extents in increasing
// offset order. Ranges that no extent covers are reported as data, and
// extents (or parts of them) outside the range are ignored.
type Extenter interface {
	Extents(off, length int64) ([]Extent, error)
}

// ErrUnknownExport is returned (possibly wrapped) by a [Server.Lookup]
// function for a name that is not exported; clients see
// NBD_REP_ERR_UNKNOWN.
var ErrUnknownExport = errors.New("unknown export")

// WithExtents returns a Device that reads from dev and reports extents with
// the extents function. The extents function may return any struct type
// with the fields of [Extent], such as another package's Extent type, so
// that a store's reader can be served without that store importing nbd:
//
//	dev := nbd.WithExtents(r, r.Extents)
func WithExtents[E ~struct {
	Offset, Length int64
	Zero           bool
}](dev Device, extents func(off, length int64) ([]E, error)) Device {
	return &extentDevice[E]{Device: dev, extents: extents}
}

type extentDevice[E ~struct {
	Offset, Length int64
	Zero           bool
}] struct {
	Device
	extents func(off, length int64) ([]E, error)
}

// Extents implements [Extenter].
func (d *extentDevice[E]) Extents(off, length int64) ([]Extent, error) {
	es, err := d.extents(off, length)
	out := make([]Extent, len(es))
	for i, e := range es {
		out[i] = Extent(e)
	}
	return out, err
}

// statusDescriptor is one base:allocation block status descriptor.
type statusDescriptor struct {
	length uint32
	flags  uint32
}

// maxDescriptors bounds the descriptors in one block status reply.
const maxDescriptors = 1 << 16

// blockStatus turns a device's extents for [off, off+length) into
// block status descriptors: clipped to the range, gaps filled as data,
// neighbours with the same state merged. It returns at least one descriptor
// when length > 0; it covers the whole range unless that takes more than
// maxDescriptors (clients then ask again for the rest), and it stops after
// the first descriptor if reqOne.
func blockStatus(es []Extent, off, length int64, reqOne bool) []statusDescriptor {
	end := off + length
	cur := off
	var ds []statusDescriptor
	add := func(n int64, flags uint32) {
		if n <= 0 {
			return
		}
		if k := len(ds); k > 0 && ds[k-1].flags == flags {
			ds[k-1].length += uint32(n)
			return
		}
		ds = append(ds, statusDescriptor{length: uint32(n), flags: flags})
	}
	capped := false
	for _, e := range es {
		if cur >= end {
			break
		}
		if len(ds) >= maxDescriptors {
			capped = true
			break
		}
		if e.Length <= 0 || e.Offset < 0 || e.Offset >= end {
			continue
		}
		stop := e.Offset + min(e.Length, end-e.Offset) // no overflow
		if stop <= cur {
			continue
		}
		if e.Offset > cur {
			add(e.Offset-cur, 0)
			cur = e.Offset
		}
		var flags uint32
		if e.Zero {
			flags = stateHole | stateZero
		}
		add(stop-cur, flags)
		cur = stop
	}
	if !capped {
		// Whatever no extent covers is data.
		add(end-cur, 0)
	}
	if reqOne && len(ds) > 1 {
		ds = ds[:1]
	}
	return ds
}
