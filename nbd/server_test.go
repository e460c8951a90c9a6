package nbd

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"net"
	"path/filepath"
	"slices"
	"testing"
	"time"
)

func testExports(t *testing.T) (map[string]Device, []byte) {
	data := make([]byte, 4*mib+512)
	rand.Read(data)
	for i := mib; i < 2*mib; i++ {
		data[i] = 0
	}
	holey := &memDevice{data: data, holes: []Extent{{Offset: mib, Length: mib, Zero: true}}}
	return map[string]Device{
		"disk":    &memDevice{data: data},
		"holey":   memExtentDevice{holey},
		"broken":  &memDevice{data: data, fail: 3 * mib},
		"default": &memDevice{data: data[:4096]},
	}, data
}

func TestHandshakeRejects(t *testing.T) {
	exports, _ := testExports(t)
	sock := startServer(t, exports)
	tests := []struct {
		name string
		run  func(c *client)
	}{
		{"bad option magic", func(c *client) {
			c.greet(clientFlagFixedNewstyle)
			c.send(make([]byte, 16))
			c.expectClosed()
		}},
		{"unknown client flags", func(c *client) {
			c.greet(clientFlagFixedNewstyle | 1<<7)
			c.expectClosed()
		}},
		{"not fixed newstyle", func(c *client) {
			c.greet(0)
			c.expectClosed()
		}},
		{"unknown export by NBD_OPT_EXPORT_NAME", func(c *client) {
			c.greet(clientFlagFixedNewstyle | clientFlagNoZeroes)
			c.sendOption(optExportName, []byte("nope"))
			c.expectClosed()
		}},
		{"oversized export name", func(c *client) {
			c.greet(clientFlagFixedNewstyle | clientFlagNoZeroes)
			c.sendOption(optExportName, make([]byte, maxOptionLength+1))
			c.expectClosed()
		}},
		{"abort", func(c *client) {
			c.greet(clientFlagFixedNewstyle | clientFlagNoZeroes)
			c.sendOption(optAbort, nil)
			if r := c.mustOptionReply(); r.typ != repAck {
				t.Errorf("abort reply %#x", r.typ)
			}
			c.expectClosed()
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := dialRaw(t, sock)
			c.t = t
			tt.run(c)
		})
	}
}

func TestOptionReplies(t *testing.T) {
	exports, _ := testExports(t)
	sock := startServer(t, exports, func(s *Server) {
		s.List = func() ([]string, error) { return []string{"disk", "holey"}, nil }
	})
	tests := []struct {
		name     string
		opt      uint32
		data     []byte
		want     []uint32 // reply types, in order
		wantData []string // data of the non-final replies, if checked
	}{
		{"unknown option", 99, []byte("xyz"), []uint32{repErrUnsup}, nil},
		{"extended headers unsupported", 11, nil, []uint32{repErrUnsup}, nil},
		{"starttls without config", optStartTLS, nil, []uint32{repErrUnsup}, nil},
		{"oversized option", optInfo, make([]byte, maxOptionLength+1), []uint32{repErrTooBig}, nil},
		{"info unknown export", optInfo, exportRequestData("nope"), []uint32{repErrUnknown}, nil},
		{"go unknown export", optGo, exportRequestData("nope"), []uint32{repErrUnknown}, nil},
		{"info truncated", optInfo, exportRequestData("disk")[:5], []uint32{repErrInvalid}, nil},
		{"info", optInfo, exportRequestData("disk", infoName), []uint32{repInfo, repInfo, repInfo, repAck}, nil},
		{"list", optList, nil, []uint32{repServer, repServer, repAck}, []string{"\x00\x00\x00\x04disk", "\x00\x00\x00\x05holey"}},
		{"list with data", optList, []byte{1}, []uint32{repErrInvalid}, nil},
		{"structured reply with data", optStructuredReply, []byte{1}, []uint32{repErrInvalid}, nil},
		{"set meta context before structured", optSetMetaContext, metaContextData("disk", metaBaseAllocation), []uint32{repErrInvalid}, nil},
		{"list meta contexts", optListMetaContext, metaContextData("disk"), []uint32{repMetaContext, repAck}, []string{"\x00\x00\x00\x00base:allocation"}},
		{"list meta base:", optListMetaContext, metaContextData("disk", "base:"), []uint32{repMetaContext, repAck}, nil},
		{"list meta other", optListMetaContext, metaContextData("disk", "qemu:dirty-bitmap:x"), []uint32{repAck}, nil},
		{"list meta unknown export", optListMetaContext, metaContextData("nope"), []uint32{repErrUnknown}, nil},
		{"meta context garbage", optListMetaContext, []byte{0, 0, 0, 9, 1}, []uint32{repErrInvalid}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := dial(t, sock)
			c.sendOption(tt.opt, tt.data)
			for i, want := range tt.want {
				r := c.mustOptionReply()
				if r.opt != tt.opt || r.typ != want {
					t.Fatalf("reply %d: opt %d type %#x, want opt %d type %#x (data %q)", i, r.opt, r.typ, tt.opt, want, r.data)
				}
				if i < len(tt.wantData) && string(r.data) != tt.wantData[i] {
					t.Errorf("reply %d data = %q, want %q", i, r.data, tt.wantData[i])
				}
			}
			// The connection stays usable after every one of these.
			if size, _ := c.negotiate("disk", false, false); size != uint64(exports["disk"].Size()) {
				t.Errorf("size after %s = %d", tt.name, size)
			}
		})
	}
}

