package agent

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/ferrymigrate/ferry/internal/directio"
)

// device is an open source block device (or, in tests, a file).
type device struct {
	path   string
	name   string
	direct *os.File // O_DIRECT, nil where it cannot be used
	f      *os.File
	lbs    uint32
}

// openDevice opens path read-only, with a second O_DIRECT descriptor
// where the kernel allows it (reads then bypass and do not evict the page
// cache).
func openDevice(path string) (*device, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("open device: %w", err)
	}
	d := &device{path: path, name: filepath.Base(path), f: f, lbs: 512}
	if b, err := os.ReadFile("/sys/class/block/" + d.name + "/queue/logical_block_size"); err == nil {
		if v, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil && v >= 512 {
			d.lbs = uint32(v)
		}
	}
	if df, err := os.OpenFile(path, os.O_RDONLY|unix.O_DIRECT, 0); err == nil {
		d.direct = df
	}
	return d, nil
}

// size returns the device's current size in bytes: BLKGETSIZE64 for a
// block device (which sees a grown device at once), else the file's end.
func (d *device) size() (int64, error) {
	if n, err := unix.IoctlGetUint64(int(d.f.Fd()), unix.BLKGETSIZE64); err == nil {
		return int64(n), nil
	}
	n, err := d.f.Seek(0, io.SeekEnd)
	if err != nil {
		return 0, fmt.Errorf("size of %s: %w", d.path, err)
	}
	return n, nil
}

// readAt fills p from off; past the end it reads zeros. Where the device
// takes O_DIRECT, every read goes around the page cache (an unaligned one
// through an aligned bounce buffer): the block device's page cache can
// hold blocks older than what a mounted file system wrote since, so a
// buffered read could send stale data.
func (d *device) readAt(p []byte, off int64) error {
	if d.direct != nil {
		err := d.readDirect(p, off)
		if err == nil {
			return nil
		}
		if !errors.Is(err, unix.EINVAL) {
			return fmt.Errorf("read %s at %d: %w", d.path, off, err)
		}
	}
	n, err := d.f.ReadAt(p, off)
	if err != nil && !errors.Is(err, io.EOF) {
		return fmt.Errorf("read %s at %d: %w", d.path, off, err)
	}
	clear(p[n:])
	return nil
}

// readDirect reads with O_DIRECT, widening the range to 4 KiB blocks and
// bouncing through an aligned buffer when p or off is not aligned.
func (d *device) readDirect(p []byte, off int64) error {
	const align = 4096
	start := off &^ (align - 1)
	end := (off + int64(len(p)) + align - 1) &^ (align - 1)
	buf := p
	bounce := start != off || end != off+int64(len(p)) || uintptr(unsafe.Pointer(unsafe.SliceData(p)))%align != 0
	if bounce {
		buf = directio.Buf(int(end - start))
	}
	n, err := d.direct.ReadAt(buf, start)
	if err != nil && !errors.Is(err, io.EOF) {
		return err
	}
	if !bounce {
		clear(p[n:])
		return nil
	}
	skip := int(off - start)
	valid := max(0, min(len(p), n-skip))
	copy(p, buf[skip:skip+valid])
	clear(p[valid:])
	return nil
}

func (d *device) close() {
	d.f.Close()
	if d.direct != nil {
		d.direct.Close()
	}
}
