package agent

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/time/rate"

	"github.com/ferrymigrate/ferry/protocol"
	"github.com/ferrymigrate/ferry/track"
)

// ErrDisconnected is returned by Replicate when the server disconnected
// this agent from the service; its state directory has been removed.
var ErrDisconnected = errors.New("disconnected from the service")

// Options configure Replicate.
type Options struct {
	// StateDir is the paired agent's state directory.
	StateDir string
	// Devices are the block devices to replicate (e.g. /dev/sdb).
	Devices []string
	// Tracker reports writes to Devices; nil means no change tracking (the
	// agent copies the disks and then only rescans after reconnecting).
	Tracker track.Tracker
	// Logger receives progress and errors; nil means slog.Default().
	Logger *slog.Logger
	// ChunkSize is the largest extent sent in one WRITE; 0 means 1 MiB.
	ChunkSize int
	// Readers is the number of parallel initial-sync readers; 0 means 4.
	Readers int
	// SyncCodec compresses the initial sync; 0 means protocol.S2 when the
	// server's revision decodes it, else protocol.Zstd. S2 costs the
	// agent (and the server) a half to a third of zstd's CPU for about a
	// quarter more bytes: zstd is the better choice only on a link slower
	// than the agent's zstd (about 250 MB/s a reader on text).
	SyncCodec protocol.Codec
	// Dial opens the data-plane connection; nil means Connect(StateDir).
	Dial func(ctx context.Context) (net.Conn, error)
	// ServerID is the source server id for HELLO; "" reads it from the
	// state directory.
	ServerID string
	// GrowPoll is how often the agent checks whether a device grew; 0
	// means 3 s.
	GrowPoll time.Duration
	// MaxDirtyRanges bounds the dirty-extent map of each device; 0 means
	// 65536 ranges.
	MaxDirtyRanges int
	// BacklogBytes is the dirty amount above which a disk reports BACKLOG;
	// 0 means 64 MiB.
	BacklogBytes int64
}

// ParseSyncCodec reads an operator's choice of initial-sync compression:
// "auto" (or "") is 0, the Options default; "s2" and "zstd" name a codec.
func ParseSyncCodec(s string) (protocol.Codec, error) {
	switch s {
	case "", "auto":
		return 0, nil
	case "s2":
		return protocol.S2, nil
	case "zstd":
		return protocol.Zstd, nil
	}
	return 0, fmt.Errorf("sync compression %q: want auto, s2 or zstd", s)
}

// syncCodec is the initial sync's codec: the one asked for, or S2 when
// the server's revision decodes it; never S2 to a server that does not.
func syncCodec(asked protocol.Codec, revision uint16) protocol.Codec {
	if asked == 0 || protocol.BulkCodec(revision) != protocol.S2 {
		return protocol.BulkCodec(revision)
	}
	return asked
}

// Timing of the agent's side of the protocol.
const (
	agentReadTimeout = 30 * time.Second
	statsEvery       = time.Second
	barrierEvery     = time.Second
	maxBackoff       = 30 * time.Second
	growPoll         = 3 * time.Second
	ackSaveEvery     = 5 * time.Second
	rescanRange      = 16 << 20
	rescanBlock      = 32 << 10
)

// flight kinds.
const (
	kindSync = iota + 1
	kindDirty
	kindControl
)

// flight is a record sent and not yet acknowledged.
type flight struct {
	seq      uint64
	off, len int64
	kind     int
	bytes    int64
}

// rdisk is one replicated device and its progress; fields are guarded by
// engine.mu unless noted.
type rdisk struct {
	idx  int
	dev  *device // read-only after start
	size int64   // device size, aligned down to bs once known
	bs   int64   // replica block size (from HELLO_ACK; 4096 before)

	prog       diskProgress // durable progress (acknowledged)
	dirty      *extentMap
	rescan     *extentMap
	dispatched int64 // initial sync: reads issued up to here
	sent       int64 // initial sync: chunks sent up to here
	nextSeq    uint64
	inflight   []flight
	syncSeq    uint64 // seq of the snapshot that closed the initial sync
	rescanned  int64
	lastSent   uint64 // last seq sent (data)
	barrierSeq uint64 // last barrier sent
	barrierAt  time.Time
	// flushAt is when the server asked for a drained point (FLUSH); zero
	// when none is wanted. The barrier that answers it goes once the
	// dirty and rescan maps are empty.
	flushAt time.Time
	// flushApp is set while the answer to flushAt should be an
	// app-consistent barrier (the file systems were frozen for it).
	flushApp bool
	// flushID is the ID of the FLUSH that flushAt answers.
	flushID uint32
	// flushReady is set once every write completed before the FLUSH is
	// in the dirty or rescan map (the tracker vouched for it, or a hash
	// comparison was queued): the answering barrier may go once they are
	// empty.
	flushReady bool
	// appSeq is the seq of the app-consistent barrier whose durable
	// acknowledgement thaws the file systems; 0 when none.
	appSeq uint64
	sweep  int64 // dirty-map elevator position
	// replicaSize is the replica's size from HELLO_ACK; the agent sends
	// RESIZE when the device is larger.
	replicaSize int64
}

