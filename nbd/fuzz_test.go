package nbd

import (
	"bytes"
	"context"
	"encoding/binary"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"
)

var updateCorpus = flag.Bool("update-corpus", false, "rewrite the seed corpus in testdata/fuzz")

func encodeRequest(r request) []byte {
	b := binary.BigEndian.AppendUint32(nil, requestMagic)
	b = binary.BigEndian.AppendUint16(b, r.flags)
	b = binary.BigEndian.AppendUint16(b, r.typ)
	b = binary.BigEndian.AppendUint64(b, r.handle)
	b = binary.BigEndian.AppendUint64(b, r.offset)
	return binary.BigEndian.AppendUint32(b, r.length)
}

func encodeOption(opt uint32, data []byte) []byte {
	b := binary.BigEndian.AppendUint64(nil, optMagic)
	b = binary.BigEndian.AppendUint32(b, opt)
	b = binary.BigEndian.AppendUint32(b, uint32(len(data)))
	return append(b, data...)
}

func FuzzParseRequest(f *testing.F) {
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := parseRequest(b)
		if err != nil {
			return
		}
		if got := encodeRequest(r); !bytes.Equal(got, b) {
			t.Fatalf("round trip: %x != %x", got, b)
		}
	})
}

func FuzzParseOption(f *testing.F) {
	f.Fuzz(func(t *testing.T, b []byte) {
		if len(b) < optionHeaderLen {
			if _, err := parseOptionHeader(b); err == nil {
				t.Fatal("short option header parsed")
			}
			return
		}
		h, err := parseOptionHeader(b[:optionHeaderLen])
		if err != nil {
			return
		}
		data := b[optionHeaderLen:]
		if got := encodeOption(h.opt, nil)[:12]; !bytes.Equal(got, b[:12]) {
			t.Fatalf("header round trip: %x != %x", got, b[:12])
		}
		if r, err := parseExportRequest(data); err == nil {
			if got := exportRequestData(r.name, r.infos...); !bytes.Equal(got, data) {
				t.Fatalf("export request round trip: %x != %x", got, data)
			}
		}
		if r, err := parseMetaContextRequest(data); err == nil {
			if got := metaContextData(r.name, r.queries...); !bytes.Equal(got, data) {
				t.Fatalf("meta context round trip: %x != %x", got, data)
			}
		}
	})
}

// FuzzServeConn feeds arbitrary client bytes to a whole connection:
// handshake and transmission must end without panics or hangs.
func FuzzServeConn(f *testing.F) {
	data := make([]byte, 64*1024)
	for i := range data {
		data[i] = byte(i * 7)
	}
	dev := memExtentDevice{&memDevice{data: data, holes: []Extent{{Offset: 4096, Length: 8192, Zero: true}}}}
	srv := &Server{
		Lookup: func(name string) (Device, error) {
			if name == "" || name == "disk" {
				return dev, nil
			}
			return nil, ErrUnknownExport
		},
		List:             func() ([]string, error) { return []string{"disk"}, nil },
		HandshakeTimeout: 2 * time.Second,
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		cl, sv := net.Pipe()
		done := make(chan struct{})
		go func() {
			defer close(done)
			srv.serveConn(context.Background(), sv)
		}()
		drained := make(chan struct{})
		go func() {
			defer close(drained)
			io.Copy(io.Discard, cl)
		}()
		cl.SetWriteDeadline(time.Now().Add(2 * time.Second))
		cl.Write(in)
		cl.Close()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			t.Fatal("connection did not end after the client closed")
		}
		<-drained
	})
}

// seedSession is a complete, valid client byte stream.
func seedSession() []byte {
	b := binary.BigEndian.AppendUint32(nil, clientFlagFixedNewstyle|clientFlagNoZeroes)
	b = append(b, encodeOption(optList, nil)...)
	b = append(b, encodeOption(optStructuredReply, nil)...)
	b = append(b, encodeOption(optListMetaContext, metaContextData("disk"))...)
	b = append(b, encodeOption(optSetMetaContext, metaContextData("disk", metaBaseAllocation))...)
	b = append(b, encodeOption(optInfo, exportRequestData("disk", infoName, infoBlockSize))...)
	b = append(b, encodeOption(optGo, exportRequestData("disk", infoBlockSize))...)
	b = append(b, encodeRequest(request{typ: cmdRead, handle: 1, offset: 0, length: 4096})...)
	b = append(b, encodeRequest(request{typ: cmdBlockStatus, handle: 2, offset: 0, length: 65536})...)
	b = append(b, encodeRequest(request{typ: cmdWrite, handle: 3, offset: 0, length: 4})...)
	b = append(b, "data"...)
	b = append(b, encodeRequest(request{typ: cmdRead, handle: 4, offset: 65535, length: 2})...)
	b = append(b, encodeRequest(request{typ: cmdFlush, handle: 5})...)
	return append(b, encodeRequest(request{typ: cmdDisc, handle: 6})...)
}

// TestWriteSeedCorpus rewrites testdata/fuzz when run with -update-corpus;
// otherwise it does nothing.
func TestWriteSeedCorpus(t *testing.T) {
	if !*updateCorpus {
		return
	}
	seeds := map[string][][]byte{
		"FuzzParseRequest": {
			encodeRequest(request{typ: cmdRead, handle: 1, offset: 4096, length: 65536}),
			encodeRequest(request{typ: cmdBlockStatus, flags: cmdFlagReqOne, handle: 2, length: 1 << 30}),
			encodeRequest(request{typ: cmdWrite, handle: 3, offset: 1 << 40, length: 512}),
			encodeRequest(request{typ: cmdDisc}),
			make([]byte, requestHeaderLen),
			encodeRequest(request{typ: cmdRead})[:27],
		},
		"FuzzParseOption": {
			encodeOption(optGo, exportRequestData("disk", infoBlockSize, infoName)),
			encodeOption(optInfo, exportRequestData("")),
			encodeOption(optSetMetaContext, metaContextData("disk", metaBaseAllocation, "base:")),
			encodeOption(optListMetaContext, metaContextData("disk")),
			encodeOption(optList, nil),
			encodeOption(optGo, []byte{0xff, 0xff, 0xff, 0xff}),
			encodeOption(optSetMetaContext, []byte{0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff}),
		},
		"FuzzServeConn": {
			seedSession(),
			append(binary.BigEndian.AppendUint32(nil, clientFlagFixedNewstyle), encodeOption(optExportName, []byte("disk"))...),
			append(binary.BigEndian.AppendUint32(nil, clientFlagFixedNewstyle), encodeOption(optAbort, nil)...),
			append(binary.BigEndian.AppendUint32(nil, clientFlagFixedNewstyle), encodeOption(99, []byte("junk"))...),
			binary.BigEndian.AppendUint32(nil, 0xffffffff),
		},
	}
	for target, inputs := range seeds {
		dir := filepath.Join("testdata", "fuzz", target)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		for i, in := range inputs {
			body := fmt.Sprintf("go test fuzz v1\n[]byte(%s)\n", strconv.Quote(string(in)))
			if err := os.WriteFile(filepath.Join(dir, fmt.Sprintf("seed-%02d", i)), []byte(body), 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
}
