package protocol

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"sync"
)

// headerLen is the frame header: a 4-byte big-endian length of the type
// byte and body.
const headerLen = 4

// Append appends m as a frame to b.
func Append(b []byte, m Message) []byte {
	start := len(b)
	b = append(b, 0, 0, 0, 0, byte(m.Type()))
	e := enc{b: b}
	m.appendBody(&e)
	binary.BigEndian.PutUint32(e.b[start:], uint32(len(e.b)-start-headerLen))
	return e.b
}

// directPayload is the smallest WRITE payload WriteFrame hands to its
// writer as it is rather than copying it behind the header.
const directPayload = 16 << 10

// WriteFrame writes m to w as one frame, encoding it in buf's storage and
// returning buf (grown if it had to be) for the next frame. A WRITE's
// payload of 16 KiB or more goes to w straight from m.Data, after its
// header, instead of being copied behind it first: a whole-disk copy
// would otherwise copy every byte it sends once more. The bytes written
// are those of Append.
func WriteFrame(w io.Writer, buf []byte, m Message) ([]byte, error) {
	wm, ok := m.(*Write)
	if !ok || len(wm.Data) < directPayload {
		buf = Append(buf[:0], m)
		_, err := w.Write(buf)
		return buf, err
	}
	buf = append(buf[:0], 0, 0, 0, 0, byte(TypeWrite))
	e := enc{b: buf}
	wm.appendFields(&e)
	buf = e.b
	binary.BigEndian.PutUint32(buf, uint32(len(buf)-headerLen+len(wm.Data)))
	if _, err := w.Write(buf); err != nil {
		return buf, err
	}
	_, err := w.Write(wm.Data)
	return buf, err
}

// Decode decodes one frame body (type byte and body, without the length
// header). Data fields of the result alias body.
func Decode(body []byte) (Message, error) {
	if len(body) == 0 {
		return nil, fmt.Errorf("%w: empty frame", ErrMalformed)
	}
	if len(body) > MaxFrame {
		return nil, fmt.Errorf("%w: frame of %d bytes exceeds %d", ErrMalformed, len(body), MaxFrame)
	}
	t := Type(body[0])
	m := newMessage(t)
	if m == nil {
		return nil, fmt.Errorf("%w: unknown message type %d", ErrMalformed, body[0])
	}
	d := dec{msg: t.String(), b: body[1:]}
	m.decodeBody(&d)
	if err := d.done(); err != nil {
		return nil, err
	}
	return m, nil
}

// Reader reads frames from a stream.
type Reader struct {
	r   *bufio.Reader
	buf []byte  // body of the last frame, when it fit keepFrame
	big *[]byte // pooled body of the last larger frame; back to its pool at the next Read
}

// keepFrame is the largest frame body a Reader keeps a buffer of its own
// for. Larger bodies come from pools shared by every Reader and go back at
// the next Read, so a server's thousands of idle sessions do not each hold
// a buffer as large as the largest frame they ever read.
const keepFrame = 4 << 10

// frameClasses are the pooled body sizes, each four times the last, up
// to MaxFrame.
var frameClasses = [...]int{16 << 10, 64 << 10, 256 << 10, 1 << 20, 4 << 20, MaxFrame}

var framePools [len(frameClasses)]sync.Pool

// getFrame returns a pooled buffer of at least n ≤ MaxFrame bytes.
func getFrame(n int) *[]byte {
	for i, c := range frameClasses {
		if n <= c {
			if b, ok := framePools[i].Get().(*[]byte); ok {
				return b
			}
			b := make([]byte, c)
			return &b
		}
	}
	panic("protocol: frame larger than MaxFrame") // Read checks n first
}

// putFrame returns a buffer from getFrame to its pool.
func putFrame(b *[]byte) {
	for i, c := range frameClasses {
		if cap(*b) == c {
			framePools[i].Put(b)
			return
		}
	}
}

// NewReader returns a Reader of r with a 256 KiB buffer, for a stream that
// carries large frames back to back (an agent's initial sync).
func NewReader(r io.Reader) *Reader { return NewReaderSize(r, 256<<10) }

// NewReaderSize returns a Reader of r with a buffer of size bytes. A server
// holding thousands of mostly idle sessions uses a small one: frames larger
// than the buffer are read straight into the frame body, so the size only
// decides how many small frames one read from r can bring in.
func NewReaderSize(r io.Reader, size int) *Reader {
	return &Reader{r: bufio.NewReaderSize(r, size)}
}

// Read reads the next message. The returned message's byte slices are only
// valid until the next Read. At a clean end of stream it returns io.EOF; a
// stream cut inside a frame is io.ErrUnexpectedEOF.
func (r *Reader) Read() (Message, error) {
	if r.big != nil {
		putFrame(r.big)
		r.big = nil
	}
	var h [headerLen]byte
	if _, err := io.ReadFull(r.r, h[:]); err != nil {
		return nil, err
	}
	n := binary.BigEndian.Uint32(h[:])
	if n == 0 || n > MaxFrame {
		return nil, fmt.Errorf("%w: frame length %d is not in 1..%d", ErrMalformed, n, MaxFrame)
	}
	var body []byte
	if n <= keepFrame {
		if r.buf == nil {
			r.buf = make([]byte, keepFrame)
		}
		body = r.buf[:n]
	} else {
		r.big = getFrame(int(n))
		body = (*r.big)[:n]
	}
	if _, err := io.ReadFull(r.r, body); err != nil {
		if errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		return nil, fmt.Errorf("read %d-byte frame: %w", n, err)
	}
	return Decode(body)
}
