package qmp

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// fakeQEMU speaks QMP's framing on a unix socket: the greeting, then one
// answer per command from answer (nil: a reply with an empty return), and
// any events the test pushes. Real QEMU is exercised by package
// connector's tests; this drives the corners QEMU will not produce on
// demand (garbage lines, replies out of order, a connection cut mid-way).
type fakeQEMU struct {
	path   string
	answer func(cmd map[string]any) []string
	conns  chan net.Conn
}

func startFake(t *testing.T, greeting string, answer func(map[string]any) []string) *fakeQEMU {
	t.Helper()
	f := &fakeQEMU{path: filepath.Join(t.TempDir(), "qmp.sock"), answer: answer, conns: make(chan net.Conn, 4)}
	l, err := net.Listen("unix", f.path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			f.conns <- c
			go func() {
				defer c.Close()
				c.Write([]byte(greeting + "\n"))
				sc := bufio.NewScanner(c)
				for sc.Scan() {
					var cmd map[string]any
					if json.Unmarshal(sc.Bytes(), &cmd) != nil {
						return
					}
					var lines []string
					if f.answer != nil {
						lines = f.answer(cmd)
					}
					if lines == nil {
						lines = []string{`{"return": {}, "id": ` + quote(cmd["id"]) + `}`}
					}
					for _, l := range lines {
						if _, err := c.Write([]byte(l + "\n")); err != nil {
							return
						}
					}
				}
			}()
		}
	}()
	return f
}

func quote(v any) string {
	b, _ := json.Marshal(v)
	return string(b)
}

const greeting = `{"QMP": {"version": {"qemu": {"micro": 22, "minor": 2, "major": 7}, "package": ""}, "capabilities": ["oob"]}}`

func TestDialAndExecute(t *testing.T) {
	f := startFake(t, greeting, func(cmd map[string]any) []string {
		id := quote(cmd["id"])
		switch cmd["execute"] {
		case "query-name":
			// Noise first: a garbage line, an event, a reply to no one.
			return []string{`not json`, `{"event": "RESUME", "data": {}, "timestamp": {"seconds": 1}}`, `{"return": 5, "id": "other"}`,
				`{"return": {"name": "vm1"}, "id": ` + id + `}`}
		case "boom":
			return []string{`{"error": {"class": "GenericError", "desc": "no such thing"}, "id": ` + id + `}`}
		case "wrong-shape":
			return []string{`{"return": [1, 2], "id": ` + id + `}`}
		}
		return nil
	})
	ctx := t.Context()
	c, err := Dial(ctx, "unix:"+f.path)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if c.Version != "7.2.22" {
		t.Fatalf("version %q", c.Version)
	}
	var name struct{ Name string }
	if err := c.Execute(ctx, "query-name", nil, &name); err != nil || name.Name != "vm1" {
		t.Fatalf("query-name: %+v %v", name, err)
	}
	err = c.Execute(ctx, "boom", map[string]any{"x": 1}, nil)
	var qe *Error
	if !errors.As(err, &qe) || qe.Class != "GenericError" || qe.Desc != "no such thing" || qe.Command != "boom" {
		t.Fatalf("error reply: %v", err)
	}
	if err := c.Execute(ctx, "wrong-shape", nil, &name); err == nil || !strings.Contains(err.Error(), "decode wrong-shape reply") {
		t.Fatalf("a reply of the wrong shape: %v", err)
	}
}

func TestDialRefusesWhatIsNotQMP(t *testing.T) {
	tests := []struct{ name, greeting, want string }{
		{"not json", "hello", "sent no QMP greeting"},
		{"json without QMP", `{"foo": 1}`, "sent no QMP greeting"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := startFake(t, tt.greeting, nil)
			_, err := Dial(t.Context(), f.path)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err %v, want %q", err, tt.want)
			}
		})
	}
	if _, err := Dial(t.Context(), filepath.Join(t.TempDir(), "none.sock")); err == nil || !strings.Contains(err.Error(), "connect") {
		t.Fatalf("dial a missing socket: %v", err)
	}
}

