package dataplane_test

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/ferrymigrate/ferry"
	"github.com/ferrymigrate/ferry/agent"
	"github.com/ferrymigrate/ferry/dataplane"
	"github.com/ferrymigrate/ferry/protocol"
	"github.com/ferrymigrate/ferry/track"
)

// rawSession is a session of s-1 spoken by the test itself.
type rawSession struct {
	c   *tls.Conn
	tcp *net.TCPConn
	r   *protocol.Reader
}

// sessionNoAck connects as s-1's agent and sends HELLO.
func (h *harness) sessionNoAck(t *testing.T) *rawSession {
	t.Helper()
	nc, err := (&net.Dialer{}).DialContext(t.Context(), "tcp", h.addr)
	if err != nil {
		t.Fatal(err)
	}
	c := tls.Client(nc, h.tlsConf)
	t.Cleanup(func() { c.Close() })
	if _, err := c.Write(protocol.Append(nil, &protocol.Hello{ProtocolVersion: protocol.Version, AgentVersion: "test", ServerID: "s-1", Tracker: "manual-test",
		Disks: []protocol.HelloDisk{{Name: "vda", Size: 1 << 20, LogicalBlockSize: 512}}})); err != nil {
		t.Fatal(err)
	}
	return &rawSession{c: c, tcp: nc.(*net.TCPConn), r: protocol.NewReader(c)}
}

// session connects as s-1's agent and reads HELLO_ACK: the replication
// server has made it s-1's session by then.
func (h *harness) session(t *testing.T) *rawSession {
	t.Helper()
	rs := h.sessionNoAck(t)
	_ = rs.c.SetReadDeadline(time.Now().Add(30 * time.Second))
	if m, err := rs.r.Read(); err != nil {
		t.Fatal(err)
	} else if _, ok := m.(*protocol.HelloAck); !ok {
		t.Fatalf("first message is %s, want HELLO_ACK", m.Type())
	}
	return rs
}

// reset ends the connection with a TCP RST, as a network failure does.
func (rs *rawSession) reset(t *testing.T) {
	t.Helper()
	if err := rs.tcp.SetLinger(0); err != nil {
		t.Fatal(err)
	}
	rs.tcp.Close()
}

// readUntil reads frames until one satisfies ok, and returns it.
func (rs *rawSession) readUntil(t *testing.T, what string, ok func(protocol.Message) bool) protocol.Message {
	t.Helper()
	_ = rs.c.SetReadDeadline(time.Now().Add(10 * time.Second))
	for {
		m, err := rs.r.Read()
		if err != nil {
			t.Fatalf("waiting for %s: %v", what, err)
		}
		if ok(m) {
			return m
		}
	}
}

// waitSettings reads until a SETTINGS frame satisfies ok.
func (rs *rawSession) waitSettings(t *testing.T, ok func(*protocol.Settings) bool) {
	t.Helper()
	rs.readUntil(t, "SETTINGS", func(m protocol.Message) bool {
		st, isSettings := m.(*protocol.Settings)
		return isSettings && ok(st)
	})
}

