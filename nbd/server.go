package nbd

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"time"
)

// Server serves read-only block devices over NBD. Set Lookup; the other
// fields are optional. A Server may serve several listeners at once; do not
// change its fields while it serves.
type Server struct {
	// Lookup returns the device exported under name ("" is the default
	// export clients ask for when given no name). For a name that is not
	// exported it returns an error wrapping ErrUnknownExport; clients see
	// NBD_REP_ERR_UNKNOWN for any error, and errors other than
	// ErrUnknownExport are also logged. The Server calls Lookup during each
	// handshake and never closes the devices it returns; one device may be
	// returned to many connections at once.
	Lookup func(name string) (Device, error)

	// List returns the export names for NBD_OPT_LIST. If List is nil,
	// listing is refused with NBD_REP_ERR_POLICY.
	List func() ([]string, error)

	// Logger receives connection events and client protocol errors. If nil,
	// nothing is logged.
	Logger *slog.Logger

	// TLSConfig, if set, enables NBD_OPT_STARTTLS and makes TLS mandatory:
	// no export is served before the client upgrades the connection.
	TLSConfig *tls.Config

	// HandshakeTimeout bounds the handshake of each connection (from
	// accept to the choice of an export). Zero means 30 seconds.
	HandshakeTimeout time.Duration
}

const (
	defaultHandshakeTimeout = 30 * time.Second
	// shutdownGrace is how long a shutting-down connection may take to
	// deliver its in-flight replies before it is closed.
	shutdownGrace = 5 * time.Second
)

// Serve accepts connections on l and serves each in its own goroutine until
// ctx is done or accepting fails. When ctx is done it closes l, stops reading
// requests, lets connections finish the replies in flight (for at most a
// few seconds), closes them and returns nil. Otherwise it returns the
// accept error, after the same shutdown of its connections. Serve always
// closes l.
func (s *Server) Serve(ctx context.Context, l net.Listener) error {
	// Deferred calls run last to first: close the listener, cancel the
	// connections, then wait for them.
	var wg sync.WaitGroup
	defer wg.Wait()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stop := context.AfterFunc(ctx, func() { l.Close() })
	defer stop()
	defer l.Close()

	var delay time.Duration
	for {
		nc, err := l.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			if errors.Is(err, net.ErrClosed) {
				return fmt.Errorf("nbd: accept: %w", err)
			}
			// Out of file descriptors and the like: back off, as
			// net/http does, rather than spin or give up.
			delay = min(max(2*delay, 5*time.Millisecond), time.Second)
			s.logger().Warn("nbd: accept failed; retrying", "err", err, "delay", delay)
			select {
			case <-time.After(delay):
			case <-ctx.Done():
				return nil
			}
			continue
		}
		delay = 0
		wg.Add(1)
		go func() {
			defer wg.Done()
			s.serveConn(ctx, nc)
		}()
	}
}

func (s *Server) logger() *slog.Logger {
	if s.Logger == nil {
		return slog.New(slog.DiscardHandler)
	}
	return s.Logger
}

func (s *Server) lookup(name string) (Device, error) {
	if s.Lookup == nil {
		return nil, fmt.Errorf("export %q: %w", name, ErrUnknownExport)
	}
	dev, err := s.Lookup(name)
	if err != nil {
		return nil, err
	}
	if dev == nil {
		return nil, fmt.Errorf("export %q: lookup returned no device: %w", name, ErrUnknownExport)
	}
	if size := dev.Size(); size < 0 {
		return nil, fmt.Errorf("export %q: negative size %d", name, size)
	}
	return dev, nil
}

// conn is one client connection.
type conn struct {
	srv *Server
	log *slog.Logger
	br  *bufio.Reader // reads from nc; used by one goroutine at a time

	mu       sync.Mutex
	nc       net.Conn // guarded by mu while the handshake may replace it
	stopping bool     // guarded by mu; set when the server shuts down

	wmu sync.Mutex // serializes writes of replies

	// Negotiated in the handshake, read-only in transmission.
	noZeroes   bool
	structured bool
	metaName   string // export named by NBD_OPT_SET_META_CONTEXT
	metaAlloc  bool   // base:allocation selected

	budget budget
}

func (s *Server) serveConn(ctx context.Context, nc net.Conn) {
	c := &conn{
		srv: s,
		log: s.logger().With("remote", nc.RemoteAddr().String()),
		nc:  nc,
		br:  bufio.NewReaderSize(nc, 64<<10),
	}
	c.budget.init()
	defer c.close()
	stop := context.AfterFunc(ctx, c.interrupt)
	defer stop()

	timeout := s.HandshakeTimeout
	if timeout <= 0 {
		timeout = defaultHandshakeTimeout
	}
	nc.SetDeadline(time.Now().Add(timeout))
	dev, name, err := c.handshake(ctx)
	if err != nil {
		if c.isStopping() {
			c.log.Debug("nbd: handshake stopped for shutdown", "err", err)
		} else {
			c.log.Warn("nbd: handshake failed", "err", err)
		}
		return
	}
	if dev == nil {
		c.log.Debug("nbd: client ended handshake")
		return
	}
	c.conn().SetDeadline(time.Time{})
	if ctx.Err() != nil {
		return
	}
	c.log.Debug("nbd: serving export", "export", name, "structured", c.structured, "base_allocation", c.metaAlloc)
	c.transmit(dev)
}

// conn returns the current connection (the TLS one after STARTTLS).
func (c *conn) conn() net.Conn {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.nc
}

// interrupt starts a graceful shutdown: reading stops at once, and the
// connection is closed after a grace period if replies are still stuck.
func (c *conn) interrupt() {
	c.mu.Lock()
	c.stopping = true
	nc := c.nc
	c.mu.Unlock()
	nc.SetReadDeadline(time.Now())
	time.AfterFunc(shutdownGrace, func() { nc.Close() })
}

func (c *conn) isStopping() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.stopping
}

func (c *conn) close() {
	c.conn().Close()
}

// write writes bufs as one reply; replies never interleave.
func (c *conn) write(bufs ...[]byte) error {
	nb := net.Buffers(bufs)
	c.wmu.Lock()
	defer c.wmu.Unlock()
	_, err := nb.WriteTo(c.conn())
	return err
}

// budget bounds the requests in flight on one connection and the bytes
// they hold.
type budget struct {
	mu    sync.Mutex
	cond  sync.Cond
	bytes int64 // guarded by mu: bytes still available
	slots int   // guarded by mu: requests that may still start
}

const (
	maxInFlightBytes    = 64 << 20
	maxInFlightRequests = 64
)

func (b *budget) init() {
	b.cond.L = &b.mu
	b.bytes = maxInFlightBytes
	b.slots = maxInFlightRequests
}

// acquire blocks until n bytes (n <= maxInFlightBytes) and a slot are free.
func (b *budget) acquire(n int64) {
	b.mu.Lock()
	for b.bytes < n || b.slots == 0 {
		b.cond.Wait()
	}
	b.bytes -= n
	b.slots--
	b.mu.Unlock()
}

func (b *budget) release(n int64) {
	b.mu.Lock()
	b.bytes += n
	b.slots++
	b.mu.Unlock()
	b.cond.Broadcast()
}
