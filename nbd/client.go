package nbd

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"time"
)

// ErrNoMetaContext is returned by [Client.BlockStatus] for a metadata
// context the server did not agree to (for example a dirty bitmap the
// export does not carry).
var ErrNoMetaContext = errors.New("nbd: metadata context not negotiated")

// Client is an NBD client for one export: fixed newstyle handshake with
// NBD_OPT_STRUCTURED_REPLY, NBD_OPT_SET_META_CONTEXT and NBD_OPT_GO, then
// READ and BLOCK_STATUS. It issues one request at a time and is not safe
// for concurrent use.
type Client struct {
	conn   net.Conn
	br     *bufio.Reader
	size   int64
	flags  uint16
	meta   map[string]uint32 // negotiated context name → id
	cookie uint64
	hdr    []byte
}

// BlockStatus is one extent of a metadata context: Flags are the context's
// bits (for base:allocation 1 hole, 2 zero; for qemu:dirty-bitmap:NAME 1
// dirty).
type BlockStatus struct {
	Offset, Length int64
	Flags          uint32
}

// Block status flags of the contexts the connector reads.
const (
	// StateHole and StateZero are base:allocation's flags.
	StateHole = stateHole
	StateZero = stateZero
	// StateDirty is a qemu:dirty-bitmap context's flag.
	StateDirty = 1
)

// DialClient connects to export name on the server at address ("unix:PATH"
// or a unix socket path, or "tcp:HOST:PORT"), asking for the metadata
// contexts in meta (e.g. "base:allocation", "qemu:dirty-bitmap:b1").
// Contexts the server does not know are simply not negotiated;
// [Client.HasContext] tells.
func DialClient(ctx context.Context, address, name string, meta ...string) (*Client, error) {
	network, addr := "unix", strings.TrimPrefix(address, "unix:")
	if a, ok := strings.CutPrefix(address, "tcp:"); ok {
		network, addr = "tcp", a
	}
	var d net.Dialer
	conn, err := d.DialContext(ctx, network, addr)
	if err != nil {
		return nil, fmt.Errorf("nbd: connect %s: %w", address, err)
	}
	c := &Client{conn: conn, br: bufio.NewReaderSize(conn, 256<<10), meta: map[string]uint32{}}
	if dl, ok := ctx.Deadline(); ok {
		_ = conn.SetDeadline(dl)
	} else {
		_ = conn.SetDeadline(time.Now().Add(30 * time.Second))
	}
	if err := c.handshake(name, meta); err != nil {
		conn.Close()
		return nil, fmt.Errorf("nbd: handshake with %s export %q: %w", address, name, err)
	}
	_ = conn.SetDeadline(time.Time{})
	return c, nil
}

// Size is the export's size in bytes.
func (c *Client) Size() int64 { return c.size }

// HasContext reports whether the metadata context was negotiated.
func (c *Client) HasContext(name string) bool { _, ok := c.meta[name]; return ok }

// Close sends NBD_CMD_DISC and closes the connection.
func (c *Client) Close() error {
	c.cookie++
	_ = c.conn.SetWriteDeadline(time.Now().Add(time.Second))
	_, _ = c.conn.Write(appendRequest(nil, 0, cmdDisc, c.cookie, 0, 0))
	return c.conn.Close()
}

func (c *Client) handshake(name string, meta []string) error {
	var h [18]byte
	if _, err := io.ReadFull(c.br, h[:]); err != nil {
		return fmt.Errorf("read greeting: %w", err)
	}
	if binary.BigEndian.Uint64(h[0:]) != nbdMagic || binary.BigEndian.Uint64(h[8:]) != optMagic {
		return errors.New("not a newstyle NBD server")
	}
	if binary.BigEndian.Uint16(h[16:])&flagFixedNewstyle == 0 {
		return errors.New("server does not speak fixed newstyle")
	}
	if err := c.write(binary.BigEndian.AppendUint32(nil, clientFlagFixedNewstyle|clientFlagNoZeroes)); err != nil {
		return err
	}
	if err := c.option(optStructuredReply, nil); err != nil {
		return err
	}
	if _, err := c.reply(optStructuredReply, func(uint32, []byte) error { return nil }); err != nil {
		return fmt.Errorf("structured replies: %w", err)
	}
	if len(meta) > 0 {
		b := appendString32(nil, name)
		b = binary.BigEndian.AppendUint32(b, uint32(len(meta)))
		for _, q := range meta {
			b = appendString32(b, q)
		}
		if err := c.option(optSetMetaContext, b); err != nil {
			return err
		}
		if _, err := c.reply(optSetMetaContext, func(typ uint32, d []byte) error {
			if typ != repMetaContext || len(d) < 4 {
				return fmt.Errorf("unexpected reply %#x to SET_META_CONTEXT", typ)
			}
			c.meta[string(d[4:])] = binary.BigEndian.Uint32(d)
			return nil
		}); err != nil {
			return fmt.Errorf("set metadata contexts: %w", err)
		}
	}
	b := appendString32(nil, name)
	b = binary.BigEndian.AppendUint16(b, 0)
	if err := c.option(optGo, b); err != nil {
		return err
	}
	gotSize := false
	if _, err := c.reply(optGo, func(typ uint32, d []byte) error {
		if typ == repInfo && len(d) >= 12 && binary.BigEndian.Uint16(d) == infoExport {
			c.size = int64(binary.BigEndian.Uint64(d[2:]))
			c.flags = binary.BigEndian.Uint16(d[10:])
			gotSize = true
		}
		return nil
	}); err != nil {
		return fmt.Errorf("open export: %w", err)
	}
	if !gotSize {
		return errors.New("server sent no export size")
	}
	return nil
}