// TestUnstableNetworkWhichEndsCount: through a real replication server,
// the ends of a session that count toward UNSTABLE_NETWORK are the
// connection failing or the agent closing it; ends the service asked for
// do not count.
func TestUnstableNetworkWhichEndsCount(t *testing.T) {
	setServer := func(h *harness, f func(*ferry.SourceServer)) {
		h.t.Helper()
		if _, err := h.st.UpdateServer(h.t.Context(), "s-1", func(s *ferry.SourceServer) error { f(s); return nil }); err != nil {
			h.t.Fatal(err)
		}
		h.dp.Notify("s-1")
	}
	tests := []struct {
		name string
		end  func(t *testing.T, h *harness, rs *rawSession)
		want int
	}{
		{"connection reset", func(t *testing.T, h *harness, rs *rawSession) { rs.reset(t) }, 1},
		{"agent closes", func(t *testing.T, h *harness, rs *rawSession) { rs.c.Close() }, 1},
		{"replaced by a newer session", func(t *testing.T, h *harness, rs *rawSession) { h.session(t) }, 0},
		{"replaced after the old session went silent", func(t *testing.T, h *harness, rs *rawSession) {
			h.clock.advance(11 * time.Second) // two agent heartbeats and more
			h.session(t)
		}, 1},
		{"server shuts down", func(t *testing.T, h *harness, rs *rawSession) { h.stop(); h.stop = func() {} }, 0},
		{"disconnected from the service", func(t *testing.T, h *harness, rs *rawSession) {
			setServer(h, func(s *ferry.SourceServer) { s.Lifecycle = ferry.LifecycleDisconnected })
			rs.waitSettings(t, func(st *protocol.Settings) bool { return st.Disconnect })
		}, 0},
		{"agent goes while paused", func(t *testing.T, h *harness, rs *rawSession) {
			setServer(h, func(s *ferry.SourceServer) { s.Desired = ferry.DesiredPause })
			rs.waitSettings(t, func(st *protocol.Settings) bool { return st.Desired == protocol.DesiredPause })
			rs.reset(t)
		}, 0},
		{"server refuses what the agent sent", func(t *testing.T, h *harness, rs *rawSession) {
			if _, err := rs.c.Write(protocol.Append(nil, &protocol.HelloAck{})); err != nil {
				t.Fatal(err)
			}
		}, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness(t)
			h.stop()
			h.clock = &clock{}
			h.serveWith(func(s *dataplane.Server) { s.Now = h.clock.now })
			dp := h.dp
			rs := h.session(t)
			tt.end(t, h, rs)
			if tt.want > 0 {
				eventually(t, 10*time.Second, "drop logged", func() bool { return dataplane.DropsLogged(dp, "s-1") >= tt.want })
			} else if !strings.HasPrefix(tt.name, "replaced") {
				// The session's end is recorded before it lets go of the
				// server.
				eventually(t, 10*time.Second, "session ended", func() bool { return dp.Sessions() == 0 })
			}
			if got := dataplane.DropsLogged(dp, "s-1"); got != tt.want {
				t.Fatalf("%d drops logged, want %d", got, tt.want)
			}
		})
	}
}

// TestDropRightAfterHello: an agent whose connection fails as the
// session starts, while the server sends HELLO_ACK or the first CREDIT,
// has ended a session like any other: each such end is a drop and leaves
// the server DISCONNECTED. The server used to return from either without
// recording anything (found under load in CI, where a reset arrived
// between the two).
func TestDropRightAfterHello(t *testing.T) {
	for _, typ := range []protocol.Type{protocol.TypeHelloAck, protocol.TypeCredit} {
		t.Run(typ.String(), func(t *testing.T) {
			h := newHarness(t)
			dataplane.SetSendFault(h.dp, func(got protocol.Type) error {
				if got == typ {
					return syscall.ECONNRESET
				}
				return nil
			})
			for i := range 2 {
				rs := h.sessionNoAck(t)
				eventually(t, 10*time.Second, "drop logged", func() bool { return dataplane.DropsLogged(h.dp, "s-1") == i+1 })
				eventually(t, 10*time.Second, "session ended", func() bool { return h.dp.Sessions() == 0 })
				s, err := h.st.Server(t.Context(), "s-1")
				if err != nil {
					t.Fatal(err)
				}
				if s.Replication.State != ferry.ReplicationDisconnected {
					t.Fatalf("after %d failed starts: replication %s, want DISCONNECTED", i+1, s.Replication.State)
				}
				rs.c.Close()
			}
		})
	}
}

// clock is the replication server's clock in
// TestUnstableNetworkSetAndCleared: the real time moved on by skip, so the
// test can pass a window without waiting for it.
type clock struct{ skip atomic.Int64 }

func (c *clock) now() time.Time          { return time.Now().Add(time.Duration(c.skip.Load())) }
func (c *clock) advance(d time.Duration) { c.skip.Add(int64(d)) }

