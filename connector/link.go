package connector

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ferrymigrate/ferry/agent"
	"github.com/ferrymigrate/ferry/protocol"
)

// ErrDisconnected means the server disconnected this VM's source server
// from the service.
var ErrDisconnected = errors.New("disconnected from the service")

// ErrStopped means the operator stopped replication of the source server.
var ErrStopped = errors.New("replication stopped by the operator")

// Data-plane timing.
const (
	linkReadTimeout = 30 * time.Second
	linkStatsEvery  = time.Second
	linkHeartbeat   = 5 * time.Second
)

// link is one VM's data-plane session. It stays open between runs so the
// server sees the source server connected (and its lag growing) rather
// than DISCONNECTED.
type link struct {
	nc   net.Conn
	r    *protocol.Reader
	wmu  sync.Mutex
	bw   *bufio.Writer
	wbuf []byte // guarded by wmu

	hello *protocol.HelloAck
	// sent counts WRITE payload bytes (after compression) on this link.
	sent atomic.Int64

	mu        sync.Mutex
	cond      *sync.Cond
	acked     []uint64          // per disk; guarded by mu
	inflight  [][]flightBytes   // per disk; guarded by mu
	inflightB int64             // guarded by mu
	credit    int64             // guarded by mu
	settings  protocol.Settings // guarded by mu
	err       error             // why the link ended; guarded by mu
	hashes    map[uint32]chan *protocol.HashReply
	// hashID numbers HASH_REQUESTs: unique on the link, so a reply late
	// for a request given up on never answers a later one.
	hashID atomic.Uint32
	stats  func() *protocol.Stats
	// onFlush is told of every FLUSH (the server wants a drained point).
	onFlush func(*protocol.Flush)
	// renew renews the VM's certificate over the link; nil when the
	// server's revision cannot or the source has no identity of its own.
	renew *agent.Renewer
	log   *slog.Logger
	done  chan struct{}
}

type flightBytes struct {
	seq   uint64
	bytes int64
}

// openLink connects, sends HELLO and waits for HELLO_ACK. stats is called
// every second for the STATS message. renew, when not nil, renews the
// identity dial uses when it is due (and the server can).
func openLink(ctx context.Context, dial func(context.Context) (net.Conn, error), hello *protocol.Hello, stats func() *protocol.Stats, onFlush func(*protocol.Flush),
	renew *agent.Renewer, log *slog.Logger) (*link, error) {
	nc, err := dial(ctx)
	if err != nil {
		return nil, err
	}
	l := &link{nc: nc, r: protocol.NewReader(nc), bw: bufio.NewWriterSize(nc, 256<<10),
		credit: protocol.MaxFrame, hashes: map[uint32]chan *protocol.HashReply{}, stats: stats, onFlush: onFlush, done: make(chan struct{})}
	l.cond = sync.NewCond(&l.mu)
	if err := l.send(hello); err != nil {
		nc.Close()
		return nil, err
	}
	_ = nc.SetReadDeadline(time.Now().Add(linkReadTimeout))
	m, err := l.r.Read()
	if err != nil {
		nc.Close()
		return nil, fmt.Errorf("read HELLO_ACK: %w", err)
	}
	ack, ok := m.(*protocol.HelloAck)
	if !ok {
		nc.Close()
		if pe, ok := m.(*protocol.Error); ok {
			return nil, fmt.Errorf("server refused HELLO: %w", pe)
		}
		return nil, fmt.Errorf("server answered HELLO with %s", m.Type())
	}
	if len(ack.Disks) != len(hello.Disks) {
		nc.Close()
		return nil, fmt.Errorf("HELLO_ACK has %d disks, we sent %d", len(ack.Disks), len(hello.Disks))
	}
	l.hello = ack
	l.acked = make([]uint64, len(ack.Disks))
	l.inflight = make([][]flightBytes, len(ack.Disks))
	for i, d := range ack.Disks {
		l.acked[i] = d.DurableSeq
	}
	if renew != nil && ack.ProtocolVersion >= protocol.RevisionRenew {
		l.renew, l.log = renew, log
	}
	go l.readLoop()
	go l.statsLoop()
	if l.renew != nil {
		go l.renew.Run(l.done, l.send, log)
	}
	return l, nil
}

func (l *link) send(m protocol.Message) error {
	l.wmu.Lock()
	defer l.wmu.Unlock()
	_ = l.nc.SetWriteDeadline(time.Now().Add(linkReadTimeout))
	var err error
	if l.wbuf, err = protocol.WriteFrame(l.bw, l.wbuf, m); err != nil {
		return fmt.Errorf("send %s: %w", m.Type(), err)
	}
	if err := l.bw.Flush(); err != nil {
		return fmt.Errorf("send %s: %w", m.Type(), err)
	}
	return nil
}

// Err is why the link ended, or nil while it is up.
func (l *link) Err() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.err
}

// close ends the link.
func (l *link) close() {
	l.nc.Close()
	<-l.done
}

func (l *link) fail(err error) {
	l.mu.Lock()
	if l.err == nil {
		l.err = err
	}
	l.cond.Broadcast()
	for id, ch := range l.hashes {
		delete(l.hashes, id)
		close(ch)
	}
	l.mu.Unlock()
	l.nc.Close()
}

