package replica

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/ferrymigrate/ferry/internal/zeros"
)

// Delta chunks. A fold that finds only a few 4 KiB pages of a chunk
// changed since its full chunk stores just those pages, as a patch, and
// the map entry names the patch and the full chunk it lies over (see
// entry). Without this every scattered 4 KiB write rewrote, re-hashed and
// re-sealed a whole chunk, and 20 clones of one image diverged by 5 % in
// scattered blocks stored about 23 images' worth instead of about 4.
//
// A patch is an ordinary content-addressed chunk whose content is
//
//	"FDL1" | chunk length u32 | changed-page bitmap (one bit per 4 KiB
//	page of the chunk, rounded up to bytes) | the changed pages in order
//
// (the last page of a chunk shorter than a page multiple is short). The
// base is not in the patch, so equal patches over different bases (clones)
// are stored once.

const (
	patchMagic      = "FDL1"
	patchHeaderSize = 8
	patchPage       = 4096
)

// maxDeltaFraction is the share of a chunk's pages past which a fold
// stores the whole chunk instead of a patch. At a quarter, a patched read
// costs at most a quarter chunk more than a plain one, and a patch is never
// worth keeping at more: the whole chunk is then at most 4× its size and
// reads with one object. The next fold's patch is against the new full
// chunk (a rebase).
const maxDeltaFraction = 4

// patchPages returns how many pages a chunk of n bytes has.
func patchPages(n int) int { return (n + patchPage - 1) / patchPage }

// diffPages returns the bitmap of the pages of content that differ from
// base (shorter base reads as zeros past its end) and how many there are.
func diffPages(content, base []byte) (bitmap []byte, changed int) {
	pages := patchPages(len(content))
	bitmap = make([]byte, (pages+7)/8)
	for p := 0; p < pages; p++ {
		lo, hi := p*patchPage, min((p+1)*patchPage, len(content))
		var same bool
		switch {
		case hi <= len(base):
			same = bytes.Equal(content[lo:hi], base[lo:hi])
		case lo < len(base):
			same = bytes.Equal(content[lo:len(base)], base[lo:]) && zeros.Is(content[len(base):hi])
		default:
			same = zeros.Is(content[lo:hi])
		}
		if !same {
			bitmap[p/8] |= 1 << (p % 8)
			changed++
		}
	}
	return bitmap, changed
}

// encodePatch encodes the pages of content that bitmap flags.
func encodePatch(content, bitmap []byte, changed int) []byte {
	b := make([]byte, patchHeaderSize, patchHeaderSize+len(bitmap)+changed*patchPage)
	copy(b, patchMagic)
	binary.LittleEndian.PutUint32(b[4:], uint32(len(content)))
	b = append(b, bitmap...)
	for p := 0; p < patchPages(len(content)); p++ {
		if bitmap[p/8]&(1<<(p%8)) != 0 {
			b = append(b, content[p*patchPage:min((p+1)*patchPage, len(content))]...)
		}
	}
	return b
}

// patch is a decoded patch: a view into its content.
type patch struct {
	n      int    // chunk length
	bitmap []byte // changed pages
	data   []byte // the changed pages, in order
}

// decodePatch validates a patch for a store of chunkSize-byte chunks.
func decodePatch(b []byte, chunkSize int) (patch, error) {
	if len(b) < patchHeaderSize || string(b[:4]) != patchMagic {
		return patch{}, errors.New("bad patch header")
	}
	n := int(binary.LittleEndian.Uint32(b[4:]))
	if n < 1 || n > chunkSize {
		return patch{}, fmt.Errorf("patch covers %d bytes of a %d-byte chunk", n, chunkSize)
	}
	pages := patchPages(n)
	bm := (pages + 7) / 8
	if len(b) < patchHeaderSize+bm {
		return patch{}, errors.New("patch bitmap truncated")
	}
	p := patch{n: n, bitmap: b[patchHeaderSize : patchHeaderSize+bm], data: b[patchHeaderSize+bm:]}
	if pages%8 != 0 && p.bitmap[bm-1]>>(pages%8) != 0 {
		return patch{}, errors.New("patch bitmap flags pages past the chunk")
	}
	want := 0
	for i := 0; i < pages; i++ {
		if p.bitmap[i/8]&(1<<(i%8)) != 0 {
			want += min(patchPage, n-i*patchPage)
		}
	}
	if want == 0 {
		return patch{}, errors.New("patch changes nothing")
	}
	if len(p.data) != want {
		return patch{}, fmt.Errorf("patch holds %d bytes of pages, its bitmap says %d", len(p.data), want)
	}
	return p, nil
}

// apply overlays the patch's pages on dst, which holds the chunk's bytes
// from offset at.
func (p patch) apply(dst []byte, at int64) {
	lo, hi := at, at+int64(len(dst))
	pos := 0 // offset of the next changed page in p.data
	for i := 0; i < patchPages(p.n); i++ {
		if p.bitmap[i/8]&(1<<(i%8)) == 0 {
			continue
		}
		plo, phi := int64(i*patchPage), int64(min((i+1)*patchPage, p.n))
		size := int(phi - plo)
		if plo < hi && phi > lo {
			s, e := max(plo, lo), min(phi, hi)
			copy(dst[s-at:e-at], p.data[pos+int(s-plo):pos+int(e-plo)])
		}
		pos += size
		if plo >= hi {
			return
		}
	}
}