// TestUnstableNetworkSetAndCleared: a real agent whose data-plane
// connection is reset three times within the window gets UNSTABLE_NETWORK,
// which its next session keeps (without writing the record for it) until
// it has stayed connected for the window.
func TestUnstableNetworkSetAndCleared(t *testing.T) {
	h := newHarness(t)
	clk := &clock{}
	counting := &countingStore{Store: h.st}
	h.stop()
	h.serveWith(func(s *dataplane.Server) { s.Now, s.Store = clk.now, counting })

	dir := t.TempDir()
	dev := filepath.Join(dir, "disk0")
	img := make([]byte, 1<<20)
	rand.Read(img[:256<<10])
	if err := os.WriteFile(dev, img, 0o600); err != nil {
		t.Fatal(err)
	}
	state := filepath.Join(dir, "state")
	os.MkdirAll(state, 0o700)
	var mu sync.Mutex
	var conns []*net.TCPConn
	dialed := func() int { mu.Lock(); defer mu.Unlock(); return len(conns) }
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	done := make(chan error, 1)
	go func() {
		done <- agent.Replicate(ctx, agent.Options{StateDir: state, Devices: []string{dev}, Tracker: &manualTracker{ch: make(chan []track.Batch)},
			ServerID: "s-1", Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
			Dial: func(ctx context.Context) (net.Conn, error) {
				nc, err := (&net.Dialer{}).DialContext(ctx, "tcp", h.addr)
				if err != nil {
					return nil, err
				}
				mu.Lock()
				conns = append(conns, nc.(*net.TCPConn))
				mu.Unlock()
				return tls.Client(nc, h.tlsConf), nil
			}})
	}()
	defer func() {
		cancel()
		<-done
	}()
	server := func() *ferry.SourceServer {
		s, err := h.st.Server(t.Context(), "s-1")
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	eventually(t, 20*time.Second, "initial sync done, CONTINUOUS", func() bool {
		s := server()
		return s.Lifecycle == ferry.LifecycleReadyForTest && s.Replication.State == ferry.ReplicationContinuous
	})

	// Three resets, each once the agent is back in session.
	for i := range 3 {
		eventually(t, 20*time.Second, "agent in session", func() bool { return dialed() == i+1 && h.dp.Sessions() == 1 })
		if s := server(); s.Replication.ErrorCode != "" {
			t.Fatalf("after %d drops: %s %q", i, s.Replication.ErrorCode, s.Replication.ErrorMessage)
		}
		mu.Lock()
		c := conns[i]
		mu.Unlock()
		if err := c.SetLinger(0); err != nil {
			t.Fatal(err)
		}
		c.Close()
		eventually(t, 10*time.Second, "drop logged", func() bool { return dataplane.DropsLogged(h.dp, "s-1") == i+1 })
	}
	// The drop is logged in memory just before the session's end is
	// written to the record.
	eventually(t, 10*time.Second, "UNSTABLE_NETWORK recorded", func() bool { return server().Replication.ErrorCode != "" })
	s := server()
	if s.Replication.ErrorCode != ferry.ErrCodeUnstableNetwork || !strings.Contains(s.Replication.ErrorMessage, "dropped 3 times within") ||
		!strings.Contains(s.Replication.ErrorMessage, "last error: ") {
		t.Fatalf("after 3 drops: %s %q; want UNSTABLE_NETWORK", s.Replication.ErrorCode, s.Replication.ErrorMessage)
	}
	t.Logf("UNSTABLE_NETWORK: %s", s.Replication.ErrorMessage)
	msg := s.Replication.ErrorMessage

	// The agent comes back and stays: the error stays too, and keeping it
	// costs no write of the record.
	eventually(t, 20*time.Second, "agent back in session", func() bool {
		s := server()
		return dialed() == 4 && h.dp.Sessions() == 1 && s.Replication.State == ferry.ReplicationContinuous
	})
	before := counting.updates.Load()
	time.Sleep(2 * time.Second) // ten polls
	if n := counting.updates.Load() - before; n > 1 {
		t.Errorf("%d record writes in 2 s of a connected, idle agent with UNSTABLE_NETWORK; want at most 1", n)
	}
	if s := server(); s.Replication.ErrorCode != ferry.ErrCodeUnstableNetwork || s.Replication.ErrorMessage != msg {
		t.Fatalf("back in session: %s %q; want UNSTABLE_NETWORK kept", s.Replication.ErrorCode, s.Replication.ErrorMessage)
	}

	// Once the session has been up for the window, the error clears.
	clk.advance(10 * time.Minute)
	eventually(t, 10*time.Second, "UNSTABLE_NETWORK cleared", func() bool { return server().Replication.ErrorCode == "" })
	if n := dialed(); n != 4 {
		t.Fatalf("the agent connected %d times; want 4", n)
	}
	if n := dataplane.DropsLogged(h.dp, "s-1"); n != 0 {
		t.Fatalf("%d drops still logged after a stable session", n)
	}
}

// countingStore counts UpdateServer calls.
type countingStore struct {
	ferry.Store
	updates atomic.Int64
}

func (s *countingStore) UpdateServer(ctx context.Context, id string, fn func(*ferry.SourceServer) error) (*ferry.SourceServer, error) {
	s.updates.Add(1)
	return s.Store.UpdateServer(ctx, id, fn)
}
