package protocol

import (
	"bytes"
	"testing"

	"github.com/zeebo/blake3"
)

// The zero shortcut must give exactly the hash of the bytes.
func TestAppendBlockHashZeros(t *testing.T) {
	for _, algo := range []uint8{HashBLAKE3, HashXXH3} {
		for _, n := range []int{0, 1, 511, 512, 4096, 4097, 32 << 10, 1 << 20} {
			for _, set := range []int{-1, 0, n - 1} {
				b := make([]byte, n)
				if set >= 0 && n > 0 {
					b[set] = 7
				}
				for range 2 { // the second call reads the cache
					got := AppendBlockHash([]byte("x"), algo, b)
					want := appendHash([]byte("x"), algo, b)
					if !bytes.Equal(got, want) {
						t.Fatalf("algo %d, %d bytes, byte %d set: %x, want %x", algo, n, set, got, want)
					}
				}
			}
		}
	}
	z := make([]byte, 4096)
	sum := blake3.Sum256(z)
	if got := AppendBlockHash(nil, HashBLAKE3, z); !bytes.Equal(got, sum[:]) {
		t.Fatalf("BLAKE3 of 4 KiB of zeros: %x, want %x", got, sum)
	}
}
