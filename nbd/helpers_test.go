package nbd

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"
)

// memDevice is an in-memory Device; holes, if set, makes it an Extenter.
type memDevice struct {
	data  []byte
	holes []Extent // zero extents; the rest is data
	fail  int64    // if > 0, reads touching [fail, fail+1) fail
}

func (d *memDevice) Size() int64 { return int64(len(d.data)) }

func (d *memDevice) ReadAt(p []byte, off int64) (int, error) {
	if d.fail > 0 && off <= d.fail && d.fail < off+int64(len(p)) {
		return 0, errors.New("injected media error")
	}
	if off >= int64(len(d.data)) {
		return 0, io.EOF
	}
	n := copy(p, d.data[off:])
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

type memExtentDevice struct{ *memDevice }

func (d memExtentDevice) Extents(off, length int64) ([]Extent, error) {
	return d.holes, nil
}

// fileDevice is a Device over a (sparse) file whose extents come from
// SEEK_DATA and SEEK_HOLE.
type fileDevice struct {
	f    *os.File
	size int64
}

func openFileDevice(t testing.TB, name string) *fileDevice {
	t.Helper()
	f, err := os.Open(name)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	fi, err := f.Stat()
	if err != nil {
		t.Fatal(err)
	}
	return &fileDevice{f: f, size: fi.Size()}
}

func (d *fileDevice) Size() int64                             { return d.size }
func (d *fileDevice) ReadAt(p []byte, off int64) (int, error) { return d.f.ReadAt(p, off) }

const (
	seekData = 3
	seekHole = 4
)

func (d *fileDevice) Extents(off, length int64) ([]Extent, error) {
	fd := int(d.f.Fd())
	end := min(off+length, d.size)
	var es []Extent
	for cur := off; cur < end; {
		data, err := syscall.Seek(fd, cur, seekData)
		if errors.Is(err, syscall.ENXIO) {
			data = end
		} else if err != nil {
			return nil, fmt.Errorf("seek data: %w", err)
		}
		data = min(data, end)
		if data > cur {
			es = append(es, Extent{Offset: cur, Length: data - cur, Zero: true})
		}
		if data >= end {
			break
		}
		hole, err := syscall.Seek(fd, data, seekHole)
		if err != nil {
			return nil, fmt.Errorf("seek hole: %w", err)
		}
		hole = min(hole, end)
		es = append(es, Extent{Offset: data, Length: hole - data})
		cur = hole
	}
	return es, nil
}

const mib = 1 << 20

// makeSparseImage writes a sparse raw image of size bytes: random data in
// the first MiB of every three, holes elsewhere, and data in the last MiB.
func makeSparseImage(t testing.TB, dir string, size int64) string {
	t.Helper()
	name := filepath.Join(dir, "disk.raw")
	f, err := os.Create(name)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, mib)
	for off := int64(0); off < size; off += mib {
		if (off/mib)%3 != 0 && off+mib < size {
			continue
		}
		rand.Read(buf)
		if _, err := f.WriteAt(buf[:min(mib, size-off)], off); err != nil {
			t.Fatal(err)
		}
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	return name
}

// shortTempDir returns a fresh directory with a path short enough for unix
// socket addresses.
func shortTempDir(t testing.TB) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "nbdt")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

// startServer serves exports on a unix socket until the test ends and
// returns the socket path. configure may set more fields first.
func startServer(t testing.TB, exports map[string]Device, configure ...func(*Server)) string {
	t.Helper()
	sock := filepath.Join(shortTempDir(t), "nbd.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := &Server{
		Lookup: func(name string) (Device, error) {
			if d, ok := exports[name]; ok {
				return d, nil
			}
			return nil, fmt.Errorf("export %q: %w", name, ErrUnknownExport)
		},
		Logger: slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelWarn})),
	}
	for _, f := range configure {
		f(srv)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, l) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return sock
}

// testWriter sends log output to t.Log while the test runs.
type testWriter struct{ t testing.TB }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(string(p))
	return len(p), nil
}

func nbdURI(sock, name string) string {
	return (&url.URL{Scheme: "nbd+unix", Path: "/" + name, RawQuery: url.Values{"socket": {sock}}.Encode()}).String()
}

// requireBinary returns the path of a client binary or skips the test
// loudly; with FERRY_TEST_REQUIRE_ALL=1 a missing binary fails the test.
func requireBinary(t testing.TB, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		msg := fmt.Sprintf("!!! SKIPPING: %s is not on PATH (Debian: qemu-utils for qemu-img, libnbd-bin for nbdinfo/nbdcopy); this integration test did not run", name)
		if os.Getenv("FERRY_TEST_REQUIRE_ALL") == "1" {
			t.Fatalf("%s; FERRY_TEST_REQUIRE_ALL=1 forbids skips", msg)
		}
		t.Skip(msg)
	}
	return p
}

