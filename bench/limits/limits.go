package limits

import (
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"io"
	"math/big"
	mrand "math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"time"

	"github.com/zeebo/blake3"
	"golang.org/x/crypto/chacha20poly1305"
	"golang.org/x/sys/unix"

	"github.com/ferrymigrate/ferry/bench/workload"
	"github.com/ferrymigrate/ferry/internal/directio"
	"github.com/ferrymigrate/ferry/protocol"
)

// Options size a run; zero values take the defaults.
type Options struct {
	// Dir is a directory on the data disk; the disk figures use a file
	// there. Required.
	Dir string
	// DiskBytes is the size of the sequential disk test file (default
	// 1 GiB).
	DiskBytes int64
	// Duration is how long each CPU and network measurement runs (default
	// 2 s).
	Duration time.Duration
}

// Result holds the ceilings, in 10^6 bytes per second.
type Result struct {
	DiskWriteMBps float64 `json:"disk_write_mb_per_s"`
	DiskReadMBps  float64 `json:"disk_read_mb_per_s"`
	TCPMBps       float64 `json:"tcp_mb_per_s"`
	TLSMBps       float64 `json:"tls13_mb_per_s"`
	// TLSCipher is the suite the TLS figure negotiated (Go's default
	// choice, as the data plane's).
	TLSCipher       string  `json:"tls_cipher"`
	SHA256MBps      float64 `json:"sha256_mb_per_s"`
	BLAKE3MBps      float64 `json:"blake3_mb_per_s"`
	AESGCMMBps      float64 `json:"aes256gcm_mb_per_s"`
	XChaChaMBps     float64 `json:"xchacha20poly1305_mb_per_s"`
	ZstdCompMBps    float64 `json:"zstd_compress_mb_per_s"`
	ZstdDecompMBps  float64 `json:"zstd_decompress_mb_per_s"`
	ZstdRatio       float64 `json:"zstd_ratio"`
	S2CompMBps      float64 `json:"s2_compress_mb_per_s"`
	S2DecompMBps    float64 `json:"s2_decompress_mb_per_s"`
	S2Ratio         float64 `json:"s2_ratio"`
	DiskBytes       int64   `json:"disk_bytes"`
	DurationSeconds float64 `json:"duration_seconds"`
}

// Run measures every ceiling in turn.
func Run(ctx context.Context, o Options) (*Result, error) {
	if o.Dir == "" {
		return nil, errors.New("limits: a directory on the data disk is required")
	}
	if o.DiskBytes <= 0 {
		o.DiskBytes = 1 << 30
	}
	o.DiskBytes -= o.DiskBytes % workload.MiB
	if o.DiskBytes == 0 {
		return nil, errors.New("limits: the disk test needs at least 1 MiB")
	}
	if o.Duration <= 0 {
		o.Duration = 2 * time.Second
	}
	r := &Result{DiskBytes: o.DiskBytes, DurationSeconds: o.Duration.Seconds()}
	var err error
	if r.DiskWriteMBps, r.DiskReadMBps, err = disk(ctx, o.Dir, o.DiskBytes); err != nil {
		return nil, err
	}
	if r.TCPMBps, _, err = loopback(ctx, o.Duration, false); err != nil {
		return nil, err
	}
	if r.TLSMBps, r.TLSCipher, err = loopback(ctx, o.Duration, true); err != nil {
		return nil, err
	}
	mixed := mixedData(16 * workload.MiB)
	r.SHA256MBps = cpuRate(o.Duration, mixed, func(b []byte) { sha256.Sum256(b) })
	r.BLAKE3MBps = cpuRate(o.Duration, mixed, func(b []byte) { blake3.Sum256(b) })
	if r.AESGCMMBps, err = aeadRate(o.Duration, mixed, newAESGCM); err != nil {
		return nil, err
	}
	if r.XChaChaMBps, err = aeadRate(o.Duration, mixed, chacha20poly1305.NewX); err != nil {
		return nil, err
	}
	if r.ZstdCompMBps, r.ZstdDecompMBps, r.ZstdRatio, err = codecRates(o.Duration, mixed, protocol.Zstd); err != nil {
		return nil, err
	}
	if r.S2CompMBps, r.S2DecompMBps, r.S2Ratio, err = codecRates(o.Duration, mixed, protocol.S2); err != nil {
		return nil, err
	}
	return r, ctx.Err()
}

