package agent

import (
	"slices"
	"testing"

	"github.com/ferrymigrate/ferry/protocol"
)

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
		rep := blocks(c.replica)
		reply := &protocol.HashReply{Algo: protocol.HashBLAKE3, BlockSize: bs}
		for i := 0; i < len(rep); i += bs {
			reply.Hashes = protocol.AppendBlockHash(reply.Hashes, protocol.HashBLAKE3, rep[i:i+bs])
		}
		dev := blocks(c.device)
		var got [][2]int64
		var local []byte
		err := diffRuns(dev, bs, reply, c.first, &local, func(lo, hi int64) error {
			got = append(got, [2]int64{lo / bs, hi / bs})
			return nil
		})
		if err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		if !slices.Equal(got, c.want) {
			t.Errorf("%s: runs %v, want %v", c.name, got, c.want)
		}
	}
}
