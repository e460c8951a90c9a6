package controlplane

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"testing"

	"github.com/ferrymigrate/ferry"
)

// fakeReplicas records DeleteReplica calls and answers with err.
type fakeReplicas struct {
	calls []string
	err   error
}

func (f *fakeReplicas) DeleteReplica(_ context.Context, id string) (int, error) {
	f.calls = append(f.calls, id)
	return 1, f.err
}

// TestDeleteServerDeletesReplica: deleting a server deletes its replica
// first; a live instance, a replica in use or a failed deletion refuse
// it, and the record stays to try again.
func TestDeleteServerDeletesReplica(t *testing.T) {
	tests := []struct {
		name     string
		state    ferry.LifecycleState
		launched *ferry.LaunchedInstance
		err      error // the replica deletion's
		status   int
		contains string
		deleted  bool // the replica deletion was asked for
	}{
		{name: "disconnected", state: ferry.LifecycleDisconnected, status: http.StatusNoContent, deleted: true},
		{name: "discovered", state: ferry.LifecycleDiscovered, status: http.StatusNoContent, deleted: true},
		{name: "still replicating", state: ferry.LifecycleNotReady, status: http.StatusConflict, contains: "disconnect or archive it"},
		{name: "live cutover instance", state: ferry.LifecycleDisconnected, launched: &ferry.LaunchedInstance{ID: "i-1", Kind: ferry.InitiatedByStartCutover},
			status: http.StatusConflict, contains: "launched cutover instance i-1"},
		{name: "replica in use", state: ferry.LifecycleDisconnected, err: fmt.Errorf("%w: replica disk in use", ferry.ErrConflict),
			status: http.StatusConflict, contains: "in use", deleted: true},
		{name: "replica deletion fails", state: ferry.LifecycleDisconnected, err: errors.New("disk on fire"),
			status: http.StatusInternalServerError, deleted: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnv(t)
			fr := &fakeReplicas{err: tt.err}
			e.srv.Replicas = fr
			e.addServer("s-del", tt.state)
			if tt.launched != nil {
				if _, err := e.store.UpdateServer(context.Background(), "s-del", func(s *ferry.SourceServer) error {
					s.Launched = tt.launched
					return nil
				}); err != nil {
					t.Fatal(err)
				}
			}
			status, body := e.do(http.MethodDelete, "/servers/s-del", e.tokens[ferry.RoleAdmin], nil)
			if status != tt.status || !strings.Contains(string(body), tt.contains) {
				t.Fatalf("delete: %d %s, want %d containing %q", status, body, tt.status, tt.contains)
			}
			if got := len(fr.calls) > 0; got != tt.deleted {
				t.Fatalf("replica deletion asked for: %v, want %v", got, tt.deleted)
			}
			_, err := e.store.Server(context.Background(), "s-del")
			if gone := errors.Is(err, ferry.ErrNotFound); gone != (tt.status == http.StatusNoContent) {
				t.Fatalf("record gone: %v (%v), want %v", gone, err, tt.status == http.StatusNoContent)
			}
		})
	}
}