func (d *rdisk) phase(backlog int64) protocol.Phase {
	switch {
	case !d.prog.SyncDone:
		return protocol.PhaseInitialSync
	case d.rescan.Bytes() > 0:
		return protocol.PhaseRescan
	case d.dirty.Bytes() > backlog || d.dirty.coarsened:
		return protocol.PhaseBacklog
	}
	return protocol.PhaseContinuous
}

// engine is the agent's replication state across connections.
type engine struct {
	o       Options
	log     *slog.Logger
	disks   []*rdisk
	byPath  map[string]*rdisk
	limiter *rate.Limiter
	chunk   int64
	// timers say where the sender spends its time (STATS timing), and
	// sendTiming whether the server's revision decodes it.
	timers     senderTimers
	sendTiming atomic.Bool
	// syncCodec is the initial sync's codec for the current session.
	syncCodec atomic.Uint32
	// renew renews the agent's certificate; nil when the caller dials
	// with an identity of its own.
	renew *Renewer

	mu       sync.Mutex
	cond     *sync.Cond
	settings protocol.Settings // guarded by mu
	credit   int64             // guarded by mu
	// statsNow asks the stats loop for a STATS now rather than at its
	// next tick: the server moves a server to READY_FOR_TEST on the STATS
	// that says the initial sync is done.
	statsNow  chan struct{}
	inflightB int64 // guarded by mu
	dirtySave bool  // progress changed since saved; guarded by mu
	// dirtyAck says only acknowledged sequence numbers changed since the
	// last save, and lastSave when that was; guarded by mu. Those are
	// saved at most every ackSaveEvery: an agent that restarts compares
	// every replicated block by hash anyway, so a stale AckedSeq loses
	// nothing, and saving it with every ack cost a file create and an
	// fsync 20 times a second during continuous replication.
	dirtyAck bool
	lastSave time.Time
	// saveMu serialises progress saves with the removal of the state
	// directory on disconnect: a save racing RemoveAll would put a file
	// back into the directory being removed (and make it fail).
	saveMu sync.Mutex
	// stateRemoved stops every later save; guarded by saveMu.
	stateRemoved bool
	// fz holds the file systems frozen for an app-consistent point until
	// every disk's barrier is decided; guarded by mu.
	fz *freezer
	// thawing holds the file systems frozen once every barrier is decided,
	// until the server acknowledges them durable; guarded by mu.
	thawing *freezer
	// applied counts the tracker's batches (calls of Next that returned
	// some) applied to the dirty maps; guarded by mu. A FLUSH waits for
	// the count a track.Syncer names.
	applied uint64
	// ctx ends with Replicate; set before any goroutine starts.
	ctx context.Context
}