func TestListDisabled(t *testing.T) {
	exports, _ := testExports(t)
	sock := startServer(t, exports)
	c := dial(t, sock)
	c.sendOption(optList, nil)
	if r := c.mustOptionReply(); r.typ != repErrPolicy {
		t.Fatalf("list reply %#x, want NBD_REP_ERR_POLICY", r.typ)
	}
}

func TestExportNameOption(t *testing.T) {
	exports, data := testExports(t)
	sock := startServer(t, exports)
	for _, noZeroes := range []bool{false, true} {
		c := dialRaw(t, sock)
		flags := uint32(clientFlagFixedNewstyle)
		if noZeroes {
			flags |= clientFlagNoZeroes
		}
		c.greet(flags)
		c.sendOption(optExportName, []byte("disk"))
		b := make([]byte, 10)
		c.readFull(b)
		if got := binary.BigEndian.Uint64(b); got != uint64(len(data)) {
			t.Fatalf("size %d", got)
		}
		if got := binary.BigEndian.Uint16(b[8:]); got&tflagReadOnly == 0 {
			t.Fatalf("flags %#x lack READ_ONLY", got)
		}
		if !noZeroes {
			c.readFull(make([]byte, 124))
		}
		c.request(cmdRead, 0, 1, 512, 1024, nil)
		if r := c.readReply(); r.errno != 0 || !bytes.Equal(r.data, data[512:1536]) {
			t.Fatalf("read after EXPORT_NAME: errno %d", r.errno)
		}
	}
}