// mixedData is n bytes in the image's proportions (half zeros, a quarter
// text, a quarter random), in 1 MiB blocks.
func mixedData(n int) []byte {
	rng := mrand.New(mrand.NewPCG(7, 8))
	b := make([]byte, n)
	for i := 0; i < n/workload.MiB; i++ {
		workload.MixedBlock(rng, int64(i), b[i*workload.MiB:(i+1)*workload.MiB])
	}
	return b
}

// cpuRate runs f over 1 MiB pieces of data on this goroutine for about d
// and returns the bytes per second in 10^6.
func cpuRate(d time.Duration, data []byte, f func([]byte)) float64 {
	var n int64
	t0 := time.Now()
	for time.Since(t0) < d {
		for off := 0; off < len(data); off += workload.MiB {
			f(data[off : off+workload.MiB])
			n += workload.MiB
		}
	}
	return float64(n) / time.Since(t0).Seconds() / 1e6
}

func newAESGCM(key []byte) (cipher.AEAD, error) {
	c, err := aes.NewCipher(key)
	if err != nil {
		return nil, err
	}
	return cipher.NewGCM(c)
}

// aeadRate seals 1 MiB pieces (the store's chunk size) with a 256-bit key.
func aeadRate(d time.Duration, data []byte, mk func([]byte) (cipher.AEAD, error)) (float64, error) {
	key := make([]byte, 32)
	if _, err := rand.Read(key); err != nil {
		return 0, fmt.Errorf("aead key: %w", err)
	}
	a, err := mk(key)
	if err != nil {
		return 0, fmt.Errorf("aead: %w", err)
	}
	nonce := make([]byte, a.NonceSize())
	out := make([]byte, 0, workload.MiB+a.Overhead())
	return cpuRate(d, data, func(b []byte) { out = a.Seal(out[:0], nonce, b, nil) }), nil
}

// codecRates compresses with the agent's compressor for codec and
// decompresses with the server's, per 1 MiB piece; rates are of the
// uncompressed bytes.
func codecRates(d time.Duration, data []byte, codec protocol.Codec) (comp, decomp, ratio float64, err error) {
	c, err := protocol.NewCompressor(codec)
	if err != nil {
		return 0, 0, 0, err
	}
	dec, err := protocol.NewDecompressor()
	if err != nil {
		return 0, 0, 0, err
	}
	defer dec.Close()
	var pieces []*protocol.Write
	var in, out int64
	for off := 0; off < len(data); off += workload.MiB {
		z, ok := c.Compress(data[off:off+workload.MiB], nil)
		in += workload.MiB
		if ok {
			pieces = append(pieces, &protocol.Write{Flags: codec.Flag(), RawLen: workload.MiB, Data: append([]byte(nil), z...)})
			out += int64(len(z))
		} else {
			out += workload.MiB
		}
	}
	ratio = float64(in) / float64(out)
	buf := make([]byte, 0, protocol.CompressBound(workload.MiB))
	comp = cpuRate(d, data, func(b []byte) { c.Compress(b, buf) })
	if len(pieces) == 0 {
		return comp, 0, ratio, fmt.Errorf("%s: no piece of the mixed data compressed", codec)
	}
	var n int64
	dst := make([]byte, 0, workload.MiB)
	t0 := time.Now()
	for time.Since(t0) < d {
		for _, p := range pieces {
			if dst, err = dec.Payload(p, dst); err != nil {
				return 0, 0, 0, fmt.Errorf("%s decode: %w", codec, err)
			}
			n += int64(len(dst))
		}
	}
	decomp = float64(n) / time.Since(t0).Seconds() / 1e6
	return comp, decomp, ratio, nil
}

