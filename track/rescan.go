package track

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"runtime"
	"sync"
	"time"

	"github.com/zeebo/xxh3"
	"golang.org/x/sys/unix"
)

// DefaultRescanBlockSize is the unit Rescan hashes and reports: 64 KiB,
// so the hash table takes 8 bytes per 64 KiB (128 MiB per TiB).
const DefaultRescanBlockSize = 64 << 10

// rescanChunk is how much a pass reads at a time.
const rescanChunk = 1 << 20

// RescanOption configures NewRescan.
type RescanOption func(*rescanOptions)

type rescanOptions struct {
	blockSize int64
	idle      bool
}

// WithBlockSize sets the block size Rescan hashes and reports, a multiple
// of 4096 bytes; the default is DefaultRescanBlockSize.
func WithBlockSize(n int64) RescanOption {
	return func(o *rescanOptions) { o.blockSize = n }
}

// WithIdleIO sets whether passes read at the idle IO priority class
// (ioprio_set IOPRIO_CLASS_IDLE), the default; it only has an effect with
// an IO scheduler that honours priorities (BFQ, mq-deadline).
func WithIdleIO(idle bool) RescanOption {
	return func(o *rescanOptions) { o.idle = idle }
}

// Rescan is the change tracker for where eBPF cannot load: every interval
// it reads each device (O_DIRECT, so that writes made through a file system
// are seen even when the device's page cache is stale) and compares a
// 64-bit xxh3 hash of every block with the previous pass, reporting the
// changed blocks as extents. Kind is "rescan".
//
// The first call of Next makes the baseline pass and returns a batch with
// Lost set and no extents for every device: the writes made before the
// baseline are unknown, so the agent compares the device with the replica
// by hashes. Writes completed after a device's baseline was read are
// reported by a later pass. A pass that Next abandons (ctx ended) keeps
// what it found for the next call.
//
// Memory: 8 bytes per block of every device, plus a bounded ExtentSet.
// Next and Close may be called from different goroutines; Next must not be
// called concurrently with itself.
type Rescan struct {
	opts     rescanOptions
	interval time.Duration
	devices  []*rescanDevice
	closing  chan struct{}
	once     sync.Once

	last time.Time // start of the last complete pass; only Next uses it
}

type rescanDevice struct {
	path     string
	hashes   []uint64 // nil until the baseline pass completed
	reported bool     // the baseline's Lost batch was returned
	set      *ExtentSet
}

var _ Tracker = (*Rescan)(nil)

// NewRescan returns a rescan tracker of devices (block device paths, or
// regular files in tests) that passes every interval. It checks that every
// device can be opened for reading; it reads nothing yet.
func NewRescan(devices []string, interval time.Duration, opts ...RescanOption) (*Rescan, error) {
	o := rescanOptions{blockSize: DefaultRescanBlockSize, idle: true}
	for _, opt := range opts {
		opt(&o)
	}
	if o.blockSize <= 0 || o.blockSize%4096 != 0 || o.blockSize > rescanChunk {
		return nil, fmt.Errorf("rescan: block size %d is not a multiple of 4096 up to %d", o.blockSize, rescanChunk)
	}
	if len(devices) == 0 {
		return nil, errors.New("rescan: no devices to track")
	}
	if interval <= 0 {
		return nil, fmt.Errorf("rescan: interval %v is not positive", interval)
	}
	r := &Rescan{opts: o, interval: interval, closing: make(chan struct{})}
	for _, path := range devices {
		f, err := os.Open(path)
		if err != nil {
			return nil, fmt.Errorf("rescan: open device: %w", err)
		}
		f.Close()
		r.devices = append(r.devices, &rescanDevice{path: path, set: NewExtentSet(512, DefaultMaxExtents)})
	}
	return r, nil
}

// Kind returns "rescan".
func (r *Rescan) Kind() string { return "rescan" }

