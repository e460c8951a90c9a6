package protocol

import (
	"fmt"

	"github.com/klauspost/compress/s2"
	"github.com/klauspost/compress/zstd"
)

// Codec is how a WRITE's payload is compressed.
type Codec uint8

const (
	// Zstd is zstd at its fastest level: the smaller payload, for
	// changes at the rate an application writes them.
	Zstd Codec = iota + 1
	// S2 (github.com/klauspost/compress/s2, block format) encodes two to
	// three times as fast as Zstd for about a quarter more bytes: for
	// whole-disk copies (an agent's initial sync, the connector's full
	// copies and rescans), which are bound by the CPU, not by the link,
	// at LAN speeds. Only to servers of RevisionS2 or later.
	S2
)

// BulkCodec is the codec for a whole-disk copy to a server of revision:
// S2 where it decodes it, else Zstd.
func BulkCodec(revision uint16) Codec {
	if revision >= RevisionS2 {
		return S2
	}
	return Zstd
}

// Flag returns the WRITE flag that marks a payload compressed with c.
func (c Codec) Flag() uint8 {
	if c == S2 {
		return FlagS2
	}
	return FlagZstd
}

// String returns the codec's name.
func (c Codec) String() string {
	switch c {
	case Zstd:
		return "zstd"
	case S2:
		return "s2"
	}
	return fmt.Sprintf("codec(%d)", uint8(c))
}

// Decompressor decodes the payloads of compressed WRITEs, never to more than
// MaxPayload bytes. It is not safe for concurrent use.
type Decompressor struct{ d *zstd.Decoder }

// NewDecompressor returns a Decompressor.
func NewDecompressor() (*Decompressor, error) {
	d, err := zstd.NewReader(nil, zstd.WithDecoderConcurrency(1), zstd.WithDecoderMaxMemory(MaxPayload), zstd.WithDecoderMaxWindow(MaxPayload))
	if err != nil {
		return nil, fmt.Errorf("zstd decoder: %w", err)
	}
	return &Decompressor{d: d}, nil
}

// Payload returns the write's data, decompressed into buf (reused when big
// enough) if it is compressed; the result has exactly RawLen bytes.
func (z *Decompressor) Payload(w *Write, buf []byte) ([]byte, error) {
	switch {
	case w.Flags&FlagZstd != 0:
		out, err := z.d.DecodeAll(w.Data, buf[:0])
		if err != nil {
			return nil, fmt.Errorf("%w: WRITE: zstd payload: %v", ErrMalformed, err)
		}
		if len(out) != int(w.RawLen) {
			return nil, fmt.Errorf("%w: WRITE: zstd payload is %d bytes, raw length says %d", ErrMalformed, len(out), w.RawLen)
		}
		return out, nil
	case w.Flags&FlagS2 != 0:
		// The block states its length first: checked against RawLen
		// (at most MaxPayload) before anything is allocated.
		n, err := s2.DecodedLen(w.Data)
		if err != nil {
			return nil, fmt.Errorf("%w: WRITE: s2 payload: %v", ErrMalformed, err)
		}
		if n != int(w.RawLen) {
			return nil, fmt.Errorf("%w: WRITE: s2 payload is %d bytes, raw length says %d", ErrMalformed, n, w.RawLen)
		}
		if cap(buf) < n {
			buf = make([]byte, n)
		}
		out, err := s2.Decode(buf[:n], w.Data)
		if err != nil {
			return nil, fmt.Errorf("%w: WRITE: s2 payload: %v", ErrMalformed, err)
		}
		return out, nil
	}
	return w.Data, nil
}

// Close releases the decoder.
func (z *Decompressor) Close() { z.d.Close() }

// Compressor compresses WRITE payloads when that pays. It is not safe for
// concurrent use; make one per goroutine.
type Compressor struct {
	codec Codec
	e     *zstd.Encoder
}

// NewCompressor returns a Compressor for codec.
func NewCompressor(codec Codec) (*Compressor, error) {
	switch codec {
	case S2:
		return &Compressor{codec: S2}, nil
	case Zstd:
		e, err := zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.SpeedFastest), zstd.WithEncoderConcurrency(1), zstd.WithLowerEncoderMem(true))
		if err != nil {
			return nil, fmt.Errorf("zstd encoder: %w", err)
		}
		return &Compressor{codec: Zstd, e: e}, nil
	}
	return nil, fmt.Errorf("unknown codec %d", codec)
}

// CompressBound is the room a Compressor's buffer needs for n bytes of
// data never to be reallocated by either codec's encoder.
func CompressBound(n int) int {
	return max(s2.MaxEncodedLen(n), n+n/64+1024)
}

// Codec returns the compressor's codec.
func (c *Compressor) Codec() Codec { return c.codec }

// Compress returns data compressed into buf and true when that saves at
// least an eighth; otherwise data and false.
func (c *Compressor) Compress(data, buf []byte) ([]byte, bool) {
	var out []byte
	if c.codec == S2 {
		if s2.MaxEncodedLen(len(data)) < 0 {
			return data, false // beyond any WRITE; s2 would panic
		}
		out = s2.Encode(buf[:0], data) // reallocates a buf under CompressBound
	} else {
		out = c.e.EncodeAll(data, buf[:0])
	}
	if len(out) > len(data)-len(data)/8 {
		return data, false
	}
	return out, true
}
