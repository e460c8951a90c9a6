package jobs

import (
	"crypto/rand"
	"encoding/hex"
)

// newJobID returns mgnjob-<17 hex digits>, the shape of MGN's job ids.
func newJobID() string {
	var b [9]byte
	_, _ = rand.Read(b[:]) // never fails since Go 1.24
	return "mgnjob-" + hex.EncodeToString(b[:])[:17]
}