func (l *link) readLoop() {
	defer close(l.done)
	for {
		_ = l.nc.SetReadDeadline(time.Now().Add(linkReadTimeout))
		m, err := l.r.Read()
		if err != nil {
			l.fail(fmt.Errorf("read from server: %w", err))
			return
		}
		switch m := m.(type) {
		case *protocol.Ack:
			l.mu.Lock()
			if int(m.Disk) < len(l.acked) && m.Seq > l.acked[m.Disk] {
				l.acked[m.Disk] = m.Seq
				q := l.inflight[m.Disk]
				n := 0
				for n < len(q) && q[n].seq <= m.Seq {
					l.inflightB -= q[n].bytes
					n++
				}
				l.inflight[m.Disk] = q[n:]
			}
			l.cond.Broadcast()
			l.mu.Unlock()
		case *protocol.Credit:
			l.mu.Lock()
			l.credit = m.Bytes
			l.cond.Broadcast()
			l.mu.Unlock()
		case *protocol.Settings:
			if m.Disconnect {
				l.fail(ErrDisconnected)
				return
			}
			l.mu.Lock()
			l.settings = *m
			l.cond.Broadcast()
			l.mu.Unlock()
		case *protocol.HashReply:
			r := *m
			r.Hashes = append([]byte(nil), m.Hashes...)
			l.mu.Lock()
			ch := l.hashes[r.ID]
			delete(l.hashes, r.ID)
			l.mu.Unlock()
			if ch != nil {
				ch <- &r
			}
		case *protocol.Flush:
			// A snapshot-based source drains by taking a new point in
			// time: the scheduler starts a run now, which answers with a
			// BARRIER carrying the FLUSH's id on every disk.
			if l.onFlush != nil {
				f := *m
				l.onFlush(&f)
			}
		case *protocol.Heartbeat:
		case *protocol.Renewed:
			if l.renew == nil {
				l.fail(errors.New("RENEWED from the server, which no RENEW asked for"))
				return
			}
			l.renew.Install(m, l.log)
		case *protocol.Error:
			l.fail(fmt.Errorf("server: %w", m))
			return
		default:
			l.fail(fmt.Errorf("unexpected %s from the server", m.Type()))
			return
		}
	}
}

func (l *link) statsLoop() {
	t := time.NewTicker(linkStatsEvery)
	defer t.Stop()
	last := time.Time{}
	for {
		if err := l.send(l.stats()); err != nil {
			return
		}
		if time.Since(last) >= linkHeartbeat {
			if err := l.send(&protocol.Heartbeat{UnixNano: time.Now().UnixNano()}); err != nil {
				return
			}
			last = time.Now()
		}
		select {
		case <-l.done:
			return
		case <-t.C:
		}
	}
}

// waitToSend blocks until n payload bytes fit in the server's credit and
// the operator lets replication run.
func (l *link) waitToSend(ctx context.Context, n int64) error {
	stop := context.AfterFunc(ctx, func() { l.mu.Lock(); l.cond.Broadcast(); l.mu.Unlock() })
	defer stop()
	l.mu.Lock()
	defer l.mu.Unlock()
	for {
		switch {
		case l.err != nil:
			return l.err
		case ctx.Err() != nil:
			return ctx.Err()
		case l.settings.Desired == protocol.DesiredStop:
			return ErrStopped
		case l.settings.Desired == protocol.DesiredPause:
		case l.inflightB == 0 || l.inflightB+n <= l.credit:
			return nil
		}
		l.cond.Wait()
	}
}

// note records a record's payload bytes as in flight.
func (l *link) note(disk int, seq uint64, bytes int64) {
	l.mu.Lock()
	l.inflight[disk] = append(l.inflight[disk], flightBytes{seq, bytes})
	l.inflightB += bytes
	l.mu.Unlock()
}

// waitAck waits until disk's records up to seq are durable.
func (l *link) waitAck(ctx context.Context, disk int, seq uint64) error {
	stop := context.AfterFunc(ctx, func() { l.mu.Lock(); l.cond.Broadcast(); l.mu.Unlock() })
	defer stop()
	l.mu.Lock()
	defer l.mu.Unlock()
	for l.acked[disk] < seq {
		if l.err != nil {
			return l.err
		}
		if ctx.Err() != nil {
			return fmt.Errorf("wait for the server to acknowledge seq %d: %w", seq, ctx.Err())
		}
		l.cond.Wait()
	}
	return nil
}

func (l *link) ackedSeq(disk int) uint64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.acked[disk]
}

// nextHashID returns an ID for a new HASH_REQUEST.
func (l *link) nextHashID() uint32 { return l.hashID.Add(1) }

// hashRequest asks for the replica's block hashes and waits for them.
func (l *link) hashRequest(ctx context.Context, m *protocol.HashRequest) (*protocol.HashReply, error) {
	ch := make(chan *protocol.HashReply, 1)
	l.mu.Lock()
	if l.err != nil {
		l.mu.Unlock()
		return nil, l.err
	}
	l.hashes[m.ID] = ch
	l.mu.Unlock()
	if err := l.send(m); err != nil {
		return nil, err
	}
	select {
	case r, ok := <-ch:
		if !ok {
			return nil, l.Err()
		}
		return r, nil
	case <-ctx.Done():
		l.mu.Lock()
		delete(l.hashes, m.ID)
		l.mu.Unlock()
		return nil, ctx.Err()
	}
}
