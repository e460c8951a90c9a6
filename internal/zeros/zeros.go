// Package zeros tells all-zero data apart quickly. Zeros are the commonest
// content of a disk (unused space), and every layer of Ferry skips them:
// the agent announces them without data, the store never keeps them, and a
// block hash of zeros is a constant.
package zeros

import "bytes"

// buf is compared against: bytes.Equal runs the runtime's vectorised
// memequal, several times faster than a loop over words.
var buf = make([]byte, 64<<10)

// Is reports whether b holds only zero bytes (true for an empty b).
func Is(b []byte) bool {
	for len(b) > 0 {
		n := min(len(b), len(buf))
		if !bytes.Equal(b[:n], buf[:n]) {
			return false
		}
		b = b[n:]
	}
	return true
}
