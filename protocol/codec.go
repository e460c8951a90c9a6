package protocol

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
)

// ErrMalformed marks a frame that does not decode; the error text names the
// message and field.
var ErrMalformed = errors.New("malformed message")

// enc appends little-endian fields to a buffer.
type enc struct{ b []byte }

func (e *enc) u8(v uint8)   { e.b = append(e.b, v) }
func (e *enc) u16(v uint16) { e.b = binary.LittleEndian.AppendUint16(e.b, v) }
func (e *enc) u32(v uint32) { e.b = binary.LittleEndian.AppendUint32(e.b, v) }
func (e *enc) u64(v uint64) { e.b = binary.LittleEndian.AppendUint64(e.b, v) }
func (e *enc) i64(v int64)  { e.u64(uint64(v)) }
func (e *enc) bool(v bool) {
	if v {
		e.u8(1)
	} else {
		e.u8(0)
	}
}

// str writes a string of at most 65535 bytes (longer ones are cut; every
// string field documents a smaller limit).
func (e *enc) str(s string) {
	if len(s) > math.MaxUint16 {
		s = s[:math.MaxUint16]
	}
	e.u16(uint16(len(s)))
	e.b = append(e.b, s...)
}

// dec reads fields from a message body; the first error sticks and later
// reads return zero values.
type dec struct {
	msg string
	b   []byte
	err error
}

func (d *dec) fail(field, why string) {
	if d.err == nil {
		d.err = fmt.Errorf("%w: %s: %s: %s", ErrMalformed, d.msg, field, why)
	}
}

func (d *dec) take(field string, n int) []byte {
	if d.err != nil {
		return nil
	}
	if n < 0 || len(d.b) < n {
		d.fail(field, fmt.Sprintf("needs %d bytes, %d left", n, len(d.b)))
		return nil
	}
	v := d.b[:n]
	d.b = d.b[n:]
	return v
}

func (d *dec) u8(f string) uint8 {
	if b := d.take(f, 1); b != nil {
		return b[0]
	}
	return 0
}
func (d *dec) u16(f string) uint16 {
	if b := d.take(f, 2); b != nil {
		return binary.LittleEndian.Uint16(b)
	}
	return 0
}
func (d *dec) u32(f string) uint32 {
	if b := d.take(f, 4); b != nil {
		return binary.LittleEndian.Uint32(b)
	}
	return 0
}
func (d *dec) u64(f string) uint64 {
	if b := d.take(f, 8); b != nil {
		return binary.LittleEndian.Uint64(b)
	}
	return 0
}

// nonneg reads an int64 that must not be negative (offsets, lengths, sizes).
func (d *dec) nonneg(f string) int64 {
	v := int64(d.u64(f))
	if v < 0 {
		d.fail(f, fmt.Sprintf("negative value %d", v))
		return 0
	}
	return v
}

func (d *dec) i64(f string) int64 { return int64(d.u64(f)) }

func (d *dec) bool(f string) bool {
	switch v := d.u8(f); v {
	case 0:
		return false
	case 1:
		return true
	default:
		d.fail(f, fmt.Sprintf("boolean byte %d", v))
		return false
	}
}

func (d *dec) str(f string, max int) string {
	n := int(d.u16(f + " length"))
	if n > max {
		d.fail(f, fmt.Sprintf("%d bytes exceeds the limit of %d", n, max))
		return ""
	}
	return string(d.take(f, n))
}

// count reads a u16 element count and checks that the rest of the body can
// hold that many elements of at least min bytes each, so a lying count
// cannot make the decoder allocate more than the frame's size.
func (d *dec) count(f string, min int) int {
	n := int(d.u16(f + " count"))
	if d.err == nil && n*min > len(d.b) {
		d.fail(f, fmt.Sprintf("count %d cannot fit in %d remaining bytes", n, len(d.b)))
		return 0
	}
	return n
}

func (d *dec) rest() []byte {
	if d.err != nil {
		return nil
	}
	v := d.b
	d.b = nil
	return v
}

func (d *dec) done() error {
	if d.err == nil && len(d.b) != 0 {
		d.fail("end", fmt.Sprintf("%d trailing bytes", len(d.b)))
	}
	return d.err
}
