package protocol

import (
	"bytes"
	"fmt"
	"sync"

	"github.com/ferrymigrate/ferry/internal/zeros"
	"github.com/zeebo/blake3"
	"github.com/zeebo/xxh3"
)

// AppendBlockHash appends the hash of block with algorithm algo (a
// protocol.Hash* constant) to dst.
//
// An all-zero block's hash is computed once per algorithm and length:
// unused space is the commonest content of a disk, and telling it apart
// costs a fraction of hashing it (a rescan of a half-empty disk spent a
// quarter of its CPU hashing zeros on both sides).
func AppendBlockHash(dst []byte, algo uint8, block []byte) []byte {
	if n := len(block); n >= 512 && n&(n-1) == 0 && zeros.Is(block) {
		return append(dst, zeroHash(algo, len(block))...)
	}
	return appendHash(dst, algo, block)
}

func appendHash(dst []byte, algo uint8, block []byte) []byte {
	if algo == HashXXH3 {
		h := xxh3.Hash(block)
		return append(dst, byte(h), byte(h>>8), byte(h>>16), byte(h>>24), byte(h>>32), byte(h>>40), byte(h>>48), byte(h>>56))
	}
	sum := blake3.Sum256(block)
	return append(dst, sum[:]...)
}

type zeroKey struct {
	algo uint8
	n    int
}

// zeroHashes holds the hash of n zero bytes by zeroKey, for the powers of
// two that are block sizes (so it stays small); a block size is chosen by
// the requester, so the cache is filled on demand.
var zeroHashes sync.Map

// ZeroHash returns the hash with algorithm algo of n zero bytes; callers
// must not modify it.
func ZeroHash(algo uint8, n int) []byte {
	if n < 512 || n&(n-1) != 0 {
		return appendHash(nil, algo, make([]byte, n))
	}
	return zeroHash(algo, n)
}

func zeroHash(algo uint8, n int) []byte {
	k := zeroKey{algo, n}
	if h, ok := zeroHashes.Load(k); ok {
		return h.([]byte)
	}
	h := appendHash(nil, algo, make([]byte, n))
	zeroHashes.Store(k, h)
	return h
}

// DiffRuns compares data, in blocks of bs bytes, with the block hashes of
// reply (data's first block being reply's block first, hashed with
// reply's algorithm) and calls fn with each longest run [lo, hi) of
// blocks that differ, as byte offsets into data. Both ends of a rescan
// use it: one changed block costs one block on the wire, adjacent ones
// go as one extent. local is scratch space for the hashes, kept between
// calls. It fails, before calling fn, when data is not whole blocks or
// reply holds too few hashes for it.
func DiffRuns(data []byte, bs int64, reply *HashReply, first int, local *[]byte, fn func(lo, hi int64) error) error {
	if bs <= 0 || int64(len(data))%bs != 0 {
		return fmt.Errorf("compare hashes: %d bytes are not whole %d-byte blocks", len(data), bs)
	}
	// Compared without adding to first, which a sum could overflow.
	blocks, have := int64(len(data))/bs, int64(reply.Count())
	if first < 0 || int64(first) > have || have-int64(first) < blocks || HashLen(reply.Algo) == 0 {
		return fmt.Errorf("compare hashes: the reply holds %d hashes, %d needed from hash %d", have, blocks, first)
	}
	start := int64(-1)
	for i := int64(0); i <= int64(len(data)); i += bs {
		same := i == int64(len(data))
		if !same {
			*local = AppendBlockHash((*local)[:0], reply.Algo, data[i:i+bs])
			same = bytes.Equal(*local, reply.Hash(first+int(i/bs)))
		}
		switch {
		case !same && start < 0:
			start = i
		case same && start >= 0:
			if err := fn(start, i); err != nil {
				return err
			}
			start = -1
		}
	}
	return nil
}