// runCmd runs a command with a deadline and returns its combined output.
func runCmd(t testing.TB, name string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %q: %v\n%s", name, args, err, out)
	}
	return string(out)
}

// client is a minimal NBD client for protocol edge cases.
type client struct {
	t  testing.TB
	nc net.Conn
	br *bufio.Reader

	mu      sync.Mutex
	pending map[uint64]uint32 // read handle → length, for simple replies
}

func dialRaw(t testing.TB, sock string) *client {
	t.Helper()
	nc, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nc.Close() })
	nc.SetDeadline(time.Now().Add(20 * time.Second))
	return &client{t: t, nc: nc, br: bufio.NewReader(nc), pending: map[uint64]uint32{}}
}

// dial connects and completes the greeting with the given client flags.
func dial(t testing.TB, sock string) *client {
	t.Helper()
	c := dialRaw(t, sock)
	c.greet(clientFlagFixedNewstyle | clientFlagNoZeroes)
	return c
}

func (c *client) greet(flags uint32) {
	c.t.Helper()
	var g [18]byte
	if _, err := io.ReadFull(c.br, g[:]); err != nil {
		c.t.Fatalf("read greeting: %v", err)
	}
	if binary.BigEndian.Uint64(g[0:]) != nbdMagic || binary.BigEndian.Uint64(g[8:]) != optMagic {
		c.t.Fatalf("bad greeting %x", g)
	}
	if got := binary.BigEndian.Uint16(g[16:]); got != flagFixedNewstyle|flagNoZeroes {
		c.t.Fatalf("handshake flags = %#x", got)
	}
	c.send(binary.BigEndian.AppendUint32(nil, flags))
}

func (c *client) send(b []byte) {
	c.t.Helper()
	if _, err := c.nc.Write(b); err != nil {
		c.t.Fatalf("send: %v", err)
	}
}

func (c *client) sendOption(opt uint32, data []byte) {
	c.t.Helper()
	b := binary.BigEndian.AppendUint64(nil, optMagic)
	b = binary.BigEndian.AppendUint32(b, opt)
	b = binary.BigEndian.AppendUint32(b, uint32(len(data)))
	c.send(append(b, data...))
}

type optReply struct {
	opt, typ uint32
	data     []byte
}

func (c *client) readOptionReply() (optReply, error) {
	var h [20]byte
	if _, err := io.ReadFull(c.br, h[:]); err != nil {
		return optReply{}, err
	}
	if m := binary.BigEndian.Uint64(h[:]); m != optReplyMagic {
		return optReply{}, fmt.Errorf("bad option reply magic %#x", m)
	}
	r := optReply{opt: binary.BigEndian.Uint32(h[8:]), typ: binary.BigEndian.Uint32(h[12:])}
	r.data = make([]byte, binary.BigEndian.Uint32(h[16:]))
	_, err := io.ReadFull(c.br, r.data)
	return r, err
}

func (c *client) mustOptionReply() optReply {
	c.t.Helper()
	r, err := c.readOptionReply()
	if err != nil {
		c.t.Fatalf("read option reply: %v", err)
	}
	return r
}

// expectClosed checks that the server closed the connection.
func (c *client) expectClosed() {
	c.t.Helper()
	b, err := io.ReadAll(c.br)
	if err != nil && !errors.Is(err, syscall.ECONNRESET) {
		c.t.Fatalf("expected close, got error %v", err)
	}
	if len(b) != 0 {
		c.t.Fatalf("expected close, got %d more bytes %x", len(b), b[:min(len(b), 32)])
	}
}

func exportRequestData(name string, infos ...uint16) []byte {
	b := binary.BigEndian.AppendUint32(nil, uint32(len(name)))
	b = append(b, name...)
	b = binary.BigEndian.AppendUint16(b, uint16(len(infos)))
	for _, i := range infos {
		b = binary.BigEndian.AppendUint16(b, i)
	}
	return b
}

func metaContextData(name string, queries ...string) []byte {
	b := binary.BigEndian.AppendUint32(nil, uint32(len(name)))
	b = append(b, name...)
	b = binary.BigEndian.AppendUint32(b, uint32(len(queries)))
	for _, q := range queries {
		b = binary.BigEndian.AppendUint32(b, uint32(len(q)))
		b = append(b, q...)
	}
	return b
}

