package protocol

import (
	"bytes"
	"slices"
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

func TestDiffRuns(t *testing.T) {
	const bs = 512
	// One block per mark: a block's content is its letter ('0' is a block
	// of zeros).
	blocks := func(marks string) []byte {
		b := make([]byte, len(marks)*bs)
		for i, m := range marks {
			if m != '0' {
				b[i*bs+100] = byte(m)
			}
		}
		return b
	}
	cases := []struct {
		name, replica, device string
		first                 int
		want                  [][2]int64 // runs in blocks
	}{
		{"same", "abcd", "abcd", 0, nil},
		{"all differ", "abcd", "wxyz", 0, [][2]int64{{0, 4}}},
		{"first and last", "abcd", "xbcx", 0, [][2]int64{{0, 1}, {3, 4}}},
		{"a run in the middle", "abcdef", "abxxef", 0, [][2]int64{{2, 4}}},
		{"zeros compare like any block", "a0c0", "a0x0", 0, [][2]int64{{2, 3}}},
		{"zeros written over data", "abc", "a00", 0, [][2]int64{{1, 3}}},
		{"from a later block of the reply", "zzabcd", "axcd", 2, [][2]int64{{1, 2}}},
		{"empty", "", "", 0, nil},
	}
	for _, c := range cases {
		for _, algo := range []uint8{HashBLAKE3, HashXXH3} {
			rep := blocks(c.replica)
			reply := &HashReply{Algo: algo, BlockSize: bs}
			for i := 0; i < len(rep); i += bs {
				reply.Hashes = AppendBlockHash(reply.Hashes, algo, rep[i:i+bs])
			}
			dev := blocks(c.device)
			var got [][2]int64
			var local []byte
			err := DiffRuns(dev, bs, reply, c.first, &local, func(lo, hi int64) error {
				got = append(got, [2]int64{lo / bs, hi / bs})
				return nil
			})
			if err != nil {
				t.Fatalf("%s (algo %d): %v", c.name, algo, err)
			}
			if !slices.Equal(got, c.want) {
				t.Errorf("%s (algo %d): runs %v, want %v", c.name, algo, got, c.want)
			}
		}
	}
}

// A reply that does not cover the data, or data that is not whole
// blocks, is an error before anything is reported, never a panic.
func TestDiffRunsRefusesMismatches(t *testing.T) {
	data := make([]byte, 4*512)
	reply := &HashReply{Algo: HashBLAKE3, BlockSize: 512}
	for i := 0; i < 3; i++ {
		reply.Hashes = AppendBlockHash(reply.Hashes, HashBLAKE3, data[:512])
	}
	cases := []struct {
		name  string
		data  []byte
		bs    int64
		first int
		reply *HashReply
	}{
		{"too few hashes", data, 512, 0, reply},
		{"past the reply's end", data[:3*512], 512, 1, reply},
		{"negative first block", data[:512], 512, -1, reply},
		{"a partial block", data[:700], 512, 0, reply},
		{"no block size", data, 0, 0, reply},
		{"unknown algorithm", data[:512], 512, 0, &HashReply{Algo: 99, Hashes: make([]byte, 64)}},
	}
	for _, c := range cases {
		called := false
		var local []byte
		err := DiffRuns(c.data, c.bs, c.reply, c.first, &local, func(lo, hi int64) error { called = true; return nil })
		if err == nil || called {
			t.Errorf("%s: err %v, fn called %v; want an error and no call", c.name, err, called)
		}
	}
}
