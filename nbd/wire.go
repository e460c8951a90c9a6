package nbd

import (
	"encoding/binary"
	"errors"
	"fmt"
	"strings"
)

// This file holds the pure parsers and encoders of NBD frames. They never
// read from a connection, allocate at most what their input holds, and
// never panic; FuzzParse* exercise them.

var (
	errBadMagic = errors.New("bad magic")
	errShort    = errors.New("frame too short")
	errTrailing = errors.New("trailing bytes in frame")
)

// request is the header of a transmission-phase request.
type request struct {
	flags  uint16
	typ    uint16
	handle uint64
	offset uint64
	length uint32
}

// parseRequest parses a 28-byte request header.
func parseRequest(b []byte) (request, error) {
	if len(b) < requestHeaderLen {
		return request{}, fmt.Errorf("parse request header: %w", errShort)
	}
	if len(b) > requestHeaderLen {
		return request{}, fmt.Errorf("parse request header: %w", errTrailing)
	}
	if m := binary.BigEndian.Uint32(b[0:]); m != requestMagic {
		return request{}, fmt.Errorf("parse request header: %w %#x", errBadMagic, m)
	}
	return request{
		flags:  binary.BigEndian.Uint16(b[4:]),
		typ:    binary.BigEndian.Uint16(b[6:]),
		handle: binary.BigEndian.Uint64(b[8:]),
		offset: binary.BigEndian.Uint64(b[16:]),
		length: binary.BigEndian.Uint32(b[24:]),
	}, nil
}

// optionHeader is the header of a handshake option; length bytes of option
// data follow it.
type optionHeader struct {
	opt    uint32
	length uint32
}

// parseOptionHeader parses a 16-byte option header.
func parseOptionHeader(b []byte) (optionHeader, error) {
	if len(b) != optionHeaderLen {
		return optionHeader{}, fmt.Errorf("parse option header: %w", errShort)
	}
	if m := binary.BigEndian.Uint64(b); m != optMagic {
		return optionHeader{}, fmt.Errorf("parse option header: %w %#x", errBadMagic, m)
	}
	return optionHeader{
		opt:    binary.BigEndian.Uint32(b[8:]),
		length: binary.BigEndian.Uint32(b[12:]),
	}, nil
}

// exportRequest is the data of NBD_OPT_GO and NBD_OPT_INFO.
type exportRequest struct {
	name  string
	infos []uint16
}

// parseExportRequest parses the data of NBD_OPT_GO or NBD_OPT_INFO:
// a name length, the name, a count of information requests and the
// requests, with nothing left over.
func parseExportRequest(b []byte) (exportRequest, error) {
	d := decoder{b: b}
	name, err := d.string32()
	if err != nil {
		return exportRequest{}, fmt.Errorf("parse export request name: %w", err)
	}
	n, ok := d.uint16()
	if !ok {
		return exportRequest{}, fmt.Errorf("parse export request info count: %w", errShort)
	}
	if len(d.b) != 2*int(n) {
		return exportRequest{}, fmt.Errorf("parse export request: %d info requests in %d bytes", n, len(d.b))
	}
	infos := make([]uint16, n)
	for i := range infos {
		infos[i], _ = d.uint16()
	}
	return exportRequest{name: name, infos: infos}, nil
}

// metaContextRequest is the data of NBD_OPT_LIST_META_CONTEXT and
// NBD_OPT_SET_META_CONTEXT.
type metaContextRequest struct {
	name    string
	queries []string
}