// Replicate replicates Devices to the server the agent paired with until
// ctx ends: initial sync, then continuous replication of the writes the
// tracker reports, with rescans by hash comparison where tracking has a
// gap. It reconnects with backoff after any network error and resumes from
// the server's durable sequence numbers. It returns nil when ctx ends, or
// ErrDisconnected when the server disconnected the agent.
func Replicate(ctx context.Context, o Options) error {
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.ChunkSize <= 0 {
		o.ChunkSize = 1 << 20
	}
	o.ChunkSize = min(o.ChunkSize, protocol.MaxPayload)
	if o.Readers <= 0 {
		o.Readers = 4
	}
	if o.MaxDirtyRanges <= 0 {
		o.MaxDirtyRanges = 65536
	}
	if o.GrowPoll <= 0 {
		o.GrowPoll = growPoll
	}
	if o.BacklogBytes <= 0 {
		o.BacklogBytes = 64 << 20
	}
	if o.ServerID == "" {
		st, err := LoadState(o.StateDir)
		if err != nil {
			return err
		}
		o.ServerID = st.SourceServerID
	}
	// An agent dialing with its state directory's identity renews it.
	renewable := o.Dial == nil
	if o.Dial == nil {
		o.Dial = func(ctx context.Context) (net.Conn, error) { return Connect(ctx, o.StateDir) }
	}
	if len(o.Devices) == 0 {
		return errors.New("replicate: no devices")
	}
	e := &engine{o: o, log: o.Logger, byPath: map[string]*rdisk{}, chunk: int64(o.ChunkSize),
		limiter: rate.NewLimiter(rate.Inf, protocol.MaxFrame), statsNow: make(chan struct{}, 1)}
	e.cond = sync.NewCond(&e.mu)
	if renewable {
		e.renew = NewRenewer(o.StateDir)
	}
	progress, err := loadProgress(o.StateDir)
	if err != nil {
		return err
	}
	for i, p := range o.Devices {
		dev, err := openDevice(p)
		if err != nil {
			return fmt.Errorf("replicate %s: %w", p, err)
		}
		defer dev.close()
		size, err := dev.size()
		if err != nil {
			return err
		}
		d := &rdisk{idx: i, dev: dev, size: size, bs: 4096, prog: progress[dev.name],
			dirty: newExtentMap(int64(dev.lbs), o.MaxDirtyRanges), rescan: newExtentMap(int64(dev.lbs), 0)}
		// Writes made while the agent was not running were not tracked:
		// whatever was already replicated is compared by hash.
		switch {
		case d.prog.SyncDone:
			d.rescan.Add(0, size, time.Now())
		case d.prog.SyncCursor > 0:
			d.rescan.Add(0, d.prog.SyncCursor, time.Now())
		}
		d.sent, d.dispatched = d.prog.SyncCursor, d.prog.SyncCursor
		e.disks = append(e.disks, d)
		e.byPath[p] = d
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	e.ctx = ctx
	go func() { <-ctx.Done(); e.mu.Lock(); e.cond.Broadcast(); e.mu.Unlock() }()
	if o.Tracker != nil {
		go e.consume(ctx)
	} else {
		e.log.Warn("no change tracker: writes after the initial sync are found only by rescans")
	}
	go e.watchSizes(ctx)
	defer e.save(true)
	// Progress is saved often: what the server acknowledged but we did not
	// save is sent again after a crash.
	go func() {
		t := time.NewTicker(50 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				e.save(false)
			}
		}
	}()

	backoff := time.Second
	for ctx.Err() == nil {
		start := time.Now()
		err := e.session(ctx)
		if errors.Is(err, ErrDisconnected) {
			e.log.Warn("the server disconnected this agent from the service; removing its state", "dir", o.StateDir)
			e.saveMu.Lock()
			e.stateRemoved = true
			rerr := os.RemoveAll(o.StateDir)
			e.saveMu.Unlock()
			if rerr != nil {
				return fmt.Errorf("%w; removing state: %w", err, rerr)
			}
			return err
		}
		if ctx.Err() != nil {
			return nil
		}
		if time.Since(start) > 10*time.Second {
			backoff = time.Second
		}
		e.log.Warn("replication connection ended; reconnecting", "err", err, "in", backoff)
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(backoff):
		}
		backoff = min(backoff*2, maxBackoff)
	}
	return nil
}

// watchSizes notices devices that grew (every GrowPoll) and replicates
// them at their new size: the send loop sends RESIZE, and the new tail is
// dirty. A disk still in its initial sync is grown once the sync is done.
func (e *engine) watchSizes(ctx context.Context) {
	t := time.NewTicker(e.o.GrowPoll)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		for _, d := range e.disks {
			n, err := d.dev.size()
			if err != nil {
				e.log.Warn("check device size", "disk", d.dev.name, "err", err)
				continue
			}
			e.mu.Lock()
			e.growLocked(d, n)
			e.mu.Unlock()
		}
	}
}