func (c *Client) write(b []byte) error {
	if _, err := c.conn.Write(b); err != nil {
		return fmt.Errorf("write: %w", err)
	}
	return nil
}

func (c *Client) option(opt uint32, data []byte) error {
	b := binary.BigEndian.AppendUint64(nil, optMagic)
	b = binary.BigEndian.AppendUint32(b, opt)
	b = binary.BigEndian.AppendUint32(b, uint32(len(data)))
	return c.write(append(b, data...))
}

// reply reads option replies until the ACK, passing the others to each.
func (c *Client) reply(opt uint32, each func(typ uint32, data []byte) error) (uint32, error) {
	for {
		var h [20]byte
		if _, err := io.ReadFull(c.br, h[:]); err != nil {
			return 0, fmt.Errorf("read option reply: %w", err)
		}
		if binary.BigEndian.Uint64(h[0:]) != optReplyMagic || binary.BigEndian.Uint32(h[8:]) != opt {
			return 0, errors.New("bad option reply header")
		}
		typ, n := binary.BigEndian.Uint32(h[12:]), binary.BigEndian.Uint32(h[16:])
		if n > maxOptionLength {
			return 0, fmt.Errorf("option reply of %d bytes", n)
		}
		data := make([]byte, n)
		if _, err := io.ReadFull(c.br, data); err != nil {
			return 0, fmt.Errorf("read option reply: %w", err)
		}
		if typ&repFlagError != 0 {
			return typ, fmt.Errorf("server error %#x: %s", typ, data)
		}
		if typ == repAck {
			return typ, nil
		}
		if err := each(typ, data); err != nil {
			return typ, err
		}
	}
}

func appendString32(b []byte, s string) []byte {
	b = binary.BigEndian.AppendUint32(b, uint32(len(s)))
	return append(b, s...)
}

func appendRequest(b []byte, flags, typ uint16, cookie, off uint64, length uint32) []byte {
	b = binary.BigEndian.AppendUint32(b, requestMagic)
	b = binary.BigEndian.AppendUint16(b, flags)
	b = binary.BigEndian.AppendUint16(b, typ)
	b = binary.BigEndian.AppendUint64(b, cookie)
	b = binary.BigEndian.AppendUint64(b, off)
	return binary.BigEndian.AppendUint32(b, length)
}

// chunk is one structured reply chunk.
type chunk struct {
	flags, typ uint16
	data       []byte
}

