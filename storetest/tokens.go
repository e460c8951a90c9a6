package storetest

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ferrymigrate/ferry"
)

func token(id string, role ferry.Role) *ferry.Token {
	return &ferry.Token{ID: id, Name: "token " + id, Role: role, Hash: []byte{0, 1, 2, 0xff, byte(len(id))},
		CreatedAt: base, ExpiresAt: at(24 * time.Hour)}
}

func testTokens(t *testing.T, ctx context.Context, s ferry.Store) {
	ok(t, "create b", s.CreateToken(ctx, token("tok-b", ferry.RoleViewer)))
	ok(t, "create a", s.CreateToken(ctx, token("tok-a", ferry.RoleAdmin)))
	wantErr(t, "duplicate id", s.CreateToken(ctx, token("tok-a", ferry.RoleViewer)), ferry.ErrConflict)
	got, err := s.Token(ctx, "tok-a")
	ok(t, "get", err)
	same(t, "token", got, token("tok-a", ferry.RoleAdmin))
	_, err = s.Token(ctx, "missing")
	wantErr(t, "get missing", err, ferry.ErrNotFound)

	ok(t, "touch", s.TouchToken(ctx, "tok-a", at(time.Minute)))
	got, err = s.Token(ctx, "tok-a")
	ok(t, "get", err)
	if !got.LastUsedAt.Equal(at(time.Minute)) {
		t.Fatalf("LastUsedAt %v, want %v", got.LastUsedAt, at(time.Minute))
	}
	wantErr(t, "touch missing", s.TouchToken(ctx, "missing", base), ferry.ErrNotFound)

	ok(t, "revoke", s.RevokeToken(ctx, "tok-b", at(time.Hour)))
	ok(t, "revoke again", s.RevokeToken(ctx, "tok-b", at(2*time.Hour)))
	got, err = s.Token(ctx, "tok-b")
	ok(t, "get revoked", err)
	if !got.RevokedAt.Equal(at(time.Hour)) {
		t.Fatalf("RevokedAt %v, want the first revocation %v", got.RevokedAt, at(time.Hour))
	}
	if got.Active(at(time.Hour)) {
		t.Fatal("revoked token is active")
	}
	wantErr(t, "revoke missing", s.RevokeToken(ctx, "missing", base), ferry.ErrNotFound)

	list, err := s.ListTokens(ctx)
	ok(t, "list", err)
	wantA := token("tok-a", ferry.RoleAdmin)
	wantA.LastUsedAt = at(time.Minute)
	wantB := token("tok-b", ferry.RoleViewer)
	wantB.RevokedAt = at(time.Hour)
	same(t, "list", list, []*ferry.Token{wantA, wantB})
}

func installToken(id string, maxUses int) *ferry.InstallToken {
	return &ferry.InstallToken{ID: id, Name: "it " + id, Hash: []byte("hash-" + id), ApplicationID: "app-1",
		WaveID: "wave-1", Tags: map[string]string{"site": "dc1"}, MaxUses: maxUses, CreatedAt: base,
		ExpiresAt: at(time.Hour)}
}

func testInstallTokens(t *testing.T, ctx context.Context, s ferry.Store) {
	ok(t, "create", s.CreateInstallToken(ctx, installToken("it-2", 2)))
	ok(t, "create unlimited", s.CreateInstallToken(ctx, installToken("it-1", 0)))
	wantErr(t, "duplicate id", s.CreateInstallToken(ctx, installToken("it-2", 9)), ferry.ErrConflict)
	got, err := s.InstallToken(ctx, "it-2")
	ok(t, "get", err)
	same(t, "install token", got, installToken("it-2", 2))
	_, err = s.InstallToken(ctx, "missing")
	wantErr(t, "get missing", err, ferry.ErrNotFound)

	for i := 1; i <= 2; i++ {
		used, err := s.UseInstallToken(ctx, "it-2", at(time.Minute))
		ok(t, "use", err)
		if used.Uses != i {
			t.Fatalf("use %d: Uses = %d", i, used.Uses)
		}
	}
	_, err = s.UseInstallToken(ctx, "it-2", at(time.Minute))
	wantErr(t, "use beyond max", err, ferry.ErrInstallTokenUsedUp)
	for i := 1; i <= 3; i++ {
		used, err := s.UseInstallToken(ctx, "it-1", at(time.Minute))
		ok(t, "use unlimited", err)
		if used.Uses != i {
			t.Fatalf("unlimited use %d: Uses = %d", i, used.Uses)
		}
	}
	_, err = s.UseInstallToken(ctx, "it-1", at(time.Hour))
	wantErr(t, "use at expiry", err, ferry.ErrInstallTokenExpired)
	_, err = s.UseInstallToken(ctx, "missing", base)
	wantErr(t, "use missing", err, ferry.ErrNotFound)

	ok(t, "revoke", s.RevokeInstallToken(ctx, "it-1", at(time.Second)))
	ok(t, "revoke again", s.RevokeInstallToken(ctx, "it-1", at(2*time.Second)))
	_, err = s.UseInstallToken(ctx, "it-1", at(time.Minute))
	wantErr(t, "use revoked", err, ferry.ErrInstallTokenRevoked)
	wantErr(t, "revoke missing", s.RevokeInstallToken(ctx, "missing", base), ferry.ErrNotFound)

	got, err = s.InstallToken(ctx, "it-1")
	ok(t, "get", err)
	if got.Uses != 3 || got.RevokedAt.IsZero() {
		t.Fatalf("it-1: Uses %d, RevokedAt %v; failed uses must count nothing", got.Uses, got.RevokedAt)
	}
	list, err := s.ListInstallTokens(ctx)
	ok(t, "list", err)
	if len(list) != 2 || list[0].ID != "it-1" || list[1].ID != "it-2" || list[1].Uses != 2 {
		t.Fatalf("list: %+v", list)
	}
	same(t, "listed hash", list[1].Hash, []byte("hash-it-2"))
}

func testInstallTokenConcurrent(t *testing.T, ctx context.Context, s ferry.Store) {
	ok(t, "create", s.CreateInstallToken(ctx, installToken("it", 5)))
	var (
		wg        sync.WaitGroup
		succeeded atomic.Int32
	)
	errs := make(chan error, 20)
	for range 20 {
		wg.Go(func() {
			_, err := s.UseInstallToken(ctx, "it", at(time.Minute))
			switch {
			case err == nil:
				succeeded.Add(1)
			case !errors.Is(err, ferry.ErrInstallTokenUsedUp):
				errs <- err
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Errorf("use: got %v, want success or ErrInstallTokenUsedUp", err)
	}
	if n := succeeded.Load(); n != 5 {
		t.Fatalf("%d of 20 concurrent uses of a 5-use token succeeded, want 5", n)
	}
	got, err := s.InstallToken(ctx, "it")
	ok(t, "get", err)
	if got.Uses != 5 {
		t.Fatalf("Uses = %d, want 5", got.Uses)
	}
}
