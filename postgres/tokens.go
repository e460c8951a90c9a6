package postgres

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/ferrymigrate/ferry"
)

// copyBytes returns a copy of b, nil when b is empty.
func copyBytes(b []byte) []byte {
	if len(b) == 0 {
		return nil
	}
	return append([]byte(nil), b...)
}

var tokens = &kind[ferry.Token]{
	name:     "token",
	table:    "tokens",
	hidden:   "hash",
	id:       func(t *ferry.Token) string { return t.ID },
	cols:     func(t *ferry.Token) ([]string, []any) { return []string{"hash"}, []any{copyBytes(t.Hash)} },
	hiddenOf: func(t *ferry.Token) []byte { return t.Hash },
	load:     func(t *ferry.Token, hidden []byte) { t.Hash = copyBytes(hidden) },
}

// CreateToken adds an API token. A duplicate id is an error wrapping
// ferry.ErrConflict.
func (s *Store) CreateToken(ctx context.Context, t *ferry.Token) error {
	return unwrap("create token "+t.ID, tokens.create(ctx, s, t))
}

// Token returns an API token by id, revoked ones included, or an error
// wrapping ferry.ErrNotFound.
func (s *Store) Token(ctx context.Context, id string) (*ferry.Token, error) {
	v, err := tokens.get(ctx, s.pool, id, false)
	return v, unwrap("get token "+id, err)
}

// ListTokens returns every API token, ordered by id.
func (s *Store) ListTokens(ctx context.Context) ([]*ferry.Token, error) {
	v, err := listAll(ctx, s, tokens)
	return v, unwrap("list tokens", err)
}

// RevokeToken marks a token revoked at time at; revoking twice keeps the
// first time.
func (s *Store) RevokeToken(ctx context.Context, id string, at time.Time) error {
	_, err := tokens.update(ctx, s, id, func(t *ferry.Token) error {
		if t.RevokedAt.IsZero() {
			t.RevokedAt = at
		}
		return nil
	})
	return unwrap("revoke token "+id, err)
}

// TouchToken records that a token was used at time at. An earlier time
// than the one recorded is ignored.
func (s *Store) TouchToken(ctx context.Context, id string, at time.Time) error {
	_, err := tokens.update(ctx, s, id, func(t *ferry.Token) error {
		if at.After(t.LastUsedAt) {
			t.LastUsedAt = at
		}
		return nil
	})
	return unwrap("touch token "+id, err)
}

var installTokens = &kind[ferry.InstallToken]{
	name:     "install token",
	table:    "install_tokens",
	hidden:   "hash",
	id:       func(t *ferry.InstallToken) string { return t.ID },
	cols:     func(t *ferry.InstallToken) ([]string, []any) { return []string{"hash"}, []any{copyBytes(t.Hash)} },
	hiddenOf: func(t *ferry.InstallToken) []byte { return t.Hash },
	load:     func(t *ferry.InstallToken, hidden []byte) { t.Hash = copyBytes(hidden) },
}

// CreateInstallToken adds an install token. A duplicate id is an error
// wrapping ferry.ErrConflict.
func (s *Store) CreateInstallToken(ctx context.Context, t *ferry.InstallToken) error {
	return unwrap("create install token "+t.ID, installTokens.create(ctx, s, t))
}

// InstallToken returns an install token by id, or an error wrapping
// ferry.ErrNotFound.
func (s *Store) InstallToken(ctx context.Context, id string) (*ferry.InstallToken, error) {
	v, err := installTokens.get(ctx, s.pool, id, false)
	return v, unwrap("get install token "+id, err)
}

// ListInstallTokens returns every install token, ordered by id.
func (s *Store) ListInstallTokens(ctx context.Context) ([]*ferry.InstallToken, error) {
	v, err := listAll(ctx, s, installTokens)
	return v, unwrap("list install tokens", err)
}

// RevokeInstallToken marks an install token revoked at time at; revoking
// twice keeps the first time.
func (s *Store) RevokeInstallToken(ctx context.Context, id string, at time.Time) error {
	_, err := installTokens.update(ctx, s, id, func(t *ferry.InstallToken) error {
		if t.RevokedAt.IsZero() {
			t.RevokedAt = at
		}
		return nil
	})
	return unwrap("revoke install token "+id, err)
}

// UseInstallToken atomically checks that the install token is usable at
// time now and counts one use. It returns the token after the use, or an
// error wrapping ferry.ErrInstallTokenRevoked, ErrInstallTokenExpired,
// ErrInstallTokenUsedUp or ErrNotFound, and counts nothing.
func (s *Store) UseInstallToken(ctx context.Context, id string, now time.Time) (*ferry.InstallToken, error) {
	v, err := installTokens.update(ctx, s, id, func(t *ferry.InstallToken) error {
		if err := t.Usable(now); err != nil {
			return err
		}
		t.Uses++
		return nil
	})
	var cb errCallback
	if errors.As(err, &cb) {
		return nil, fmt.Errorf("postgres: use install token %s: %w", id, cb.err)
	}
	return v, unwrap("use install token "+id, err)
}