// growLocked records that d is now n bytes long if that is larger.
func (e *engine) growLocked(d *rdisk, n int64) {
	n -= n % d.bs
	if n <= d.size || !d.prog.SyncDone {
		return
	}
	e.log.Info("disk grew; replicating it at its new size", "disk", d.dev.name, "from", d.size, "to", n)
	d.dirty.Add(d.size, n-d.size, time.Now())
	d.size, d.prog.Size = n, n
	e.dirtySave = true
	e.cond.Broadcast()
}

// consume moves the tracker's batches into the dirty maps.
func (e *engine) consume(ctx context.Context) {
	for {
		batches, err := e.o.Tracker.Next(ctx)
		if ctx.Err() != nil {
			return
		}
		if err != nil {
			e.log.Warn("change tracker failed; rescanning every disk", "tracker", e.o.Tracker.Kind(), "err", err)
			e.mu.Lock()
			for _, d := range e.disks {
				d.rescan.Add(0, d.size, time.Now())
			}
			e.cond.Broadcast()
			e.mu.Unlock()
			select {
			case <-ctx.Done():
				return
			case <-time.After(time.Second):
			}
			continue
		}
		now := time.Now()
		e.mu.Lock()
		for _, b := range batches {
			d := e.byPath[b.Device]
			if d == nil {
				continue
			}
			if b.Lost {
				e.log.Warn("the change tracker may have missed writes; comparing the disk with the replica by hashes", "disk", d.dev.name, "tracker", e.o.Tracker.Kind())
				d.rescan.Add(0, d.size, now)
			}
			for _, x := range b.Extents {
				// During the initial sync, ranges not yet read will be
				// read with this write in them.
				end := x.Offset + x.Length
				if !d.prog.SyncDone {
					end = min(end, d.dispatched)
				}
				end = min(end, d.size)
				if end > x.Offset {
					d.dirty.Add(x.Offset, end-x.Offset, now)
				}
			}
		}
		e.applied++
		e.cond.Broadcast()
		e.mu.Unlock()
	}
}

// save writes the progress when it changed; acknowledged sequence numbers
// alone only every ackSaveEvery, unless final.
func (e *engine) save(final bool) {
	e.saveMu.Lock()
	defer e.saveMu.Unlock()
	if e.stateRemoved {
		return
	}
	e.mu.Lock()
	if !e.dirtySave && !(e.dirtyAck && (final || time.Since(e.lastSave) >= ackSaveEvery)) {
		e.mu.Unlock()
		return
	}
	m := map[string]diskProgress{}
	for _, d := range e.disks {
		m[d.dev.name] = d.prog
	}
	e.dirtySave, e.dirtyAck, e.lastSave = false, false, time.Now()
	e.mu.Unlock()
	if err := saveProgress(e.o.StateDir, m); err != nil {
		e.log.Warn("save replication progress", "err", err)
	}
}

// conn is one data-plane connection.
type conn struct {
	c    net.Conn
	wmu  sync.Mutex
	bw   *bufio.Writer
	wbuf []byte
}

// send writes m and flushes it, with everything queued before it.
func (c *conn) send(m protocol.Message) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if err := c.writeLocked(m); err != nil {
		return err
	}
	if err := c.bw.Flush(); err != nil {
		return fmt.Errorf("send %s: %w", m.Type(), err)
	}
	return nil
}

// queue writes m into the connection's buffer without flushing it: the
// send loop queues data records while it has more to send and flushes when
// it runs out of work or must wait (credit, throttle), so that a backlog of
// small writes leaves in full TLS records instead of one record and one
// system call per 4 KiB write.
func (c *conn) queue(m protocol.Message) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	return c.writeLocked(m)
}

// buffered reports whether records are queued.
func (c *conn) buffered() bool {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	return c.bw.Buffered() > 0
}

// flush sends whatever is queued.
func (c *conn) flush() error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if c.bw.Buffered() == 0 {
		return nil
	}
	_ = c.c.SetWriteDeadline(time.Now().Add(agentReadTimeout))
	if err := c.bw.Flush(); err != nil {
		return fmt.Errorf("send: %w", err)
	}
	return nil
}

func (c *conn) writeLocked(m protocol.Message) error {
	_ = c.c.SetWriteDeadline(time.Now().Add(agentReadTimeout))
	var err error
	if c.wbuf, err = protocol.WriteFrame(c.bw, c.wbuf, m); err != nil {
		return fmt.Errorf("send %s: %w", m.Type(), err)
	}
	return nil
}