// disk writes size bytes sequentially in 1 MiB O_DIRECT writes to a new
// file in dir, fdatasyncs it, then reads it back with O_DIRECT; the file
// is removed. Data is random so no layer below can shortcut it.
func disk(ctx context.Context, dir string, size int64) (write, read float64, err error) {
	path := filepath.Join(dir, "ferry-limits.bin")
	defer os.Remove(path)
	f, err := os.OpenFile(path, os.O_CREATE|os.O_TRUNC|os.O_RDWR|unix.O_DIRECT, 0o600)
	if err != nil {
		if errors.Is(err, unix.EINVAL) {
			return 0, 0, fmt.Errorf("disk limits: the file system of %s does not take O_DIRECT (tmpfs?); use --dir on the data disk", dir)
		}
		return 0, 0, fmt.Errorf("disk limits: %w", err)
	}
	defer f.Close()
	buf := directio.Buf(workload.MiB)
	workload.FillRandom(mrand.New(mrand.NewPCG(3, 4)), buf)
	t0 := time.Now()
	for off := int64(0); off < size; off += workload.MiB {
		if err := ctx.Err(); err != nil {
			return 0, 0, err
		}
		// Vary each MiB so nothing dedups or compresses below us.
		buf[0], buf[1] = byte(off>>20), byte(off>>28)
		if _, err := f.WriteAt(buf, off); err != nil {
			return 0, 0, fmt.Errorf("disk limits: write: %w", err)
		}
	}
	if err := unix.Fdatasync(int(f.Fd())); err != nil {
		return 0, 0, fmt.Errorf("disk limits: fdatasync: %w", err)
	}
	write = float64(size) / time.Since(t0).Seconds() / 1e6
	t0 = time.Now()
	for off := int64(0); off < size; off += workload.MiB {
		if err := ctx.Err(); err != nil {
			return 0, 0, err
		}
		if _, err := f.ReadAt(buf, off); err != nil {
			return 0, 0, fmt.Errorf("disk limits: read: %w", err)
		}
	}
	read = float64(size) / time.Since(t0).Seconds() / 1e6
	return write, read, nil
}

// loopback sends 1 MiB writes over one connection on 127.0.0.1 for about
// d and returns what the receiver got per second, and the TLS cipher
// suite when useTLS is set (TLS 1.3, Go's defaults on both ends).
func loopback(ctx context.Context, d time.Duration, useTLS bool) (float64, string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, "", fmt.Errorf("loopback listen: %w", err)
	}
	defer ln.Close()
	var clientConf *tls.Config
	if useTLS {
		cert, pool, err := selfSigned()
		if err != nil {
			return 0, "", err
		}
		ln = tls.NewListener(ln, &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS13})
		clientConf = &tls.Config{RootCAs: pool, ServerName: "127.0.0.1", MinVersion: tls.VersionTLS13}
	}
	type got struct {
		n   int64
		err error
	}
	recv := make(chan got, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			recv <- got{err: err}
			return
		}
		defer c.Close()
		n, err := io.CopyBuffer(io.Discard, c, make([]byte, workload.MiB))
		recv <- got{n: n, err: err}
	}()
	var c net.Conn
	if useTLS {
		dl := tls.Dialer{Config: clientConf}
		c, err = dl.DialContext(ctx, "tcp", ln.Addr().String())
	} else {
		var dl net.Dialer
		c, err = dl.DialContext(ctx, "tcp", ln.Addr().String())
	}
	if err != nil {
		return 0, "", fmt.Errorf("loopback dial: %w", err)
	}
	suite := ""
	if tc, ok := c.(*tls.Conn); ok {
		if err := tc.HandshakeContext(ctx); err != nil {
			c.Close()
			return 0, "", fmt.Errorf("loopback TLS handshake: %w", err)
		}
		suite = tls.CipherSuiteName(tc.ConnectionState().CipherSuite)
	}
	buf := make([]byte, workload.MiB)
	workload.FillRandom(mrand.New(mrand.NewPCG(5, 6)), buf)
	t0 := time.Now()
	for time.Since(t0) < d && ctx.Err() == nil {
		if _, err := c.Write(buf); err != nil {
			c.Close()
			return 0, "", fmt.Errorf("loopback send: %w", err)
		}
	}
	c.Close()
	g := <-recv
	el := time.Since(t0)
	if g.err != nil {
		return 0, "", fmt.Errorf("loopback receive: %w", g.err)
	}
	return float64(g.n) / el.Seconds() / 1e6, suite, nil
}

// selfSigned makes a P-256 certificate for 127.0.0.1 and a pool trusting it.
func selfSigned() (tls.Certificate, *x509.CertPool, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, nil, fmt.Errorf("loopback key: %w", err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "ferry-bench"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return tls.Certificate{}, nil, fmt.Errorf("loopback certificate: %w", err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return tls.Certificate{}, nil, fmt.Errorf("loopback certificate: %w", err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(leaf)
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}, pool, nil
}
