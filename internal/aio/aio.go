// Package aio reads many scattered blocks of a file or block device in
// one system call, with Linux native asynchronous I/O (io_submit and
// io_getevents) on a descriptor opened with O_DIRECT.
//
// The agent reads every block a source server writes, after the write
// completed. Under random writes that is thousands of 4 KiB reads a
// second, and a blocking pread costs the agent far more CPU than the read
// itself (about 18 µs each, measured on a loop device: the system call,
// the sleep until the device answers, and the Go runtime handing its
// thread over meanwhile); submitted together and reaped together they
// cost about 1–2 µs each. Native AIO is the right tool for exactly this
// case (O_DIRECT reads of a block device, truly asynchronous there) and,
// unlike io_uring, needs no shared rings, so it is a few plain system
// calls.
//
// The kernel writes into memory the Reader owns (one aligned buffer), so
// no Go memory the garbage collector or a growing stack could move is ever
// handed to it.
package aio

import (
	"errors"
	"fmt"
	"os"
	"runtime"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/ferrymigrate/ferry/internal/directio"
)

// Range is one read: Len bytes from Off.
type Range struct {
	Off, Len int64
}

// ErrBroken is returned by Read once an earlier Read failed in a way that
// left the context unusable; the caller reads another way from then on.
var ErrBroken = errors.New("aio: context unusable after an earlier failure")

// iocb is the kernel's struct iocb (linux/aio_abi.h). aio_key and
// aio_rw_flags swap places on big-endian machines; both are always zero
// here, so one layout serves both.
type iocb struct {
	data   uint64
	_      uint32 // aio_key
	_      int32  // aio_rw_flags
	opcode uint16
	_      int16 // aio_reqprio
	fildes uint32
	buf    uint64
	nbytes uint64
	offset int64
	_      uint64 // aio_reserved2
	_      uint32 // aio_flags
	_      uint32 // aio_resfd
}

// event is the kernel's struct io_event.
type event struct {
	data, obj uint64
	res, res2 int64
}

const cmdPread = 0 // IOCB_CMD_PREAD

// align is the alignment O_DIRECT needs.
const align = directio.Align

// Reader reads batches of ranges from one descriptor. It is not safe for
// concurrent use: one goroutine reads through it.
type Reader struct {
	f      *os.File
	ctx    uint64 // aio_context_t
	depth  int
	buf    []byte // aligned; the kernel reads into it
	cbs    []iocb
	ptrs   []*iocb
	evs    []event
	out    [][]byte
	broken bool
}

// Open makes a Reader for f (which should be opened with O_DIRECT: without
// it Linux runs the reads synchronously inside io_submit) that reads at
// most depth ranges and maxBytes bytes in one Read. It fails where the
// kernel has no native AIO or its limit on AIO requests (fs.aio-max-nr)
// is reached; callers then read with pread.
func Open(f *os.File, depth int, maxBytes int) (*Reader, error) {
	if depth <= 0 || maxBytes <= 0 {
		return nil, fmt.Errorf("aio: depth %d and buffer %d must be positive", depth, maxBytes)
	}
	r := &Reader{f: f, depth: depth}
	if _, _, e := unix.Syscall(unix.SYS_IO_SETUP, uintptr(depth), uintptr(unsafe.Pointer(&r.ctx)), 0); e != 0 {
		return nil, fmt.Errorf("aio: io_setup: %w", e)
	}
	r.buf = directio.Buf(maxBytes)
	r.cbs = make([]iocb, depth)
	r.ptrs = make([]*iocb, depth)
	r.evs = make([]event, depth)
	return r, nil
}

