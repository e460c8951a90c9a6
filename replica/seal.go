package replica

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"runtime"
	"sync"

	"github.com/klauspost/compress/s2"
	"github.com/klauspost/compress/zstd"
	"github.com/zeebo/blake3"
	"golang.org/x/crypto/chacha20poly1305"
)

// Hash is the keyed BLAKE3-256 hash of a chunk's plaintext content; it names
// the chunk on the backend. The zero Hash stands for an all-zero chunk,
// which is never stored.
type Hash [32]byte

// IsZero reports whether h is the zero Hash (an all-zero chunk).
func (h Hash) IsZero() bool { return h == Hash{} }

// String returns h in hex.
func (h Hash) String() string { return hex.EncodeToString(h[:]) }

// ChunkPrefix starts the name of every chunk object (block data and block
// map pages) in the backend. Chunks are many, small and written in
// batches, so a file-system backend should pack them:
// fs.Open(dir, fs.Packed(replica.ChunkPrefix)).
const ChunkPrefix = "chunks/"

func chunkName(h Hash) string {
	s := h.String()
	return ChunkPrefix + s[:2] + "/" + s
}

func parseChunkName(name string) (Hash, bool) {
	var h Hash
	const p = "chunks/xx/"
	if len(name) != len(p)+64 || name[:7] != "chunks/" || name[9] != '/' {
		return h, false
	}
	if _, err := hex.Decode(h[:], []byte(name[len(p):])); err != nil {
		return h, false
	}
	return h, name[7:9] == name[len(p):len(p)+2]
}

// Cipher names an AEAD used to seal objects.
type Cipher string

// Supported ciphers.
const (
	XChaCha20Poly1305 Cipher = "xchacha20poly1305"
	AES256GCM         Cipher = "aes256gcm"
)

func (c Cipher) id() (byte, error) {
	switch c {
	case XChaCha20Poly1305:
		return 1, nil
	case AES256GCM:
		return 2, nil
	}
	return 0, fmt.Errorf("unknown cipher %q", c)
}

// Object kinds, bound into each sealed object's authenticated header.
const (
	kindChunk    byte = 1
	kindMap      byte = 2
	kindSnapshot byte = 3
	kindDisk     byte = 4
)

const envelopeMagic = "FRO1"

// sealer seals and opens backend objects and hashes chunk content. Object
// layout: "FRO1" | cipher id (1) | kind (1) | nonce | AEAD ciphertext+tag,
// with the 6-byte header and the object name as additional data, so an
// object moved to another name or kind fails to open.
type sealer struct {
	cipherID byte
	aead     cipher.AEAD
	hashKey  []byte
	enc      *zstd.Encoder
	dec      *zstd.Decoder
	maxChunk int
}

// newSealer builds a sealer from 64 bytes of key material: a 32-byte AEAD
// key followed by a 32-byte BLAKE3 hash key.
func newSealer(c Cipher, keys []byte, maxChunk int) (*sealer, error) {
	if len(keys) != 64 {
		return nil, fmt.Errorf("key material is %d bytes, want 64: %w", len(keys), ErrWrongKey)
	}
	id, err := c.id()
	if err != nil {
		return nil, err
	}
	var aead cipher.AEAD
	switch c {
	case XChaCha20Poly1305:
		aead, err = chacha20poly1305.NewX(keys[:32])
	case AES256GCM:
		var block cipher.Block
		block, err = aes.NewCipher(keys[:32])
		if err == nil {
			aead, err = cipher.NewGCM(block)
		}
	}
	if err != nil {
		return nil, fmt.Errorf("data key: %w", err)
	}
	enc, err := zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.SpeedFastest), zstd.WithEncoderConcurrency(runtime.GOMAXPROCS(0)), zstd.WithEncoderCRC(false))
	if err != nil {
		return nil, fmt.Errorf("zstd encoder: %w", err)
	}
	// A kept frame (AppendFrame) may declare a window as large as the
	// decoder that accepted it allowed, and this decoder caps windows at
	// its decoded-size limit: below MaxFrameBytes it could refuse a stored
	// frame the data plane accepted. The decoded length is still checked
	// against the chunk's header, and objects are authenticated first.
	dec, err := zstd.NewReader(nil, zstd.WithDecoderConcurrency(runtime.GOMAXPROCS(0)), zstd.WithDecoderMaxMemory(uint64(max(maxChunk+1<<16, MaxFrameBytes))))
	if err != nil {
		return nil, fmt.Errorf("zstd decoder: %w", err)
	}
	return &sealer{cipherID: id, aead: aead, hashKey: append([]byte(nil), keys[32:]...), enc: enc, dec: dec, maxChunk: maxChunk}, nil
}

func (s *sealer) close() {
	s.enc.Close()
	s.dec.Close()
}