// session runs one connection until it fails or ctx ends.
func (e *engine) session(ctx context.Context) error {
	nc, err := e.o.Dial(ctx)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	go func() { <-ctx.Done(); nc.Close() }()
	c := &conn{c: nc, bw: bufio.NewWriterSize(nc, 256<<10)}
	r := protocol.NewReader(nc)

	hello := &protocol.Hello{ProtocolVersion: protocol.Version, AgentVersion: Version, ServerID: e.o.ServerID, Tracker: "none"}
	if e.o.Tracker != nil {
		hello.Tracker = e.o.Tracker.Kind()
	}
	e.mu.Lock()
	for _, d := range e.disks {
		hello.Disks = append(hello.Disks, protocol.HelloDisk{Name: d.dev.name, Size: d.size, LogicalBlockSize: d.dev.lbs,
			AckedSeq: d.prog.AckedSeq, SyncCursor: d.prog.SyncCursor, SyncDone: d.prog.SyncDone})
	}
	e.mu.Unlock()
	if err := c.send(hello); err != nil {
		return err
	}
	_ = nc.SetReadDeadline(time.Now().Add(agentReadTimeout))
	m, err := r.Read()
	if err != nil {
		return fmt.Errorf("read HELLO_ACK: %w", err)
	}
	ack, ok := m.(*protocol.HelloAck)
	if !ok {
		if pe, ok := m.(*protocol.Error); ok {
			return fmt.Errorf("server refused HELLO: %w", pe)
		}
		return fmt.Errorf("server answered HELLO with %s", m.Type())
	}
	if len(ack.Disks) != len(e.disks) {
		return fmt.Errorf("HELLO_ACK has %d disks, we sent %d", len(ack.Disks), len(e.disks))
	}
	e.resume(ack)
	e.sendTiming.Store(ack.ProtocolVersion >= protocol.RevisionStatsTiming)
	e.syncCodec.Store(uint32(syncCodec(e.o.SyncCodec, ack.ProtocolVersion)))
	e.log.Info("replication session started", "server", nc.RemoteAddr().String())

	hashReplies := make(chan *protocol.HashReply, maxHashPending)
	readErr := make(chan error, 1)
	go func() { readErr <- e.readLoop(ctx, r, nc, hashReplies) }()
	go func() {
		err := <-readErr
		cancel(err)
		e.mu.Lock()
		e.cond.Broadcast()
		e.mu.Unlock()
	}()
	go e.statsLoop(ctx, c)
	if e.renew != nil && ack.ProtocolVersion >= protocol.RevisionRenew {
		go e.renew.Run(ctx.Done(), c.send, e.log)
	}
	err = e.sendLoop(ctx, c, hashReplies)
	cancel(err)
	if cause := context.Cause(ctx); cause != nil && !errors.Is(cause, context.Canceled) {
		err = cause
	}
	e.disconnected()
	return err
}

// resume reconciles what was in flight with the server's durable sequence
// numbers after a (re)connection.
func (e *engine) resume(ack *protocol.HelloAck) {
	e.mu.Lock()
	defer e.mu.Unlock()
	for i, d := range e.disks {
		a := ack.Disks[i]
		d.bs = max(int64(a.BlockSize), 512)
		d.size -= d.size % d.bs
		// The server writes whole replica blocks, which may be larger than
		// the device's logical blocks the tracker reports.
		d.dirty.SetAlign(d.bs)
		d.rescan.SetAlign(d.bs)
		// What the server made durable counts as acknowledged; the rest is
		// sent again.
		e.ackLocked(d, a.DurableSeq)
		for _, f := range d.inflight {
			if f.kind == kindDirty {
				d.dirty.Add(f.off, f.len, time.Now())
			}
		}
		d.inflight = nil
		d.sent = d.prog.SyncCursor
		if d.prog.SyncDone {
			d.sent = d.size
		} else {
			d.syncSeq = 0
		}
		d.dispatched = max(d.dispatched, d.sent)
		d.nextSeq = max(a.DurableSeq, d.prog.AckedSeq) + 1
		if a.Rescan && !d.prog.SyncDone && d.prog.SyncCursor == 0 && a.DurableSeq > 0 {
			// The replica already holds this disk (the connector
			// replicated it): adopt it and compare hashes over the whole
			// disk instead of copying it again.
			e.log.Info("replica already holds this disk; rescanning instead of an initial sync", "disk", d.dev.name)
			d.prog.SyncDone, d.prog.SyncCursor = true, d.size
			d.sent, d.dispatched = d.size, d.size
			e.dirtySave = true
		}
		if a.Rescan {
			end := d.size
			if !d.prog.SyncDone {
				end = d.prog.SyncCursor
			}
			d.rescan.Add(0, end, time.Now())
		}
		d.replicaSize = a.ReplicaSize
		if a.ReplicaSize < d.size && d.prog.SyncDone {
			// The disk grew since the initial sync: the new part is dirty.
			d.dirty.Add(a.ReplicaSize, d.size-a.ReplicaSize, time.Now())
		}
		d.prog.Size = d.size
		d.barrierSeq = 0
		// A FLUSH belongs to the session that sent it: answering it on a
		// new connection could be taken for the answer to a newer one.
		d.flushAt, d.flushApp, d.flushID, d.flushReady = time.Time{}, false, 0, false
	}
	e.inflightB = 0
	e.credit = protocol.MaxFrame
}