func TestCommands(t *testing.T) {
	exports, data := testExports(t)
	sock := startServer(t, exports)
	size := uint64(len(data))
	type want struct {
		errno uint32
		data  []byte // nil: none
		descs []statusDescriptor
	}
	tests := []struct {
		name       string
		export     string
		structured bool
		meta       bool
		typ, flags uint16
		off        uint64
		length     uint32
		payload    []byte
		want       want
	}{
		{name: "read", export: "disk", typ: cmdRead, off: 4096, length: 8192, want: want{data: data[4096:12288]}},
		{name: "read structured", export: "disk", structured: true, typ: cmdRead, off: 1, length: 3, want: want{data: data[1:4]}},
		{name: "read to the last byte", export: "disk", typ: cmdRead, off: size - 512, length: 512, want: want{data: data[size-512:]}},
		{name: "read past end", export: "disk", typ: cmdRead, off: size - 512, length: 513, want: want{errno: errInval}},
		{name: "read past end structured", export: "disk", structured: true, typ: cmdRead, off: size, length: 1, want: want{errno: errInval}},
		{name: "read offset overflow", export: "disk", typ: cmdRead, off: 1<<64 - 1, length: 2, want: want{errno: errInval}},
		{name: "read zero length", export: "disk", typ: cmdRead, off: 0, length: 0, want: want{errno: errInval}},
		{name: "read too large", export: "disk", typ: cmdRead, off: 0, length: MaxRequestLength + 1, want: want{errno: errInval}},
		{name: "read device error", export: "broken", typ: cmdRead, off: 3*mib - 10, length: 20, want: want{errno: errIO}},
		{name: "read device error structured", export: "broken", structured: true, typ: cmdRead, off: 3 * mib, length: 1, want: want{errno: errIO}},
		{name: "write", export: "disk", typ: cmdWrite, off: 0, length: 5, payload: []byte("hello"), want: want{errno: errPerm}},
		{name: "trim", export: "disk", typ: cmdTrim, off: 0, length: 4096, want: want{errno: errPerm}},
		{name: "write zeroes", export: "disk", typ: cmdWriteZeroes, off: 0, length: 4096, want: want{errno: errPerm}},
		{name: "flush", export: "disk", typ: cmdFlush, want: want{}},
		{name: "unknown command", export: "disk", typ: 42, want: want{errno: errInval}},
		{name: "block status without meta", export: "holey", structured: true, typ: cmdBlockStatus, length: 4096, want: want{errno: errInval}},
		{name: "block status holes", export: "holey", structured: true, meta: true, typ: cmdBlockStatus, off: 0, length: 3 * mib,
			want: want{descs: []statusDescriptor{{mib, 0}, {mib, stateHole | stateZero}, {mib, 0}}}},
		{name: "block status req one", export: "holey", structured: true, meta: true, typ: cmdBlockStatus, flags: cmdFlagReqOne, off: mib + 512, length: 2 * mib,
			want: want{descs: []statusDescriptor{{mib - 512, stateHole | stateZero}}}},
		{name: "block status no extents", export: "disk", structured: true, meta: true, typ: cmdBlockStatus, off: 0, length: uint32(size),
			want: want{descs: []statusDescriptor{{uint32(size), 0}}}},
		{name: "block status past end", export: "holey", structured: true, meta: true, typ: cmdBlockStatus, off: size, length: 1, want: want{errno: errInval}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := dial(t, sock)
			c.negotiate(tt.export, tt.structured, tt.meta)
			c.request(tt.typ, tt.flags, 7, tt.off, tt.length, tt.payload)
			r := c.readReply()
			if r.handle != 7 {
				t.Fatalf("handle %d", r.handle)
			}
			if r.errno != tt.want.errno {
				t.Fatalf("errno %d (%q), want %d", r.errno, r.msg, tt.want.errno)
			}
			if tt.want.data != nil && !bytes.Equal(r.data, tt.want.data) {
				t.Fatalf("data differs (%d bytes, want %d)", len(r.data), len(tt.want.data))
			}
			if tt.structured && r.errno == 0 && r.typ == replyTypeOffsetData && r.offset != tt.off {
				t.Fatalf("data chunk offset %d, want %d", r.offset, tt.off)
			}
			if tt.structured && r.flags&replyFlagDone == 0 {
				t.Fatal("chunk lacks NBD_REPLY_FLAG_DONE")
			}
			if tt.want.descs != nil && !slices.Equal(r.descs, tt.want.descs) {
				t.Fatalf("descriptors %v, want %v", r.descs, tt.want.descs)
			}
			// The connection goes on working.
			c.request(cmdRead, 0, 8, 0, 16, nil)
			if r := c.readReply(); r.handle != 8 || r.errno != 0 || !bytes.Equal(r.data, data[:16]) {
				t.Fatalf("follow-up read: handle %d errno %d", r.handle, r.errno)
			}
			c.request(cmdDisc, 0, 9, 0, 0, nil)
			c.expectClosed()
		})
	}
}

func TestBadRequestMagic(t *testing.T) {
	exports, _ := testExports(t)
	sock := startServer(t, exports)
	c := dial(t, sock)
	c.negotiate("disk", false, false)
	c.send(make([]byte, requestHeaderLen))
	c.expectClosed()
}

func TestMetaContextForOtherExport(t *testing.T) {
	exports, _ := testExports(t)
	sock := startServer(t, exports)
	c := dial(t, sock)
	c.sendOption(optStructuredReply, nil)
	c.mustOptionReply()
	c.sendOption(optSetMetaContext, metaContextData("disk", metaBaseAllocation))
	c.mustOptionReply()
	c.mustOptionReply()
	c.negotiate("holey", false, false)
	c.request(cmdBlockStatus, 0, 1, 0, 4096, nil)
	if r := c.readReply(); r.errno != errInval {
		t.Fatalf("block status on an export other than the meta context's: errno %d", r.errno)
	}
}