// hash returns the keyed BLAKE3 hash of content.
func (s *sealer) hash(content []byte) Hash {
	h, _ := blake3.NewKeyed(s.hashKey) // the key is always 32 bytes
	h.Write(content)
	var out Hash
	h.Sum(out[:0])
	return out
}

func (s *sealer) seal(name string, kind byte, plain []byte) []byte {
	return s.sealTo(nil, name, kind, plain)
}

// sealTo seals plain into dst's storage when it is large enough.
func (s *sealer) sealTo(dst []byte, name string, kind byte, plain []byte) []byte {
	ns := s.aead.NonceSize()
	hdr := len(envelopeMagic) + 2
	if need := hdr + ns + len(plain) + s.aead.Overhead(); cap(dst) < need {
		dst = make([]byte, 0, need)
	}
	out := dst[:hdr+ns]
	copy(out, envelopeMagic)
	out[4] = s.cipherID
	out[5] = kind
	_, _ = rand.Read(out[hdr : hdr+ns])
	ad := append(append(make([]byte, 0, hdr+len(name)), out[:hdr]...), name...)
	return s.aead.Seal(out, out[hdr:hdr+ns], plain, ad)
}

// open authenticates and decrypts a sealed object. Any failure is a
// CorruptError naming the object.
func (s *sealer) open(name string, kind byte, obj []byte) ([]byte, error) {
	return s.openTo(nil, name, kind, obj)
}

// openInPlace is open decrypting into obj's own storage (obj is clobbered).
func (s *sealer) openInPlace(name string, kind byte, obj []byte) ([]byte, error) {
	hdr := len(envelopeMagic) + 2 + s.aead.NonceSize()
	if len(obj) < hdr {
		return s.open(name, kind, obj)
	}
	return s.openTo(obj[hdr:hdr], name, kind, obj)
}

func (s *sealer) openTo(dst []byte, name string, kind byte, obj []byte) ([]byte, error) {
	ns := s.aead.NonceSize()
	hdr := len(envelopeMagic) + 2
	if len(obj) < hdr+ns+s.aead.Overhead() {
		return nil, corrupt(name, fmt.Errorf("sealed object is %d bytes, too short", len(obj)))
	}
	if string(obj[:4]) != envelopeMagic {
		return nil, corrupt(name, errors.New("bad magic"))
	}
	if obj[4] != s.cipherID {
		return nil, corrupt(name, fmt.Errorf("sealed with cipher %d, store uses %d", obj[4], s.cipherID))
	}
	if obj[5] != kind {
		return nil, corrupt(name, fmt.Errorf("object kind %d, want %d", obj[5], kind))
	}
	var adBuf [128]byte
	ad := append(append(adBuf[:0], obj[:hdr]...), name...)
	plain, err := s.aead.Open(dst, obj[hdr:hdr+ns], obj[hdr+ns:], ad)
	if err != nil {
		return nil, corrupt(name, errors.New("authentication failed"))
	}
	return plain, nil
}

// MaxFrameBytes bounds the zstd frames AppendFrame may keep: a frame
// must decode, window and output both, within this many bytes under
// klauspost/compress's decoder. The data plane's decoder enforces it
// (protocol.MaxPayload may not exceed it; a test holds them together).
const MaxFrameBytes = 8 << 20

// Codec names how a chunk's payload is compressed: the first byte of a
// chunk's plaintext, and the form of a Frame.
type Codec byte

// Chunk payload (inside the seal): codec (1 byte) | content length
// (uint32 LE) | data.
const (
	compNone Codec = 0
	// CodecZstd is one zstd frame (RFC 8878).
	CodecZstd Codec = 1
	// CodecS2 is one S2 block (github.com/klauspost/compress/s2), whose
	// header declares the decoded length. Store format 4 adds it.
	CodecS2 Codec = 2
)

// Frame is a chunk's content as it arrived compressed (the agent's WRITE
// payload), for the store to keep as the chunk's stored form instead of
// compressing the content again. The zero Frame is none.
type Frame struct {
	Codec Codec
	Data  []byte
}

var plainPool = sync.Pool{New: func() any { return new([]byte) }}

// encodeChunk compresses content when that saves at least 1/8 and seals
// it, into dst's storage when it is large enough. frame, when it has
// data, decodes to content (the agent's, already decoded by the caller
// with a decoder no more lenient than the store's): it is kept as the
// compressed form when it saves 1/8, and otherwise content is kept
// uncompressed, not compressed again, since the agent found it did not
// compress.
func (s *sealer) encodeChunk(h Hash, content []byte, frame Frame, dst []byte) []byte {
	bp := plainPool.Get().(*[]byte)
	defer plainPool.Put(bp)
	if cap(*bp) < 5+len(content) {
		*bp = make([]byte, 0, 5+s.maxChunk)
	}
	buf := (*bp)[:5]
	buf[0] = byte(compNone)
	binary.LittleEndian.PutUint32(buf[1:], uint32(len(content)))
	if frame.Data != nil {
		if len(frame.Data) <= len(content)-len(content)/8 {
			buf = append(buf, frame.Data...)
			buf[0] = byte(frame.Codec)
			*bp = buf[:0]
			return s.sealTo(dst, chunkName(h), kindChunk, buf)
		}
	} else if len(content) >= 512 && s.worthCompressing(content) {
		z := s.enc.EncodeAll(content, buf)
		if len(z)-5 <= len(content)-len(content)/8 {
			z[0] = byte(CodecZstd)
			return s.sealTo(dst, chunkName(h), kindChunk, z)
		}
	}
	buf = append(buf, content...)
	return s.sealTo(dst, chunkName(h), kindChunk, buf)
}