// disconnected wakes everything waiting on the connection; what is still
// unacknowledged is settled by the next resume.
func (e *engine) disconnected() {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.dirtySave = true
	// Nothing more will be acknowledged on this connection.
	e.maybeThawLocked(true)
	e.cond.Broadcast()
}

// ackLocked applies a cumulative acknowledgement.
func (e *engine) ackLocked(d *rdisk, seq uint64) {
	n := 0
	for _, f := range d.inflight {
		if f.seq > seq {
			break
		}
		if f.kind == kindSync && f.off+f.len > d.prog.SyncCursor {
			// Where a restarted agent resumes its initial sync: saved
			// at once (every 50 ms), unlike the sequence number alone.
			d.prog.SyncCursor = f.off + f.len
			e.dirtySave = true
		}
		e.inflightB -= f.bytes
		n++
	}
	d.inflight = d.inflight[n:]
	if seq > d.prog.AckedSeq {
		d.prog.AckedSeq = seq
		e.dirtyAck = true
	}
	if d.syncSeq != 0 && seq >= d.syncSeq && !d.prog.SyncDone {
		d.prog.SyncDone = true
		d.prog.SyncCursor = d.size
		e.dirtySave = true
		e.log.Info("initial sync complete", "disk", d.dev.name)
		select {
		case e.statsNow <- struct{}{}:
		default:
		}
		// growLocked ignored growth during the sync, a FLUSH's size check
		// too: look now, before any barrier (one answering that FLUSH
		// included) can be chosen, or a drained point would miss the tail
		// the source grew before it.
		if n, err := d.dev.size(); err == nil {
			e.growLocked(d, n)
		}
	}
	e.maybeThawLocked(false)
	e.cond.Broadcast()
}

func (e *engine) readLoop(ctx context.Context, r *protocol.Reader, nc net.Conn, hashes chan<- *protocol.HashReply) error {
	for {
		_ = nc.SetReadDeadline(time.Now().Add(agentReadTimeout))
		m, err := r.Read()
		if err != nil {
			return fmt.Errorf("read from server: %w", err)
		}
		switch m := m.(type) {
		case *protocol.Ack:
			if int(m.Disk) >= len(e.disks) {
				return fmt.Errorf("ACK for disk %d of %d", m.Disk, len(e.disks))
			}
			e.mu.Lock()
			e.ackLocked(e.disks[m.Disk], m.Seq)
			e.mu.Unlock()
		case *protocol.Credit:
			e.mu.Lock()
			e.credit = m.Bytes
			e.cond.Broadcast()
			e.mu.Unlock()
		case *protocol.Settings:
			if m.Disconnect {
				return ErrDisconnected
			}
			lim := rate.Inf
			if m.BandwidthBytesPerSec > 0 {
				lim = rate.Limit(m.BandwidthBytesPerSec)
			}
			e.limiter.SetLimit(lim)
			e.mu.Lock()
			if e.settings != *m {
				e.log.Info("replication settings", "bandwidth", m.BandwidthBytesPerSec, "desired", m.Desired)
			}
			e.settings = *m
			e.cond.Broadcast()
			e.mu.Unlock()
		case *protocol.Flush:
			if m.App() {
				go e.appFlush(m.ID)
			} else {
				e.flush(m.ID, false)
			}
		case *protocol.HashReply:
			r := *m
			r.Hashes = append([]byte(nil), m.Hashes...)
			select {
			case hashes <- &r:
			case <-ctx.Done():
				return nil
			}
		case *protocol.Heartbeat:
		case *protocol.Renewed:
			if e.renew == nil {
				return errors.New("RENEWED from the server, which no RENEW asked for")
			}
			e.renew.Install(m, e.log)
		case *protocol.Error:
			return fmt.Errorf("server: %w", m)
		default:
			return fmt.Errorf("unexpected %s from the server", m.Type())
		}
	}
}

