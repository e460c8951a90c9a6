package replica

import (
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strings"
)

// KeyProvider wraps and unwraps the store's data keys. The store generates
// its data keys once, keeps only the wrapped form on the backend, and asks
// the provider to unwrap them at Open. A local key file (KeyFile) is the
// default; a Vault Transit or cloud KMS provider implements the same two
// calls against its service.
type KeyProvider interface {
	// WrapKey encrypts key material for storage.
	WrapKey(ctx context.Context, key []byte) ([]byte, error)
	// UnwrapKey reverses WrapKey. It returns an error wrapping ErrWrongKey
	// when wrapped was not produced with this provider's key.
	UnwrapKey(ctx context.Context, wrapped []byte) ([]byte, error)
}

// KeyFile is a KeyProvider backed by a 256-bit master key kept in a local
// file (64 hex digits, mode 0600). It wraps with AES-256-GCM.
type KeyFile struct {
	path string
	aead cipher.AEAD
}

var _ KeyProvider = (*KeyFile)(nil)

const keyFileWrapMagic = "FKW1"

// CreateKeyFile writes a new random master key to path with mode 0600 and
// returns it. It fails if path already exists, so a key is never replaced
// by accident.
func CreateKeyFile(path string) (*KeyFile, error) {
	var key [32]byte
	if _, err := rand.Read(key[:]); err != nil {
		return nil, fmt.Errorf("generate master key: %w", err)
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return nil, fmt.Errorf("create key file: %w", err)
	}
	_, err = f.WriteString(hex.EncodeToString(key[:]) + "\n")
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(path)
		return nil, fmt.Errorf("write key file: %w", err)
	}
	return newKeyFile(path, key[:])
}

// LoadKeyFile reads the master key from path. A missing file, a file
// readable by group or others, or malformed contents are errors (a missing
// file wraps ErrNoKey).
func LoadKeyFile(path string) (*KeyFile, error) {
	info, err := os.Stat(path)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("load key file %s: %w", path, ErrNoKey)
		}
		return nil, fmt.Errorf("load key file: %w", err)
	}
	if info.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("load key file %s: mode %v is readable by others; chmod 600 it", path, info.Mode().Perm())
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("load key file: %w", err)
	}
	key, err := hex.DecodeString(strings.TrimSpace(string(data)))
	if err != nil || len(key) != 32 {
		return nil, fmt.Errorf("load key file %s: want 64 hex digits (a 256-bit key)", path)
	}
	return newKeyFile(path, key)
}

// OpenKeyFile loads the key file at path, creating it with a new random key
// if it does not exist.
func OpenKeyFile(path string) (*KeyFile, error) {
	k, err := LoadKeyFile(path)
	if errors.Is(err, ErrNoKey) {
		k, err = CreateKeyFile(path)
		if errors.Is(err, fs.ErrExist) {
			return LoadKeyFile(path)
		}
	}
	return k, err
}

func newKeyFile(path string, key []byte) (*KeyFile, error) {
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, fmt.Errorf("master key: %w", err)
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return nil, fmt.Errorf("master key: %w", err)
	}
	return &KeyFile{path: path, aead: aead}, nil
}

// WrapKey encrypts key with the master key.
func (k *KeyFile) WrapKey(_ context.Context, key []byte) ([]byte, error) {
	out := make([]byte, len(keyFileWrapMagic)+k.aead.NonceSize(), len(keyFileWrapMagic)+k.aead.NonceSize()+len(key)+k.aead.Overhead())
	copy(out, keyFileWrapMagic)
	nonce := out[len(keyFileWrapMagic):]
	if _, err := rand.Read(nonce); err != nil {
		return nil, fmt.Errorf("wrap key: %w", err)
	}
	return k.aead.Seal(out, nonce, key, []byte(keyFileWrapMagic)), nil
}

// UnwrapKey decrypts a key wrapped by WrapKey; a different master key gives
// an error wrapping ErrWrongKey.
func (k *KeyFile) UnwrapKey(_ context.Context, wrapped []byte) ([]byte, error) {
	hdr := len(keyFileWrapMagic) + k.aead.NonceSize()
	if len(wrapped) < hdr+k.aead.Overhead() || string(wrapped[:len(keyFileWrapMagic)]) != keyFileWrapMagic {
		return nil, fmt.Errorf("unwrap key: not a key wrapped by a key file: %w", ErrWrongKey)
	}
	key, err := k.aead.Open(nil, wrapped[len(keyFileWrapMagic):hdr], wrapped[hdr:], []byte(keyFileWrapMagic))
	if err != nil {
		return nil, fmt.Errorf("unwrap key with %s: %w", k.path, ErrWrongKey)
	}
	return key, nil
}
