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
		{"first block so large the sum overflows", data[:512], 512, int(^uint(0) >> 1), reply},
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

// FuzzDiffRuns: any data and any reply (as a server could send) either
// fail cleanly or yield ordered, block-aligned runs that cover exactly the
// blocks whose hashes differ.
func FuzzDiffRuns(f *testing.F) {
	f.Add([]byte("abcdabcdabcdabcd"), int64(4), 0, HashBLAKE3, []byte{})
	f.Add(make([]byte, 1024), int64(512), 1, HashXXH3, make([]byte, 24))
	f.Add([]byte("xy"), int64(0), -1, uint8(99), []byte{1, 2, 3})
	f.Add(make([]byte, 512), int64(512), int(^uint(0)>>1), HashBLAKE3, make([]byte, 32)) // first + blocks overflows
	f.Fuzz(func(t *testing.T, data []byte, bs int64, first int, algo uint8, noise []byte) {
		reply := &HashReply{Algo: algo, Hashes: noise}
		// Make some hashes right, so runs end as well as start.
		if hl := HashLen(algo); hl > 0 && bs > 0 && bs <= 1<<16 && int64(len(data))%bs == 0 && first >= 0 && first < 64 {
			reply.Hashes = make([]byte, 0, (first+len(data)/int(bs))*hl)
			for i := 0; i < first; i++ {
				reply.Hashes = append(reply.Hashes, make([]byte, hl)...)
			}
			for i := 0; i < len(data); i += int(bs) {
				h := AppendBlockHash(nil, algo, data[i:i+int(bs)])
				if len(noise) > 0 && noise[(i/int(bs))%len(noise)]&1 == 1 {
					h[0] ^= 0xff
				}
				reply.Hashes = append(reply.Hashes, h...)
			}
		}
		var runs [][2]int64
		var local []byte
		err := DiffRuns(data, bs, reply, first, &local, func(lo, hi int64) error {
			runs = append(runs, [2]int64{lo, hi})
			return nil
		})
		if err != nil {
			if len(runs) > 0 {
				t.Fatalf("error %v after reporting runs %v", err, runs)
			}
			return
		}
		prev := int64(-1)
		for _, r := range runs {
			if r[0] <= prev || r[1] <= r[0] || r[1] > int64(len(data)) || r[0]%bs != 0 || r[1]%bs != 0 {
				t.Fatalf("bad run %v after %d (data %d bytes, bs %d)", r, prev, len(data), bs)
			}
			prev = r[1]
		}
		in := func(i int64) bool {
			for _, r := range runs {
				if i >= r[0] && i < r[1] {
					return true
				}
			}
			return false
		}
		for i := int64(0); i < int64(len(data)); i += bs {
			h := AppendBlockHash(nil, algo, data[i:i+bs])
			differs := !bytes.Equal(h, reply.Hash(first+int(i/bs)))
			if differs != in(i) {
				t.Fatalf("block at %d: differs %v, in a run %v", i, differs, in(i))
			}
		}
	})
}