func (e *engine) statsLoop(ctx context.Context, c *conn) {
	t := time.NewTicker(statsEvery)
	defer t.Stop()
	lastBeat := time.Now()
	for {
		st := e.stats()
		if err := c.send(st); err != nil {
			return
		}
		if time.Since(lastBeat) >= protocol.HeartbeatEvery {
			if err := c.send(&protocol.Heartbeat{UnixNano: time.Now().UnixNano()}); err != nil {
				return
			}
			lastBeat = time.Now()
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-e.statsNow:
		}
	}
}

func (e *engine) stats() *protocol.Stats {
	e.mu.Lock()
	defer e.mu.Unlock()
	now := time.Now()
	st := &protocol.Stats{SentAtUnixNano: now.UnixNano(), Timing: e.timing()}
	var oldest time.Time
	for _, d := range e.disks {
		ds := protocol.DiskStats{Phase: d.phase(e.o.BacklogBytes), ReplicatedBytes: d.prog.SyncCursor,
			RescannedBytes: d.rescanned, BackloggedBytes: d.dirty.Bytes(), SyncDone: d.prog.SyncDone, SyncSeq: d.syncSeq}
		if d.prog.SyncDone {
			ds.ReplicatedBytes = d.size
		}
		st.Disks = append(st.Disks, ds)
		if o := d.dirty.oldest; !o.IsZero() && (oldest.IsZero() || o.Before(oldest)) {
			oldest = o
		}
	}
	if !oldest.IsZero() {
		st.OldestUnsentUnixNano = oldest.UnixNano()
	}
	return st
}

// flushSyncTimeout bounds how long a FLUSH waits for the tracker to
// vouch for the present before the agent falls back to comparing every
// disk with the replica by hashes.
const flushSyncTimeout = 30 * time.Second

// flush answers the server's FLUSH: every disk sends a barrier once every
// write completed before the FLUSH has been sent. A tracker that
// implements track.Syncer (eBPF) says when its batches hold every such
// write; with any other tracker, or when the sync fails, each disk is
// compared with the replica by hashes instead. With app set, that barrier
// is app-consistent if the file systems (frozen by appFlush) are still
// frozen when it is decided.
func (e *engine) flush(id uint32, app bool) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.flushLocked(id, app)
}

func (e *engine) flushLocked(id uint32, app bool) {
	now := time.Now()
	syncer, precise := e.o.Tracker.(track.Syncer)
	for _, d := range e.disks {
		// A disk grown since the last size poll is grown in this point
		// too: a cutover must not launch a disk smaller than its source.
		if n, err := d.dev.size(); err == nil {
			e.growLocked(d, n)
		}
		if !precise && d.prog.SyncDone {
			d.rescan.Add(0, d.size, now)
		}
		d.flushAt = now
		d.flushApp = app
		d.flushID = id
		d.flushReady = !precise
	}
	e.log.Info("flush requested: sending a drained consistency point", "hash_compare", !precise, "app_consistent", app)
	if precise {
		go e.syncFlush(syncer, id)
	}
	e.cond.Broadcast()
}

