package protocol

import (
	"fmt"

	"github.com/klauspost/compress/zstd"
)

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
	if w.Flags&FlagZstd == 0 {
		return w.Data, nil
	}
	out, err := z.d.DecodeAll(w.Data, buf[:0])
	if err != nil {
		return nil, fmt.Errorf("%w: WRITE: zstd payload: %v", ErrMalformed, err)
	}
	if len(out) != int(w.RawLen) {
		return nil, fmt.Errorf("%w: WRITE: zstd payload is %d bytes, raw length says %d", ErrMalformed, len(out), w.RawLen)
	}
	return out, nil
}

// Close releases the decoder.
func (z *Decompressor) Close() { z.d.Close() }

// Compressor compresses WRITE payloads when that pays. It is not safe for
// concurrent use; make one per goroutine.
type Compressor struct{ e *zstd.Encoder }

// NewCompressor returns a Compressor at zstd's fastest level.
func NewCompressor() (*Compressor, error) {
	e, err := zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.SpeedFastest), zstd.WithEncoderConcurrency(1), zstd.WithLowerEncoderMem(true))
	if err != nil {
		return nil, fmt.Errorf("zstd encoder: %w", err)
	}
	return &Compressor{e: e}, nil
}

// Compress returns data compressed into buf and true when that saves at
// least an eighth; otherwise data and false.
func (c *Compressor) Compress(data, buf []byte) ([]byte, bool) {
	out := c.e.EncodeAll(data, buf[:0])
	if len(out) > len(data)-len(data)/8 {
		return data, false
	}
	return out, true
}
