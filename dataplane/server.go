package dataplane

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"math/big"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ferrymigrate/ferry"
	"github.com/ferrymigrate/ferry/pki"
	"github.com/ferrymigrate/ferry/protocol"
	"github.com/ferrymigrate/ferry/replica"
)

// Server accepts agent connections. Store, CA and Cert are required.
type Server struct {
	Store  ferry.Store
	CA     *pki.CA
	Cert   tls.Certificate
	Logger *slog.Logger
	// Now is the clock; nil means time.Now.
	Now func() time.Time
	// Replica is the replica store the agents' writes go to.
	Replica *replica.Store
	// StallAfter is how long without progress (or without a message) makes
	// a connected agent's replication STALLED; 0 means 60 s.
	StallAfter time.Duration
	// PollInterval is how often a session records its state (when it
	// changed); 0 means 1 s.
	PollInterval time.Duration
	// SettingsPoll is how often a session re-reads its server's record
	// for changes made elsewhere (the operator's settings, a disconnect);
	// 0 means 10 s. Whoever changes a server in this process calls Notify
	// so the session picks the change up at once; the poll catches
	// changes made by another process sharing the database.
	SettingsPoll time.Duration
	// AgentNotSeenAfter is how long a disconnected agent may be silent
	// before its server gets the AGENT_NOT_SEEN error; 0 means 10 min.
	AgentNotSeenAfter time.Duration
	// UnstableDrops is how many unplanned ends of a server's agent
	// sessions within UnstableWindow give the server the UNSTABLE_NETWORK
	// error; 0 means 3, and more than 64 counts as 64. Ends the service
	// asked for do not count: this server shutting down, a disconnect
	// from the service, the operator's pause or stop, a newer session of
	// the same agent replacing the old.
	UnstableDrops int
	// UnstableWindow is the time UnstableDrops are counted in, and how
	// long a session must then stay up to clear UNSTABLE_NETWORK; 0
	// means 10 min.
	UnstableWindow time.Duration
	// CreditBytes bounds the bytes an agent may have sent but not seen
	// acknowledged; 0 means 16 MiB.
	CreditBytes int64
	// BulkCreditBytes is the credit of an agent that copies whole disks
	// (initial sync, rescan) while BulkCreditPool has room; 0 means 64
	// MiB. Not above CreditBytes turns it off.
	BulkCreditBytes int64
	// BulkCreditPool bounds the credit beyond CreditBytes that all bulk
	// sessions hold together; 0 means 1 GiB, negative none (bulk credit
	// off).
	BulkCreditPool int64
	// AgentCertValidity is how long the certificates agents renew with
	// RENEW last; 0 means a year, as pairing issues.
	AgentCertValidity time.Duration
	// Observer, when set, is told of every WRITE applied and every
	// durable acknowledgement sent (benchmarks match them to measure the
	// RPO); nil means none.
	Observer Observer

	received atomic.Int64 // data bytes of WRITEs received (uncompressed)

	mu       sync.Mutex
	conns    map[net.Conn]struct{}     // guarded by mu
	sessions map[string]*activeSession // the live session of each server; guarded by mu
	live     atomic.Int64              // len(sessions), read without mu
	traffic  map[string]*serverTraffic // per-server counters; guarded by mu
	// drops is the recent unplanned session ends of servers that had any
	// and have not since stayed connected for UnstableWindow; guarded by
	// mu.
	drops map[string]*dropLog
	// bulkUsed is the bulk credit pool in use; guarded by mu.
	bulkUsed int64
	// sendFault, when set (tests only), fails the sending of the message
	// types it returns an error for, as a broken connection would.
	sendFault func(protocol.Type) error
}

// Observer watches the records a session applies and acknowledges. Its
// methods run on the session's goroutines: they must return quickly and
// must not keep data after returning.
type Observer interface {
	// Written is called after a WRITE's data (uncompressed) is appended
	// to the replica journal of disk (its index in HELLO).
	Written(serverID string, disk int, seq uint64, off int64, data []byte)
	// Durable is called as the server acknowledges every record of disk
	// up to seq as durable.
	Durable(serverID string, disk int, seq uint64)
}

func (s *Server) now() time.Time {
	if s.Now != nil {
		return s.Now().UTC()
	}
	return time.Now().UTC()
}

// Notify tells server id's session, if it has one here, that the server's
// record changed: the session re-reads it (and sends new SETTINGS) within
// moments instead of at its next SettingsPoll.
func (s *Server) Notify(id string) {
	if ss := s.session(id); ss != nil {
		select {
		case ss.poke <- struct{}{}:
		default:
		}
	}
}

// ReceivedBytes returns how many bytes of data (uncompressed) agents have
// sent in WRITEs since the server started: what re-sending costs.
func (s *Server) ReceivedBytes() int64 { return s.received.Load() }

