package protocol

import (
	"github.com/zeebo/blake3"
	"github.com/zeebo/xxh3"
)

// AppendBlockHash appends the hash of block with algorithm algo (a
// protocol.Hash* constant) to dst.
func AppendBlockHash(dst []byte, algo uint8, block []byte) []byte {
	if algo == HashXXH3 {
		h := xxh3.Hash(block)
		return append(dst, byte(h), byte(h>>8), byte(h>>16), byte(h>>24), byte(h>>32), byte(h>>40), byte(h>>48), byte(h>>56))
	}
	sum := blake3.Sum256(block)
	return append(dst, sum[:]...)
}