// parseMetaContextRequest parses the data of a meta context option: an
// export name and a counted list of queries, with nothing left over.
func parseMetaContextRequest(b []byte) (metaContextRequest, error) {
	d := decoder{b: b}
	name, err := d.string32()
	if err != nil {
		return metaContextRequest{}, fmt.Errorf("parse meta context export name: %w", err)
	}
	n, ok := d.uint32()
	if !ok {
		return metaContextRequest{}, fmt.Errorf("parse meta context query count: %w", errShort)
	}
	// Each query takes at least its 4-byte length, which bounds the
	// allocation by the input size.
	if uint64(n)*4 > uint64(len(d.b)) {
		return metaContextRequest{}, fmt.Errorf("parse meta context: %d queries in %d bytes: %w", n, len(d.b), errShort)
	}
	queries := make([]string, 0, n)
	for i := uint32(0); i < n; i++ {
		q, err := d.string32()
		if err != nil {
			return metaContextRequest{}, fmt.Errorf("parse meta context query %d: %w", i, err)
		}
		queries = append(queries, q)
	}
	if len(d.b) != 0 {
		return metaContextRequest{}, fmt.Errorf("parse meta context: %w", errTrailing)
	}
	return metaContextRequest{name: name, queries: queries}, nil
}

// decoder consumes big-endian fields from b.
type decoder struct{ b []byte }

func (d *decoder) uint16() (uint16, bool) {
	if len(d.b) < 2 {
		return 0, false
	}
	v := binary.BigEndian.Uint16(d.b)
	d.b = d.b[2:]
	return v, true
}

func (d *decoder) uint32() (uint32, bool) {
	if len(d.b) < 4 {
		return 0, false
	}
	v := binary.BigEndian.Uint32(d.b)
	d.b = d.b[4:]
	return v, true
}

// string32 consumes a string preceded by its 32-bit length and checks it
// against the protocol's rules for strings.
func (d *decoder) string32() (string, error) {
	n, ok := d.uint32()
	if !ok {
		return "", errShort
	}
	if n > maxStringLength {
		return "", fmt.Errorf("string of %d bytes exceeds %d", n, maxStringLength)
	}
	if uint64(n) > uint64(len(d.b)) {
		return "", errShort
	}
	s := string(d.b[:n])
	d.b = d.b[n:]
	if strings.IndexByte(s, 0) >= 0 {
		return "", errors.New("string contains NUL")
	}
	return s, nil
}

// appendOptionReply appends an option reply header and its data.
func appendOptionReply(b []byte, opt, typ uint32, data []byte) []byte {
	b = binary.BigEndian.AppendUint64(b, optReplyMagic)
	b = binary.BigEndian.AppendUint32(b, opt)
	b = binary.BigEndian.AppendUint32(b, typ)
	b = binary.BigEndian.AppendUint32(b, uint32(len(data)))
	return append(b, data...)
}

// appendSimpleReply appends a simple reply header.
func appendSimpleReply(b []byte, errno uint32, handle uint64) []byte {
	b = binary.BigEndian.AppendUint32(b, simpleMagic)
	b = binary.BigEndian.AppendUint32(b, errno)
	return binary.BigEndian.AppendUint64(b, handle)
}

// appendStructuredHeader appends a structured reply chunk header; length
// bytes of payload follow it.
func appendStructuredHeader(b []byte, flags, typ uint16, handle uint64, length uint32) []byte {
	b = binary.BigEndian.AppendUint32(b, structReplyMag)
	b = binary.BigEndian.AppendUint16(b, flags)
	b = binary.BigEndian.AppendUint16(b, typ)
	b = binary.BigEndian.AppendUint64(b, handle)
	return binary.BigEndian.AppendUint32(b, length)
}

// appendStructuredError appends a final NBD_REPLY_TYPE_ERROR chunk.
func appendStructuredError(b []byte, handle uint64, errno uint32, msg string) []byte {
	if len(msg) > maxStringLength {
		msg = msg[:maxStringLength]
	}
	b = appendStructuredHeader(b, replyFlagDone, replyTypeError, handle, uint32(6+len(msg)))
	b = binary.BigEndian.AppendUint32(b, errno)
	b = binary.BigEndian.AppendUint16(b, uint16(len(msg)))
	return append(b, msg...)
}