// negotiate optionally enables structured replies and base:allocation,
// then sends NBD_OPT_GO and returns the export size and flags.
func (c *client) negotiate(name string, structured, meta bool) (uint64, uint16) {
	c.t.Helper()
	if structured {
		c.sendOption(optStructuredReply, nil)
		if r := c.mustOptionReply(); r.typ != repAck {
			c.t.Fatalf("structured reply: type %#x", r.typ)
		}
	}
	if meta {
		c.sendOption(optSetMetaContext, metaContextData(name, metaBaseAllocation))
		r := c.mustOptionReply()
		if r.typ != repMetaContext || string(r.data[4:]) != metaBaseAllocation {
			c.t.Fatalf("set meta context: type %#x data %q", r.typ, r.data)
		}
		if r = c.mustOptionReply(); r.typ != repAck {
			c.t.Fatalf("set meta context: type %#x", r.typ)
		}
	}
	c.sendOption(optGo, exportRequestData(name, infoBlockSize))
	var size uint64
	var flags uint16
	for {
		r := c.mustOptionReply()
		switch r.typ {
		case repInfo:
			if binary.BigEndian.Uint16(r.data) == infoExport {
				size = binary.BigEndian.Uint64(r.data[2:])
				flags = binary.BigEndian.Uint16(r.data[10:])
			}
		case repAck:
			return size, flags
		default:
			c.t.Fatalf("NBD_OPT_GO %q: reply type %#x %q", name, r.typ, r.data)
		}
	}
}

func (c *client) request(typ, flags uint16, handle, off uint64, length uint32, payload []byte) {
	c.t.Helper()
	if typ == cmdRead {
		c.mu.Lock()
		c.pending[handle] = length
		c.mu.Unlock()
	}
	b := binary.BigEndian.AppendUint32(nil, requestMagic)
	b = binary.BigEndian.AppendUint16(b, flags)
	b = binary.BigEndian.AppendUint16(b, typ)
	b = binary.BigEndian.AppendUint64(b, handle)
	b = binary.BigEndian.AppendUint64(b, off)
	b = binary.BigEndian.AppendUint32(b, length)
	c.send(append(b, payload...))
}

// reply is a simple reply or one structured chunk.
type reply struct {
	handle     uint64
	errno      uint32
	structured bool
	flags, typ uint16
	offset     uint64
	data       []byte
	descs      []statusDescriptor
	msg        string
}

func (c *client) readReply() reply {
	c.t.Helper()
	var m [4]byte
	if _, err := io.ReadFull(c.br, m[:]); err != nil {
		c.t.Fatalf("read reply: %v", err)
	}
	switch binary.BigEndian.Uint32(m[:]) {
	case simpleMagic:
		var h [12]byte
		c.readFull(h[:])
		r := reply{errno: binary.BigEndian.Uint32(h[:]), handle: binary.BigEndian.Uint64(h[4:])}
		c.mu.Lock()
		n, isRead := c.pending[r.handle]
		delete(c.pending, r.handle)
		c.mu.Unlock()
		if isRead && r.errno == 0 {
			r.data = make([]byte, n)
			c.readFull(r.data)
		}
		return r
	case structReplyMag:
		var h [16]byte
		c.readFull(h[:])
		r := reply{structured: true, flags: binary.BigEndian.Uint16(h[:]), typ: binary.BigEndian.Uint16(h[2:]), handle: binary.BigEndian.Uint64(h[4:])}
		payload := make([]byte, binary.BigEndian.Uint32(h[12:]))
		c.readFull(payload)
		switch r.typ {
		case replyTypeOffsetData:
			r.offset = binary.BigEndian.Uint64(payload)
			r.data = payload[8:]
		case replyTypeBlockStatus:
			if id := binary.BigEndian.Uint32(payload); id != metaBaseAllocationID {
				c.t.Fatalf("block status context id %d", id)
			}
			for p := payload[4:]; len(p) >= 8; p = p[8:] {
				r.descs = append(r.descs, statusDescriptor{length: binary.BigEndian.Uint32(p), flags: binary.BigEndian.Uint32(p[4:])})
			}
		case replyTypeError:
			r.errno = binary.BigEndian.Uint32(payload)
			r.msg = string(payload[6 : 6+binary.BigEndian.Uint16(payload[4:])])
		default:
			c.t.Fatalf("unexpected chunk type %d", r.typ)
		}
		return r
	default:
		c.t.Fatalf("bad reply magic %x", m)
	}
	return reply{}
}

func (c *client) readFull(b []byte) {
	c.t.Helper()
	if _, err := io.ReadFull(c.br, b); err != nil {
		c.t.Fatalf("read reply: %v", err)
	}
}