// syncFlush waits until the tracker's batches holding every write
// completed before FLUSH id are in the dirty maps, then lets the
// barriers answering it go. If the tracker cannot say, the disks are
// compared by hashes: slower, never a gap.
func (e *engine) syncFlush(s track.Syncer, id uint32) {
	ctx, cancel := context.WithTimeout(e.ctx, flushSyncTimeout)
	defer cancel()
	n, err := s.Sync(ctx)
	e.mu.Lock()
	defer e.mu.Unlock()
	if err == nil {
		for e.applied < n && e.ctx.Err() == nil {
			e.cond.Wait()
		}
	}
	if e.ctx.Err() != nil {
		return
	}
	now := time.Now()
	for _, d := range e.disks {
		if d.flushID != id || d.flushAt.IsZero() {
			continue // answered differently, or a newer FLUSH took over
		}
		if err != nil && d.prog.SyncDone {
			d.rescan.Add(0, d.size, now)
		}
		d.flushReady = true
	}
	if err != nil {
		e.log.Warn("the change tracker could not vouch for the drained point; comparing every disk by hashes", "err", err)
	}
	e.cond.Broadcast()
}

// appFlush answers a FLUSH that asks for an app-consistent point: it
// freezes every file system mounted from the replicated disks (at most
// MaxFreeze), then drains as flush does; the send loop sends each disk's
// barrier as app-consistent while they are frozen and thaws them after
// the last one. When nothing can be frozen the point is crash-consistent
// and the server reports that it could not get an app-consistent one.
func (e *engine) appFlush(id uint32) {
	var mounts []string
	for _, d := range e.disks {
		nums, err := devNums(d.dev.path)
		if err == nil {
			var m []string
			m, err = mountsOn("/proc/self/mountinfo", nums)
			mounts = append(mounts, m...)
		}
		if err != nil {
			e.log.Warn("app-consistent point: cannot find the file systems on a disk; sending a crash-consistent one", "disk", d.dev.name, "err", err)
			e.flush(id, false)
			return
		}
	}
	fz, err := freezeMounts(mounts, MaxFreeze)
	if err != nil {
		e.log.Warn("app-consistent point: freeze failed; sending a crash-consistent one", "err", err)
		e.flush(id, false)
		return
	}
	e.log.Info("file systems frozen for an app-consistent point", "mounts", mounts, "max", MaxFreeze)
	e.mu.Lock()
	old := e.fz
	e.fz = fz
	e.flushLocked(id, true)
	e.mu.Unlock()
	if old != nil {
		_ = old.Thaw()
	}
}

// barrierConsistencyLocked decides the consistency of the barrier at seq
// about to be sent for d. The send loop is the only sender, so with d's
// maps empty every write completed so far is in a record before this
// barrier; if the file systems are still frozen now, they were frozen from
// before those writes' last change until now. Once every disk's barrier is
// decided, the file systems stay frozen until the server acknowledges the
// barriers durable (so the point is safe before applications go on), or
// until MaxFreeze has passed.
func (e *engine) barrierConsistencyLocked(d *rdisk, seq uint64) uint8 {
	if !d.flushApp {
		return protocol.CrashConsistent
	}
	d.flushApp = false
	cons := protocol.CrashConsistent
	if fz := e.fz; fz != nil {
		fz.Lock()
		if fz.FrozenLocked() {
			cons = protocol.AppConsistent
			d.appSeq = seq
		}
		fz.Unlock()
	}
	if cons != protocol.AppConsistent {
		e.log.Warn("app-consistent point: the freeze ended before the disk drained; sending a crash-consistent barrier", "disk", d.dev.name, "max", MaxFreeze)
	}
	for _, o := range e.disks {
		if o.flushApp {
			return cons
		}
	}
	e.thawing, e.fz = e.fz, nil
	e.maybeThawLocked(false)
	return cons
}

// maybeThawLocked thaws the file systems held for app-consistent barriers
// once they are all acknowledged durable, or now when force is set.
func (e *engine) maybeThawLocked(force bool) {
	if e.fz != nil && force {
		e.thawLocked(e.fz)
		e.fz = nil
		for _, d := range e.disks {
			d.flushApp = false
		}
	}
	if e.thawing == nil {
		return
	}
	if !force {
		for _, d := range e.disks {
			if d.appSeq != 0 && d.prog.AckedSeq < d.appSeq {
				return
			}
		}
	}
	e.thawLocked(e.thawing)
	e.thawing = nil
	for _, d := range e.disks {
		d.appSeq = 0
	}
}

func (e *engine) thawLocked(fz *freezer) {
	if err := fz.Thaw(); err != nil {
		e.log.Warn("thaw file systems", "err", err)
	}
	e.log.Info("file systems thawed", "frozen_for", fz.Took().Round(time.Millisecond))
}
