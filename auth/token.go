package auth

import (
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base32"
	"errors"
	"fmt"
	"strings"
)

// Prefixes tell the kinds of secret apart at a glance (and to secret
// scanners).
const (
	// APITokenPrefix starts every API token.
	APITokenPrefix = "fyt"
	// InstallTokenPrefix starts every install token.
	InstallTokenPrefix = "fyi"
)

// ErrMalformed means a presented secret is not of the form
// "<prefix>_<id>_<secret>" with the expected prefix.
var ErrMalformed = errors.New("malformed token")

var enc = base32.NewEncoding("abcdefghijklmnopqrstuvwxyz234567").WithPadding(base32.NoPadding)

// Secret is a freshly made token: the whole string to hand to its user
// once, and what the server keeps.
type Secret struct {
	// Plain is the whole token, shown once.
	Plain string
	// ID is the public part that finds the stored record.
	ID string
	// Hash is what the server stores.
	Hash []byte
}

// New makes a token with the given prefix: a 10-byte id and a 32-byte secret
// from crypto/rand.
func New(prefix string) (Secret, error) {
	id := make([]byte, 10)
	sec := make([]byte, 32)
	if _, err := rand.Read(id); err != nil {
		return Secret{}, fmt.Errorf("make token id: %w", err)
	}
	if _, err := rand.Read(sec); err != nil {
		return Secret{}, fmt.Errorf("make token secret: %w", err)
	}
	s := enc.EncodeToString(sec)
	i := enc.EncodeToString(id)
	return Secret{Plain: prefix + "_" + i + "_" + s, ID: i, Hash: Hash(s)}, nil
}

// Parse splits a presented token into its id and secret parts, checking
// the prefix. It never echoes the secret in its error.
func Parse(prefix, token string) (id, secret string, err error) {
	rest, ok := strings.CutPrefix(token, prefix+"_")
	if !ok {
		return "", "", fmt.Errorf("%w: want a %s_… token", ErrMalformed, prefix)
	}
	id, secret, ok = strings.Cut(rest, "_")
	if !ok || id == "" || secret == "" || len(id) > 64 || len(secret) > 128 {
		return "", "", fmt.Errorf("%w: want %s_<id>_<secret>", ErrMalformed, prefix)
	}
	return id, secret, nil
}

// Hash returns the stored form of a secret part.
func Hash(secret string) []byte {
	h := sha256.Sum256([]byte(secret))
	return h[:]
}

// Check reports whether secret hashes to stored, in constant time.
func Check(stored []byte, secret string) bool {
	return subtle.ConstantTimeCompare(stored, Hash(secret)) == 1
}