// Next makes passes, the first at once and then one every interval, until
// one finds a changed block (or a device's baseline completes, see Rescan)
// or ctx ends. After Close it returns an error wrapping ErrClosed.
func (r *Rescan) Next(ctx context.Context) ([]Batch, error) {
	for {
		if b := r.take(); len(b) > 0 {
			return b, nil
		}
		if !r.last.IsZero() {
			wait := time.NewTimer(time.Until(r.last.Add(r.interval)))
			select {
			case <-ctx.Done():
				wait.Stop()
				return nil, ctx.Err()
			case <-r.closing:
				wait.Stop()
				return nil, fmt.Errorf("rescan: next batch: %w", ErrClosed)
			case <-wait.C:
			}
		}
		select {
		case <-r.closing:
			return nil, fmt.Errorf("rescan: next batch: %w", ErrClosed)
		default:
		}
		start := time.Now()
		if err := r.pass(ctx); err != nil {
			if b := r.take(); len(b) > 0 && ctx.Err() == nil {
				return b, nil
			}
			return nil, err
		}
		r.last = start
	}
}

func (r *Rescan) take() []Batch {
	var batches []Batch
	for _, d := range r.devices {
		lost := d.hashes != nil && !d.reported
		if d.set.Len() == 0 && !lost {
			continue
		}
		d.reported = d.reported || lost
		batches = append(batches, Batch{Device: d.path, Extents: d.set.Take(), Lost: lost})
	}
	return batches
}

// pass reads every device once on a goroutine of its own whose thread
// keeps the idle IO priority and dies with it.
func (r *Rescan) pass(ctx context.Context) error {
	errc := make(chan error, 1)
	go func() {
		// Never unlocked: the thread exits with this goroutine, so its
		// IO priority does not leak to other goroutines.
		runtime.LockOSThread()
		if r.opts.idle {
			setIdleIO() // best effort
		}
		var err error
		for _, d := range r.devices {
			if err = r.passDevice(ctx, d); err != nil {
				break
			}
		}
		errc <- err
	}()
	return <-errc
}

const (
	ioprioWhoProcess = 1
	ioprioClassIdle  = 3
	ioprioClassShift = 13
)

// setIdleIO puts the calling thread in the idle IO priority class.
func setIdleIO() {
	unix.Syscall(unix.SYS_IOPRIO_SET, ioprioWhoProcess, 0, ioprioClassIdle<<ioprioClassShift)
}

// passDevice reads d once, comparing every block's hash with the previous
// pass (or recording the baseline).
func (r *Rescan) passDevice(ctx context.Context, d *rescanDevice) (err error) {
	f, err := os.OpenFile(d.path, os.O_RDONLY|unix.O_DIRECT, 0)
	if err != nil {
		return fmt.Errorf("rescan: open device: %w", err)
	}
	defer f.Close()
	size, err := f.Seek(0, io.SeekEnd)
	if err != nil {
		return fmt.Errorf("rescan: size of %s: %w", d.path, err)
	}
	// O_DIRECT wants an aligned buffer: an anonymous mapping is page aligned.
	buf, err := unix.Mmap(-1, 0, rescanChunk, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		return fmt.Errorf("rescan: read buffer: %w", err)
	}
	defer unix.Munmap(buf)

	bs := r.opts.blockSize
	nblocks := int((size + bs - 1) / bs)
	baseline := d.hashes == nil
	hashes := d.hashes
	if baseline {
		hashes = make([]uint64, 0, nblocks)
	}
	grown := len(hashes)
	if nblocks < len(hashes) {
		hashes = hashes[:nblocks] // the device shrank
	}
	for off := int64(0); off < size; off += rescanChunk {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-r.closing:
			return fmt.Errorf("rescan: pass: %w", ErrClosed)
		default:
		}
		n := int(min(rescanChunk, size-off))
		if _, err := f.ReadAt(buf[:n], off); err != nil && !(errors.Is(err, io.EOF) && n > 0) {
			return fmt.Errorf("rescan: read %s at %d: %w", d.path, off, err)
		}
		for b := 0; b < n; b += int(bs) {
			h := xxh3.Hash(buf[b:min(n, b+int(bs))])
			i := int((off + int64(b)) / bs)
			switch {
			case i >= len(hashes):
				hashes = append(hashes, h)
				if !baseline && i >= grown {
					// The device grew: the new blocks are news.
					d.set.Add(int64(i)*bs, min(bs, size-int64(i)*bs))
				}
			case hashes[i] != h:
				hashes[i] = h
				d.set.Add(int64(i)*bs, min(bs, size-int64(i)*bs))
			}
		}
	}
	d.hashes = hashes
	return nil
}

// Close stops tracking: Next returns an error wrapping ErrClosed.
func (r *Rescan) Close() error {
	r.once.Do(func() { close(r.closing) })
	return nil
}