// request sends a command and calls each for every reply chunk until the
// last one.
func (c *Client) request(typ uint16, off int64, length uint32, each func(chunk) error) error {
	c.cookie++
	cookie := c.cookie
	_ = c.conn.SetDeadline(time.Now().Add(time.Minute))
	defer c.conn.SetDeadline(time.Time{})
	if err := c.write(appendRequest(c.hdr[:0], 0, typ, cookie, uint64(off), length)); err != nil {
		return err
	}
	var firstErr error
	for {
		var h [4]byte
		if _, err := io.ReadFull(c.br, h[:]); err != nil {
			return fmt.Errorf("read reply: %w", err)
		}
		switch binary.BigEndian.Uint32(h[:]) {
		case simpleMagic:
			var s [12]byte
			if _, err := io.ReadFull(c.br, s[:]); err != nil {
				return fmt.Errorf("read reply: %w", err)
			}
			if errno := binary.BigEndian.Uint32(s[:]); errno != 0 {
				return fmt.Errorf("server error %d", errno)
			}
			return errors.New("simple reply where a structured reply was negotiated")
		case structReplyMag:
		default:
			return errors.New("bad reply magic")
		}
		var s [16]byte
		if _, err := io.ReadFull(c.br, s[:]); err != nil {
			return fmt.Errorf("read reply: %w", err)
		}
		flags, rtyp := binary.BigEndian.Uint16(s[0:]), binary.BigEndian.Uint16(s[2:])
		if binary.BigEndian.Uint64(s[4:]) != cookie {
			return errors.New("reply for another request")
		}
		n := binary.BigEndian.Uint32(s[12:])
		if n > MaxRequestLength+64 {
			return fmt.Errorf("reply chunk of %d bytes", n)
		}
		data := make([]byte, n)
		if _, err := io.ReadFull(c.br, data); err != nil {
			return fmt.Errorf("read reply: %w", err)
		}
		if rtyp&(1<<15) != 0 {
			if firstErr == nil {
				msg := ""
				if len(data) >= 6 {
					ml := int(binary.BigEndian.Uint16(data[4:]))
					if 6+ml <= len(data) {
						msg = string(data[6 : 6+ml])
					}
				}
				firstErr = fmt.Errorf("server error: %s", msg)
			}
		} else if rtyp != 0 && firstErr == nil {
			if err := each(chunk{flags, rtyp, data}); err != nil {
				firstErr = err
			}
		}
		if flags&replyFlagDone != 0 {
			return firstErr
		}
	}
}

// ReadAt reads len(p) bytes at off (len(p) ≤ [MaxRequestLength]); holes
// read as zeros.
func (c *Client) ReadAt(p []byte, off int64) (int, error) {
	if len(p) > MaxRequestLength {
		return 0, fmt.Errorf("nbd: read of %d bytes is too long", len(p))
	}
	if off < 0 || off+int64(len(p)) > c.size {
		return 0, fmt.Errorf("nbd: read %d at %d past the end (%d)", len(p), off, c.size)
	}
	const offsetHole = 2
	err := c.request(cmdRead, off, uint32(len(p)), func(ch chunk) error {
		if len(ch.data) < 8 {
			return errors.New("short read chunk")
		}
		at := int64(binary.BigEndian.Uint64(ch.data)) - off
		switch ch.typ {
		case replyTypeOffsetData:
			d := ch.data[8:]
			if at < 0 || at+int64(len(d)) > int64(len(p)) {
				return errors.New("read chunk outside the request")
			}
			copy(p[at:], d)
		case offsetHole:
			if len(ch.data) < 12 {
				return errors.New("short hole chunk")
			}
			n := int64(binary.BigEndian.Uint32(ch.data[8:]))
			if at < 0 || at+n > int64(len(p)) {
				return errors.New("hole chunk outside the request")
			}
			clear(p[at : at+n])
		}
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("nbd: read %d at %d: %w", len(p), off, err)
	}
	return len(p), nil
}

// BlockStatus returns the extents of context for [off, off+length), in
// order and covering the range exactly (it repeats the request where the
// server answers for less).
func (c *Client) BlockStatus(context string, off, length int64) ([]BlockStatus, error) {
	id, ok := c.meta[context]
	if !ok {
		return nil, fmt.Errorf("%w: %s", ErrNoMetaContext, context)
	}
	var out []BlockStatus
	end := off + length
	for off < end {
		n := min(end-off, 1<<30)
		got := int64(0)
		err := c.request(cmdBlockStatus, off, uint32(n), func(ch chunk) error {
			if ch.typ != replyTypeBlockStatus || len(ch.data) < 4 || binary.BigEndian.Uint32(ch.data) != id {
				return nil
			}
			at := off
			for d := ch.data[4:]; len(d) >= 8; d = d[8:] {
				l := int64(binary.BigEndian.Uint32(d))
				l = min(l, end-at)
				if l <= 0 {
					break
				}
				out = append(out, BlockStatus{Offset: at, Length: l, Flags: binary.BigEndian.Uint32(d[4:])})
				at += l
			}
			got = at - off
			return nil
		})
		if err != nil {
			return nil, fmt.Errorf("nbd: block status %s at %d: %w", context, off, err)
		}
		if got == 0 {
			return nil, fmt.Errorf("nbd: block status %s at %d: empty answer", context, off)
		}
		off += got
	}
	return out, nil
}