func TestEventsAndClose(t *testing.T) {
	f := startFake(t, greeting, func(cmd map[string]any) []string {
		if cmd["execute"] == "emit" {
			return []string{`{"event": "BLOCK_JOB_CANCELLED", "data": {"device": "j1"}}`, `{"event": "BLOCK_JOB_CANCELLED", "data": {"device": "j2"}}`,
				`{"return": {}, "id": ` + quote(cmd["id"]) + `}`}
		}
		if cmd["execute"] == "hang" {
			return []string{}
		}
		return nil
	})
	ctx := t.Context()
	c, err := Dial(ctx, f.path)
	if err != nil {
		t.Fatal(err)
	}
	server := <-f.conns
	sub := c.Subscribe(func(e Event) bool { return strings.Contains(string(e.Data), `"j2"`) })
	all := c.Subscribe(nil)
	if err := c.Execute(ctx, "emit", nil, nil); err != nil {
		t.Fatal(err)
	}
	ev, err := sub.Next(ctx)
	if err != nil || ev.Name != "BLOCK_JOB_CANCELLED" || !strings.Contains(string(ev.Data), "j2") {
		t.Fatalf("filtered event: %+v %v", ev, err)
	}
	for _, want := range []string{"j1", "j2"} {
		if ev, err := all.Next(ctx); err != nil || !strings.Contains(string(ev.Data), want) {
			t.Fatalf("event %s: %+v %v", want, ev, err)
		}
	}
	sub.Stop()
	all.Stop()
	// A command pending when the connection ends fails with ErrClosed.
	tctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- c.Execute(tctx, "hang", nil, nil) }()
	time.Sleep(50 * time.Millisecond)
	server.Close()
	if err := <-done; !errors.Is(err, ErrClosed) {
		t.Fatalf("pending command after the connection ended: %v", err)
	}
	if err := c.Execute(ctx, "after", nil, nil); !errors.Is(err, ErrClosed) {
		t.Fatalf("command after the connection ended: %v", err)
	}
	if _, err := c.Subscribe(nil).Next(ctx); !errors.Is(err, ErrClosed) {
		t.Fatalf("event wait after close: %v", err)
	}
	c.Close()
}

func TestExecuteHonoursContext(t *testing.T) {
	f := startFake(t, greeting, func(cmd map[string]any) []string {
		if cmd["execute"] == "hang" {
			return []string{}
		}
		return nil
	})
	c, err := Dial(t.Context(), f.path)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(t.Context(), 100*time.Millisecond)
	defer cancel()
	if err := c.Execute(ctx, "hang", nil, nil); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err %v, want the deadline", err)
	}
	// The connection still works.
	if err := c.Execute(t.Context(), "ok", nil, nil); err != nil {
		t.Fatal(err)
	}
}

func TestParseReply(t *testing.T) {
	tests := []struct {
		line  string
		ok    bool
		id    string
		event string
	}{
		{`{"return": {}, "id": "ferry-1"}`, true, "ferry-1", ""},
		{`{"error": {"class": "GenericError", "desc": "x"}, "id": "ferry-2"}`, true, "ferry-2", ""},
		{`{"event": "STOP", "data": {}}`, true, "", "STOP"},
		{`{"return": {}}`, false, "", ""},
		{`{"id": 5}`, false, "", ""},
		{`[1]`, false, "", ""},
		{``, false, "", ""},
	}
	for _, tt := range tests {
		r, ok := parseReply([]byte(tt.line))
		if ok != tt.ok || r.ID != tt.id || r.Event != tt.event {
			t.Errorf("%s: ok %v id %q event %q", tt.line, ok, r.ID, r.Event)
		}
	}
}

// FuzzParseReply: whatever a QEMU (or whatever sits on the socket) sends,
// parsing neither panics nor accepts a line that names no one.
func FuzzParseReply(f *testing.F) {
	f.Fuzz(func(t *testing.T, b []byte) {
		r, ok := parseReply(b)
		if ok && r.ID == "" && r.Event == "" {
			t.Fatalf("accepted %q with neither id nor event", b)
		}
	})
}
