package controlplane

import (
	"context"
	"encoding/json"
	"net/http"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ferrymigrate/ferry"
	"github.com/ferrymigrate/ferry/api"
)

// The event stream sends a snapshot, then the servers that change and the
// ids of those archived.
func TestEventStream(t *testing.T) {
	e := newEnv(t)
	e.srv.EventPollInterval = 20 * time.Millisecond
	e.srv.EventStreamMaxAge = time.Minute
	e.addServer("s-1", ferry.LifecycleNotReady)
	e.addServer("s-2", ferry.LifecycleDisconnected)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "GET", e.http.URL+APIPrefix+"/events", nil)
	req.Header.Set("Authorization", "Bearer "+e.tokens[ferry.RoleViewer])
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if ct := resp.Header.Get("Content-Type"); resp.StatusCode != 200 || ct != "text/event-stream" {
		t.Fatalf("status %d, content type %q", resp.StatusCode, ct)
	}
	step := 0
	// The two updates may land in one poll or in two: gather the changes.
	changed, removed := false, false
	err = api.ReadEvents(resp.Body, func(event string, data []byte) bool {
		switch step {
		case 0:
			var snap api.List[ferry.SourceServer]
			if event != "snapshot" || json.Unmarshal(data, &snap) != nil || len(snap.Items) != 2 {
				t.Fatalf("first event %s %s", event, data)
			}
			if _, err := e.store.UpdateServer(ctx, "s-1", func(s *ferry.SourceServer) error {
				s.Replication.State = ferry.ReplicationInitialSync
				s.Disks = []ferry.Disk{{Name: "vda", SizeBytes: 100, ReplicatedBytes: 40}}
				return nil
			}); err != nil {
				t.Fatal(err)
			}
			if _, err := e.store.UpdateServer(ctx, "s-2", func(s *ferry.SourceServer) error { s.Archived = true; return nil }); err != nil {
				t.Fatal(err)
			}
		case 1:
			var ch api.ServerChanges
			if event != "servers" || json.Unmarshal(data, &ch) != nil {
				t.Fatalf("second event %s %s", event, data)
			}
			for _, c := range ch.Changed {
				if c.ID != "s-1" || c.Disks[0].ReplicatedBytes != 40 || changed {
					t.Fatalf("changes %s", data)
				}
				changed = true
			}
			for _, id := range ch.Removed {
				if id != "s-2" || removed {
					t.Fatalf("changes %s", data)
				}
				removed = true
			}
			if len(ch.Changed)+len(ch.Removed) == 0 {
				t.Fatalf("an empty servers event: %s", data)
			}
			return !(changed && removed)
		}
		step++
		return true
	})
	if err != nil || step != 1 || !changed || !removed {
		t.Fatalf("stream ended at step %d (changed %v, removed %v): %v", step, changed, removed, err)
	}
}

// A stream ends on its own after EventStreamMaxAge and at shutdown.
func TestEventStreamEnds(t *testing.T) {
	e := newEnv(t)
	e.srv.EventPollInterval = 10 * time.Millisecond
	e.srv.EventStreamMaxAge = time.Hour
	done := make(chan int)
	go func() {
		st, _ := e.do("GET", "/events", e.tokens[ferry.RoleViewer], nil)
		done <- st
	}()
	time.Sleep(100 * time.Millisecond)
	e.srv.CloseStreams()
	select {
	case st := <-done:
		if st != 200 {
			t.Fatalf("status %d", st)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("stream did not end after CloseStreams")
	}
}

// A stream ends within a poll when its token expires or is revoked, and
// reconnecting gets the 401 that says which: a dashboard left open notices
// on its own.
func TestEventStreamEndsWithItsToken(t *testing.T) {
	for _, tt := range []struct {
		name, code string
		end        func(e *env, skew *atomic.Int64, id string)
	}{
		{"expired", api.CodeTokenExpired, func(_ *env, skew *atomic.Int64, _ string) { skew.Store(int64(2 * time.Minute)) }},
		{"revoked", api.CodeUnauthorized, func(e *env, _ *atomic.Int64, id string) {
			if err := e.store.RevokeToken(context.Background(), id, e.now); err != nil {
				t.Error(err)
			}
		}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnv(t)
			e.srv.EventPollInterval = 10 * time.Millisecond
			e.srv.EventStreamMaxAge = time.Hour
			var skew atomic.Int64
			base := e.now
			e.srv.Now = func() time.Time { return base.Add(time.Duration(skew.Load())) }
			tok, err := CreateToken(context.Background(), e.store, "page", ferry.RoleViewer, base, time.Minute)
			if err != nil {
				t.Fatal(err)
			}
			done := make(chan int)
			go func() {
				st, _ := e.do("GET", "/events", tok.Secret, nil)
				done <- st
			}()
			time.Sleep(100 * time.Millisecond)
			select {
			case <-done:
				t.Fatal("the stream ended while its token was good")
			default:
			}
			tt.end(e, &skew, tok.Token.ID)
			select {
			case st := <-done:
				if st != http.StatusOK {
					t.Fatalf("status %d", st)
				}
			case <-time.After(5 * time.Second):
				t.Fatal("the stream outlived its token")
			}
			st, body := e.do("GET", "/events", tok.Secret, nil)
			var ae api.Error
			_ = json.Unmarshal(body, &ae)
			if st != http.StatusUnauthorized || ae.Code != tt.code {
				t.Fatalf("reconnect: %d %s, want 401 %s", st, body, tt.code)
			}
		})
	}
}