// Compressibility samples: a chunk of at least sampleMin bytes is
// compressed only when one of samples pieces of sampleSize bytes, spread
// evenly from its start, compresses by an eighth. Compressing 1 MiB of
// random (or already compressed, or encrypted) data only to keep it as it
// was cost the fold more CPU than sealing and hashing together; four 4 KiB
// samples cost under 2 % of that. A chunk whose compressible part every
// sample misses is kept uncompressed: larger, never wrong.
const (
	sampleSize = 4 << 10
	samples    = 4
	sampleMin  = 4 * samples * sampleSize
)

var samplePool = sync.Pool{New: func() any { b := make([]byte, 0, sampleSize+256); return &b }}

// worthCompressing reports whether content looks compressible.
func (s *sealer) worthCompressing(content []byte) bool {
	if len(content) < sampleMin {
		return true
	}
	bp := samplePool.Get().(*[]byte)
	defer samplePool.Put(bp)
	step := (len(content) - sampleSize) / (samples - 1)
	for i := range samples {
		at := i * step
		z := s.enc.EncodeAll(content[at:at+sampleSize], (*bp)[:0])
		*bp = z[:0]
		if len(z) <= sampleSize-sampleSize/8 {
			return true
		}
	}
	return false
}

// decodeChunk opens a sealed chunk, decompresses it and checks its hash.
// Verify uses it; reads use openChunk.
func (s *sealer) decodeChunk(h Hash, obj []byte) ([]byte, error) {
	content, err := s.openChunk(h, obj)
	if err != nil {
		return nil, err
	}
	if s.hash(content) != h {
		return nil, corrupt(chunkName(h), errors.New("content does not match its hash"))
	}
	return content, nil
}

// openChunk opens a sealed chunk in place (obj's storage is reused for
// the plaintext) and decompresses it, without re-hashing the content: the
// AEAD tag, computed over the header and the object name (which is the
// content hash), already proves the content was sealed under this name
// with the store's key, and a flipped, truncated, swapped or renamed
// object fails authentication. Re-hashing would only catch a store that
// sealed the wrong content under a name, which Verify still checks.
func (s *sealer) openChunk(h Hash, obj []byte) ([]byte, error) {
	name := chunkName(h)
	plain, err := s.openInPlace(name, kindChunk, obj)
	if err != nil {
		return nil, err
	}
	content, err := s.decodeChunkPayload(plain)
	if err != nil {
		return nil, corrupt(name, err)
	}
	return content, nil
}

func (s *sealer) decodeChunkPayload(plain []byte) ([]byte, error) {
	if len(plain) < 5 {
		return nil, errors.New("chunk payload too short")
	}
	n := binary.LittleEndian.Uint32(plain[1:])
	if int64(n) > int64(s.maxChunk) {
		return nil, fmt.Errorf("chunk length %d exceeds the maximum %d", n, s.maxChunk)
	}
	switch Codec(plain[0]) {
	case compNone:
		if uint32(len(plain)-5) != n {
			return nil, fmt.Errorf("chunk length %d, header says %d", len(plain)-5, n)
		}
		return plain[5:], nil
	case CodecZstd:
		out, err := s.dec.DecodeAll(plain[5:], make([]byte, 0, n))
		if err != nil {
			return nil, fmt.Errorf("zstd: %w", err)
		}
		if uint32(len(out)) != n {
			return nil, fmt.Errorf("decompressed to %d bytes, header says %d", len(out), n)
		}
		return out, nil
	case CodecS2:
		// The block declares its length up front: check it before
		// allocating, so a corrupt block cannot ask for more.
		if l, err := s2.DecodedLen(plain[5:]); err != nil {
			return nil, fmt.Errorf("s2: %w", err)
		} else if uint32(l) != n {
			return nil, fmt.Errorf("s2 block decodes to %d bytes, header says %d", l, n)
		}
		out, err := s2.Decode(make([]byte, n), plain[5:])
		if err != nil {
			return nil, fmt.Errorf("s2: %w", err)
		}
		return out, nil
	}
	return nil, fmt.Errorf("unknown compression %d", plain[0])
}