// Revoked reports whether a certificate may no longer be used: its server
// is gone, disconnected, archived, or was paired again with a newer
// certificate, or renewed and the agent has since connected with the
// renewed one. Lookup errors count as revoked: refusing is the safe side.
func (s *Server) Revoked(serial *big.Int, serverID string) bool {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	srv, err := s.Store.Server(ctx, serverID)
	if err != nil {
		return true
	}
	return !accepts(srv, serial.String())
}

// accepts reports whether srv takes the agent certificate of serial
// (decimal): its current one, or the one it renewed until the agent has
// connected with the new; none once srv is archived or disconnected.
func accepts(srv *ferry.SourceServer, serial string) bool {
	if srv.Archived || srv.Lifecycle == ferry.LifecycleDisconnected {
		return false
	}
	return serial == srv.AgentCertSerial || serial == srv.AgentCertPrevSerial
}

// TLSConfig is the data plane's TLS configuration: TLS 1.3 only, a client
// certificate from Ferry's CA required, checked against the store.
func (s *Server) TLSConfig() *tls.Config {
	s.CA.IsRevoked = s.Revoked
	return s.CA.ServerTLSConfig(s.Cert, true)
}

// acceptMaxDelay caps the back-off after a failed accept.
const acceptMaxDelay = time.Second

// Serve accepts agents on ln until ctx ends, then closes every connection.
// A failed accept (out of file descriptors, say) is retried with back-off;
// only a listener closed under it ends Serve with an error.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	tln := tls.NewListener(ln, s.TLSConfig())
	go func() {
		<-ctx.Done()
		tln.Close()
		s.mu.Lock()
		for c := range s.conns {
			c.Close()
		}
		s.mu.Unlock()
	}()
	var wg sync.WaitGroup
	defer wg.Wait()
	var delay time.Duration
	for {
		c, err := tln.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			if errors.Is(err, net.ErrClosed) {
				return fmt.Errorf("data plane accept: %w", err)
			}
			// Out of descriptors (EMFILE, ENFILE) or memory is a moment
			// of a busy server, not a reason to drop every connected
			// agent: back off as net/http does and accept again.
			if delay == 0 {
				delay = 5 * time.Millisecond
				s.log().Warn("data plane accept failed; retrying with back-off", "err", err)
			} else {
				delay = min(2*delay, acceptMaxDelay)
			}
			select {
			case <-ctx.Done():
				return nil
			case <-time.After(delay):
			}
			continue
		}
		if delay != 0 {
			s.log().Info("data plane accepting again", "after", delay)
			delay = 0
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			s.handle(ctx, c.(*tls.Conn))
		}()
	}
}

func (s *Server) log() *slog.Logger {
	if s.Logger != nil {
		return s.Logger
	}
	return slog.Default()
}

func (s *Server) track(c net.Conn, on bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.conns == nil {
		s.conns = map[net.Conn]struct{}{}
	}
	if on {
		s.conns[c] = struct{}{}
	} else {
		delete(s.conns, c)
	}
}

func (s *Server) handle(ctx context.Context, c *tls.Conn) {
	s.track(c, true)
	defer s.track(c, false)
	defer c.Close()
	hctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	err := c.HandshakeContext(hctx)
	cancel()
	if err != nil {
		s.log().Info("data plane handshake refused", "remote", c.RemoteAddr().String(), "err", err)
		return
	}
	leaf := c.ConnectionState().PeerCertificates[0]
	id, err := pki.ServerIDFromCert(leaf)
	if err != nil {
		return
	}
	serial := leaf.SerialNumber.String()
	// Recorded beside the session, not before it: with thousands of
	// agents connecting, the metadata store's writer queue must not delay
	// HELLO_ACK.
	go func() {
		if err := s.markConnected(ctx, id, serial); err != nil && ctx.Err() == nil {
			s.log().Warn("record agent connection", "server", id, "err", err)
		}
	}()
	s.log().Info("agent connected", "server", id, "remote", c.RemoteAddr().String())
	if err := s.replicate(ctx, c, id, serial); err != nil {
		s.log().Warn("agent session ended", "server", id, "err", err)
		return
	}
	s.log().Info("agent disconnected", "server", id)
}

// markConnected records that server id's agent connected with the
// certificate of serial: a renewed certificate in use retires the one it
// replaced.
func (s *Server) markConnected(ctx context.Context, id, serial string) error {
	now := s.now()
	_, err := s.Store.UpdateServer(ctx, id, func(srv *ferry.SourceServer) error {
		srv.LastSeenAt = now
		if srv.AgentCertPrevSerial != "" && serial == srv.AgentCertSerial {
			srv.AgentCertPrevSerial = ""
		}
		for i := range srv.Replication.Steps {
			switch srv.Replication.Steps[i].Step {
			case ferry.StepPairReplicationServerWithAgent, ferry.StepConnectAgentToReplicationServer:
				srv.Replication.Steps[i].Status = ferry.StepSucceeded
			}
		}
		return nil
	})
	return err
}