func TestPipelinedReads(t *testing.T) {
	exports, data := testExports(t)
	sock := startServer(t, exports)
	for _, structured := range []bool{false, true} {
		c := dial(t, sock)
		c.negotiate("disk", structured, false)
		const n = 200
		type span struct{ off, length int }
		want := map[uint64]span{}
		// Send everything before reading anything: the server must keep
		// reading requests while replies are pending.
		go func() {
			for i := range n {
				off := (i * 7919 * 512) % (len(data) - 256*1024)
				length := 1 + (i*4099)%(256*1024)
				c.request(cmdRead, 0, uint64(i), uint64(off), uint32(length), nil)
			}
		}()
		for i := range n {
			off := (i * 7919 * 512) % (len(data) - 256*1024)
			want[uint64(i)] = span{off, 1 + (i*4099)%(256*1024)}
		}
		for range n {
			r := c.readReply()
			s, ok := want[r.handle]
			if !ok {
				t.Fatalf("unexpected or duplicate handle %d", r.handle)
			}
			delete(want, r.handle)
			if r.errno != 0 || !bytes.Equal(r.data, data[s.off:s.off+s.length]) {
				t.Fatalf("handle %d: errno %d, data differs", r.handle, r.errno)
			}
		}
	}
}

func TestShutdownIsGraceful(t *testing.T) {
	exports, data := testExports(t)
	sock := filepath.Join(shortTempDir(t), "nbd.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := &Server{Lookup: func(string) (Device, error) { return exports["disk"], nil }}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, l) }()

	c := dial(t, sock)
	c.negotiate("", false, false)
	idle := dial(t, sock) // in the handshake when the server stops
	for i := range 8 {
		c.request(cmdRead, 0, uint64(i), 0, 1*mib, nil)
	}
	time.Sleep(50 * time.Millisecond)
	cancel()
	for range 8 {
		if r := c.readReply(); r.errno != 0 || !bytes.Equal(r.data, data[:mib]) {
			t.Fatalf("in-flight read failed at shutdown: errno %d", r.errno)
		}
	}
	c.expectClosed()
	idle.expectClosed()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Serve = %v, want nil", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Serve did not return after cancel")
	}
	if _, err := net.Dial("unix", sock); err == nil {
		t.Fatal("listener still accepts after shutdown")
	}
}

func TestHandshakeTimeout(t *testing.T) {
	exports, _ := testExports(t)
	sock := startServer(t, exports, func(s *Server) { s.HandshakeTimeout = 100 * time.Millisecond })
	c := dialRaw(t, sock)
	start := time.Now()
	c.readFull(make([]byte, 18)) // greeting; then say nothing
	c.expectClosed()
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("slow client held the handshake for %v", d)
	}
}

// pipeListener hands out one in-memory connection, then fails for good.
type pipeListener struct {
	conns chan net.Conn
}

func (l *pipeListener) Accept() (net.Conn, error) {
	if c, ok := <-l.conns; ok {
		return c, nil
	}
	return nil, net.ErrClosed
}
func (l *pipeListener) Close() error   { return nil }
func (l *pipeListener) Addr() net.Addr { return &net.UnixAddr{Name: "pipe", Net: "unix"} }

func TestServeAcceptErrorStopsConnections(t *testing.T) {
	exports, _ := testExports(t)
	cl, sv := net.Pipe()
	l := &pipeListener{conns: make(chan net.Conn, 1)}
	l.conns <- sv
	srv := &Server{Lookup: func(string) (Device, error) { return exports["disk"], nil }}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(context.Background(), l) }()
	c := &client{t: t, nc: cl, br: bufio.NewReader(cl), pending: map[uint64]uint32{}}
	c.greet(clientFlagFixedNewstyle | clientFlagNoZeroes)
	c.negotiate("disk", false, false)
	close(l.conns) // the listener fails while a client is connected
	select {
	case err := <-done:
		if !errors.Is(err, net.ErrClosed) {
			t.Fatalf("Serve = %v, want net.ErrClosed", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Serve did not return after its listener failed")
	}
	c.expectClosed()
}
