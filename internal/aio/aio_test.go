package aio

import (
	"bytes"
	"errors"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"
	"unsafe"

	"github.com/ferrymigrate/ferry/track/tracktest"
	"golang.org/x/sys/unix"
)

// fill writes size bytes of seeded random data to path (a file or a
// device) and returns them.
func fill(t *testing.T, path string, size int) []byte {
	t.Helper()
	data := make([]byte, size)
	rand.NewChaCha8([32]byte{1}).Read(data)
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteAt(data, 0); err != nil {
		t.Fatal(err)
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	return data
}

func openDirect(t *testing.T, path string) *os.File {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDONLY|unix.O_DIRECT, 0)
	if err != nil {
		t.Fatalf("open %s with O_DIRECT: %v", path, err)
	}
	t.Cleanup(func() { f.Close() })
	return f
}

// checkReads runs the table of reads against a Reader over f, whose
// content is data; direct says f was opened with O_DIRECT.
func checkReads(t *testing.T, f *os.File, data []byte, direct bool) {
	size := int64(len(data))
	r, err := Open(f, 64, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	rnd := rand.New(rand.NewPCG(3, 4))
	scattered := make([]Range, 64)
	for i := range scattered {
		scattered[i] = Range{Off: rnd.Int64N(size/4096) * 4096, Len: 4096}
	}
	cases := []struct {
		name    string
		rs      []Range
		wantErr error // nil: every range reads back as in data
	}{
		{"one block", []Range{{0, 4096}}, nil},
		{"64 scattered blocks", scattered, nil},
		{"mixed sizes, out of order, repeated", []Range{{size - 8192, 8192}, {4096, 65536}, {4096, 4096}, {0, 512 << 10}}, nil},
		{"the last block", []Range{{size - 4096, 4096}}, nil},
		{"past the end comes back short", []Range{{0, 4096}, {size - 4096, 8192}}, errShort},
		{"wholly past the end", []Range{{size, 4096}}, errShort},
		{"unaligned offset", []Range{{100, 4096}}, unix.EINVAL},
		{"too many ranges", make([]Range, 65), errArgs},
		{"more than the buffer", []Range{{0, 1 << 20}, {0, 4096}}, errArgs},
		{"empty range", []Range{{0, 0}}, errArgs},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if c.wantErr == unix.EINVAL && !direct {
				t.Skip("only O_DIRECT refuses unaligned reads")
			}
			got, err := r.Read(c.rs)
			switch {
			case c.wantErr == nil && err != nil:
				t.Fatalf("Read: %v", err)
			case c.wantErr == errShort || c.wantErr == errArgs:
				if err == nil {
					t.Fatal("Read succeeded, want an error")
				}
			case c.wantErr != nil && !errors.Is(err, c.wantErr):
				t.Fatalf("Read: %v, want %v", err, c.wantErr)
			}
			if c.wantErr != nil {
				return
			}
			if len(got) != len(c.rs) {
				t.Fatalf("%d results for %d ranges", len(got), len(c.rs))
			}
			for i, x := range c.rs {
				if !bytes.Equal(got[i], data[x.Off:x.Off+x.Len]) {
					t.Fatalf("range %d (%d bytes at %d): wrong bytes", i, x.Len, x.Off)
				}
			}
		})
	}
	// A failed Read leaves the context usable.
	got, err := r.Read([]Range{{8192, 4096}})
	if err != nil || !bytes.Equal(got[0], data[8192:12288]) {
		t.Fatalf("Read after failures: %v", err)
	}
	r.Close()
	if _, err := r.Read([]Range{{0, 4096}}); !errors.Is(err, ErrBroken) {
		t.Fatalf("Read after Close: %v, want ErrBroken", err)
	}
}

// Markers for checkReads: any error will do.
var (
	errShort = errors.New("short")
	errArgs  = errors.New("bad arguments")
)

func TestReadFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "f")
	if err := os.WriteFile(path, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	data := fill(t, path, 8<<20)
	direct := true
	f, err := os.OpenFile(path, os.O_RDONLY|unix.O_DIRECT, 0)
	if err != nil {
		direct = false
		// Some file systems (tmpfs) refuse O_DIRECT; AIO then runs
		// synchronously, which still must read right.
		t.Logf("O_DIRECT refused here (%v): reading buffered", err)
		if f, err = os.Open(path); err != nil {
			t.Fatal(err)
		}
	}
	defer f.Close()
	checkReads(t, f, data, direct)
}

// TestReadLoopDevice reads a real block device, where the reads are
// truly asynchronous.
func TestReadLoopDevice(t *testing.T) {
	dev := tracktest.Loop(t, 16<<20, false)
	data := fill(t, dev, 16<<20)
	checkReads(t, openDirect(t, dev), data, true)
}

func TestOpenRefusesBadSizes(t *testing.T) {
	f, err := os.Open(os.DevNull)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for _, c := range []struct{ depth, bytes int }{{0, 4096}, {8, 0}, {-1, -1}} {
		if r, err := Open(f, c.depth, c.bytes); err == nil {
			r.Close()
			t.Errorf("Open(depth %d, %d bytes) succeeded", c.depth, c.bytes)
		}
	}
}

// BenchmarkRead compares a batch of 128 scattered 4 KiB reads of a loop
// device through AIO with the same reads by pread, in CPU per read:
//
//	go test -run '^$' -bench Read ./internal/aio/
func BenchmarkRead(b *testing.B) {
	dev := tracktest.Loop(b, 256<<20, false)
	f, err := os.OpenFile(dev, os.O_RDONLY|unix.O_DIRECT, 0)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	const batch = 128
	rnd := rand.New(rand.NewPCG(5, 6))
	rs := make([]Range, batch)
	next := func() {
		for i := range rs {
			rs[i] = Range{Off: rnd.Int64N(256<<20/4096) * 4096, Len: 4096}
		}
	}
	b.Run("aio", func(b *testing.B) {
		r, err := Open(f, batch, batch*4096)
		if err != nil {
			b.Fatal(err)
		}
		defer r.Close()
		b.SetBytes(batch * 4096)
		for b.Loop() {
			next()
			if _, err := r.Read(rs); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("pread", func(b *testing.B) {
		r, err := Open(f, 1, 4096) // only for its aligned buffer
		if err != nil {
			b.Fatal(err)
		}
		defer r.Close()
		b.SetBytes(batch * 4096)
		for b.Loop() {
			next()
			for _, x := range rs {
				if _, err := f.ReadAt(r.buf, x.Off); err != nil {
					b.Fatal(err)
				}
			}
		}
	})
}

// The control block must match the kernel's 64-byte struct iocb, field
// for field.
func TestLayout(t *testing.T) {
	var cb iocb
	if n := unsafe.Sizeof(cb); n != 64 {
		t.Fatalf("iocb is %d bytes, want 64", n)
	}
	offs := []struct {
		name      string
		got, want uintptr
	}{
		{"aio_lio_opcode", unsafe.Offsetof(cb.opcode), 16},
		{"aio_fildes", unsafe.Offsetof(cb.fildes), 20},
		{"aio_buf", unsafe.Offsetof(cb.buf), 24},
		{"aio_nbytes", unsafe.Offsetof(cb.nbytes), 32},
		{"aio_offset", unsafe.Offsetof(cb.offset), 40},
	}
	for _, o := range offs {
		if o.got != o.want {
			t.Errorf("%s at %d, want %d", o.name, o.got, o.want)
		}
	}
	if n := unsafe.Sizeof(event{}); n != 32 {
		t.Errorf("io_event is %d bytes, want 32", n)
	}
}
