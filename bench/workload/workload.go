package workload

import (
	"fmt"
	"math/rand/v2"
	"os"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/ferrymigrate/ferry/internal/directio"
)

// MiB is the unit images are made of.
const MiB = 1 << 20

var words = strings.Fields("the migration server replicates every block of the source disk to a staging area over a mutual TLS connection while applications keep running and operators watch lag backlog and progress in the dashboard before they launch a test instance")

// FillText fills b with words and line breaks from rng (compresses about
// 3:1 with zstd's fastest level).
func FillText(rng *rand.Rand, b []byte) {
	out := b[:0]
	for len(out) < len(b) {
		out = append(out, words[rng.IntN(len(words))]...)
		out = append(out, ' ')
		if rng.IntN(12) == 0 {
			out = append(out, '\n')
		}
	}
	copy(b, out[:len(b)])
}

// FillRandom fills b with random bytes from rng (incompressible).
func FillRandom(rng *rand.Rand, b []byte) {
	i := 0
	for ; i+8 <= len(b); i += 8 {
		v := rng.Uint64()
		for j := range 8 {
			b[i+j] = byte(v >> (8 * j))
		}
	}
	for ; i < len(b); i++ {
		b[i] = byte(rng.Uint32())
	}
}

// MixedBlock fills b with the content of block i of a mixed stream: of
// every four blocks two are zeros, one text, one random, so any run of
// four has the image's proportions.
func MixedBlock(rng *rand.Rand, i int64, b []byte) {
	switch i % 4 {
	case 0, 1:
		clear(b)
	case 2:
		FillText(rng, b)
	default:
		FillRandom(rng, b)
	}
}

// WriteImage writes a size-byte image (rounded down to MiB) in 1 MiB
// chunks: the first half zeros (a hole), then a quarter of text, then a
// quarter of random bytes, and fsyncs it. The content is the same for a
// given size on every run. Over an existing image (one a loop device may
// be attached to) it writes in place, the first half punched back to a
// hole: the image is restored whatever was written to it since.
func WriteImage(path string, size int64) error {
	size -= size % MiB
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return fmt.Errorf("create image: %w", err)
	}
	defer f.Close()
	if err := f.Truncate(size); err != nil {
		return fmt.Errorf("size image: %w", err)
	}
	if size > 0 {
		if err := unix.Fallocate(int(f.Fd()), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, 0, size/2); err != nil {
			return fmt.Errorf("punch the image's zero half: %w", err)
		}
	}
	rng := rand.New(rand.NewPCG(1, 2))
	chunk := make([]byte, MiB)
	for off := size / 2; off < size; off += MiB {
		if off < size*3/4 {
			FillText(rng, chunk)
		} else {
			FillRandom(rng, chunk)
		}
		if _, err := f.WriteAt(chunk, off); err != nil {
			return fmt.Errorf("write image: %w", err)
		}
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("sync image: %w", err)
	}
	return nil
}

// ChangeBlocks overwrites n random 4 KiB blocks of the first size bytes
// of path (a device or a file) with random data, with O_DIRECT so the
// writes reach the device at once. The same seed changes the same blocks.
func ChangeBlocks(path string, size int64, n int, seed uint64) error {
	f, err := os.OpenFile(path, os.O_WRONLY|unix.O_DIRECT, 0)
	if err != nil {
		return fmt.Errorf("open %s: %w", path, err)
	}
	defer f.Close()
	rng := rand.New(rand.NewPCG(seed, 99))
	buf := directio.Buf(4096)
	for range n {
		FillRandom(rng, buf)
		off := rng.Int64N(size/4096) * 4096
		if _, err := f.WriteAt(buf, off); err != nil {
			return fmt.Errorf("write %s at %d: %w", path, off, err)
		}
	}
	return nil
}