// Read reads every range and returns their bytes, in the order asked; the
// slices are the Reader's memory and stay valid until the next Read. A
// range must start and end on the device's logical block size. Read
// fails when any range fails or comes back short (the end of the device
// included): the caller then reads those ranges another way, which also
// says which one failed and why. It fails with ErrBroken after a failure
// of the context itself.
func (r *Reader) Read(rs []Range) ([][]byte, error) {
	if r.broken {
		return nil, ErrBroken
	}
	if len(rs) > r.depth {
		return nil, fmt.Errorf("aio: %d ranges in one read, at most %d", len(rs), r.depth)
	}
	r.out = r.out[:0]
	pos := 0
	fd := uint32(r.f.Fd())
	for i, x := range rs {
		if x.Len <= 0 || x.Off < 0 {
			return nil, fmt.Errorf("aio: range %d: %d bytes at %d", i, x.Len, x.Off)
		}
		n := int(x.Len)
		if pos+n > len(r.buf) {
			return nil, fmt.Errorf("aio: %d bytes past the %d-byte buffer", pos+n, len(r.buf))
		}
		r.cbs[i] = iocb{data: uint64(i), opcode: cmdPread, fildes: fd,
			buf: uint64(uintptr(unsafe.Pointer(&r.buf[pos]))), nbytes: uint64(n), offset: x.Off}
		r.ptrs[i] = &r.cbs[i]
		r.out = append(r.out, r.buf[pos:pos+n:pos+n])
		// The next range starts aligned, as O_DIRECT needs.
		pos += (n + align - 1) &^ (align - 1)
		if pos > len(r.buf) {
			pos = len(r.buf)
		}
	}
	err := r.run(len(rs))
	runtime.KeepAlive(r.f)
	if err != nil {
		return nil, err
	}
	return r.out, nil
}

// run submits the first n control blocks and waits for all of them.
func (r *Reader) run(n int) error {
	submitted, done := 0, 0
	var failed error
	for submitted < n {
		k, _, e := unix.Syscall(unix.SYS_IO_SUBMIT, uintptr(r.ctx), uintptr(n-submitted), uintptr(unsafe.Pointer(&r.ptrs[submitted])))
		if e == unix.EINTR {
			continue
		}
		if e == 0 && k == 0 {
			// Nothing taken and no error: never seen, but looping on it
			// would spin.
			e = unix.EAGAIN
		}
		if e != 0 {
			if submitted == 0 {
				// Nothing in flight: the context is still good, the
				// caller reads these another way.
				return fmt.Errorf("aio: io_submit: %w", e)
			}
			failed = fmt.Errorf("aio: io_submit: %w", e)
			n = submitted
			break
		}
		submitted += int(k)
	}
	for done < submitted {
		k, _, e := unix.Syscall6(unix.SYS_IO_GETEVENTS, uintptr(r.ctx), uintptr(submitted-done), uintptr(submitted-done),
			uintptr(unsafe.Pointer(&r.evs[0])), 0, 0)
		if e == unix.EINTR {
			continue
		}
		if e != 0 {
			// Reads are in flight into r.buf and cannot be waited for:
			// io_destroy waits for them, and the Reader is done.
			r.destroy()
			return fmt.Errorf("aio: io_getevents: %w", e)
		}
		for _, ev := range r.evs[:k] {
			i := int(ev.data)
			if i < 0 || i >= n {
				r.destroy()
				return fmt.Errorf("aio: completion for unknown request %d", ev.data)
			}
			switch {
			case ev.res < 0:
				if failed == nil {
					failed = fmt.Errorf("aio: read %d bytes at %d: %w", r.cbs[i].nbytes, r.cbs[i].offset, unix.Errno(-ev.res))
				}
			case uint64(ev.res) != r.cbs[i].nbytes:
				if failed == nil {
					failed = fmt.Errorf("aio: read %d bytes at %d: got %d", r.cbs[i].nbytes, r.cbs[i].offset, ev.res)
				}
			}
		}
		done += int(k)
	}
	return failed
}

func (r *Reader) destroy() {
	if r.broken {
		return
	}
	r.broken = true
	unix.Syscall(unix.SYS_IO_DESTROY, uintptr(r.ctx), 0, 0)
}

// Close releases the kernel context (waiting for any read still in
// flight). The file stays open.
func (r *Reader) Close() error {
	if r == nil {
		return nil
	}
	r.destroy()
	return nil
}
