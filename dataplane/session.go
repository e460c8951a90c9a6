package dataplane

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ferrymigrate/ferry"
	"github.com/ferrymigrate/ferry/protocol"
	"github.com/ferrymigrate/ferry/replica"
)

// Session timing defaults.
const (
	defaultStallAfter   = 60 * time.Second
	defaultPoll         = time.Second
	defaultSettingsPoll = 10 * time.Second
	readTimeout         = 30 * time.Second
	writeTimeout        = 30 * time.Second
	// ackQueue bounds the records read but not yet acknowledged. A
	// session's queue is allocated whole, so it is kept small (6 KiB): a
	// server holds thousands of sessions, and a group commit acknowledges
	// everything queued at once, so a longer queue would not add
	// throughput.
	ackQueue = 256
	// readBuffer and writeBuffer size each session's buffers. Frames
	// larger than the read buffer (initial-sync WRITEs) are read straight
	// into the frame body; what the server sends is small except
	// HASH_REPLY, which bypasses the buffer.
	readBuffer          = 16 << 10
	writeBuffer         = 4 << 10
	zeroHashBlockLength = 1 << 20
)

// sessDisk is one disk of a session.
type sessDisk struct {
	name string
	d    *replica.Disk
	// size is the disk's size in bytes; it grows with RESIZE.
	size atomic.Int64
	// unsaved is the WRITE payload bytes received (as sent, compressed or
	// not) that the server record's Disk.SentBytes does not count yet.
	unsaved atomic.Int64
	// last is the Commit of the last record appended; the reader goroutine
	// owns it.
	last replica.Commit
	// hashRd is the durable head that answered the last HASH_REQUEST, kept
	// while only HASH_REQUESTs follow; the reader goroutine owns it.
	hashRd *replica.Reader
}

// pending is a record whose durability the acker waits for, in order.
type pending struct {
	disk int
	seq  uint64
	c    replica.Commit
}

// session is one agent's replication session.
type session struct {
	s  *Server
	c  net.Conn
	id string
	// serial is the agent certificate's serial the session authenticated
	// with (decimal).
	serial string
	wmu    sync.Mutex // serialises frames on c
	bw     *bufio.Writer
	wbuf   []byte // guarded by wmu

	disks []*sessDisk
	acks  chan pending

	mu           sync.Mutex
	stats        *protocol.Stats // last STATS; guarded by mu
	statsAt      time.Time       // guarded by mu
	lastHeard    time.Time       // guarded by mu
	lastProgress time.Time       // guarded by mu
	acked        []uint64        // per-disk acknowledged seq; guarded by mu
	snapshotting int             // snapshots running; guarded by mu
	snapErr      error           // last snapshot failure; guarded by mu
	snapAt       time.Time       // last snapshot time; guarded by mu
	tracker      string          // guarded by mu
	lastRecv     []uint64        // per-disk highest seq received; guarded by mu
	lastBarrier  []uint64        // per-disk seq of the newest durable barrier; guarded by mu
	flushPoints  []flushPoint    // per-disk barrier answering the newest FLUSH; guarded by mu
	settings     protocol.Settings
	// The control loop's: the server's record as last read or written,
	// when, and when last written.
	record  *ferry.SourceServer
	readAt  time.Time
	written time.Time
	poke    chan struct{}  // Notify: the record changed elsewhere
	wake    chan struct{}  // a STATS the record should show at once
	traffic *serverTraffic // this server's counters
	// countedAt is when the record's ReplicatingSeconds was last brought
	// up to date; the control loop owns it.
	countedAt time.Time
	// unstable is the UNSTABLE_NETWORK text the session starts with and
	// dropLogged whether this replication server keeps a drop log for the
	// server (see dropState); set before the control loop starts, which
	// owns them then.
	unstable   string
	dropLogged bool
	// bulkHeld is the credit this session holds from the server's bulk
	// pool (see credit.go); the session's start and reader own it.
	bulkHeld int64

	endMu    sync.Mutex
	ended    bool   // an end was recorded; guarded by endMu
	endDrop  bool   // the end was a drop (see ending); guarded by endMu
	endCause string // guarded by endMu
}

// ending records why the session ends, if nothing has yet: the first
// cause is the real one, since what follows it (the other goroutines'
// reads and writes on the closed connection) fails because of it. drop
// says the connection failed or the agent closed it, rather than the
// server or the operator ending the session.
func (ss *session) ending(drop bool, cause string) {
	ss.endMu.Lock()
	defer ss.endMu.Unlock()
	if !ss.ended {
		ss.ended, ss.endDrop, ss.endCause = true, drop, cause
	}
}

// silentFor is how long the session has heard nothing from its agent.
func (ss *session) silentFor() time.Duration {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	if ss.lastHeard.IsZero() {
		return 0
	}
	return ss.s.now().Sub(ss.lastHeard)
}

// endReason returns what ending recorded.
func (ss *session) endReason() (drop bool, cause string) {
	ss.endMu.Lock()
	defer ss.endMu.Unlock()
	return ss.endDrop, ss.endCause
}

// send writes one frame.
func (ss *session) send(m protocol.Message) error {
	ss.wmu.Lock()
	defer ss.wmu.Unlock()
	ss.wbuf = protocol.Append(ss.wbuf[:0], m)
	_ = ss.c.SetWriteDeadline(time.Now().Add(writeTimeout))
	var err error
	if ss.s.sendFault != nil {
		err = ss.s.sendFault(m.Type())
	}
	if err == nil {
		_, err = ss.bw.Write(ss.wbuf)
	}
	if err != nil {
		err = fmt.Errorf("send %s: %w", m.Type(), err)
		ss.ending(true, err.Error())
		return err
	}
	if err := ss.bw.Flush(); err != nil {
		err = fmt.Errorf("send %s: %w", m.Type(), err)
		ss.ending(true, err.Error())
		return err
	}
	return nil
}

// fail sends the agent an ERROR and returns err: the server ends the
// session, which is no drop of the connection.
func (ss *session) fail(code uint16, err error) error {
	ss.ending(false, err.Error())
	_ = ss.send(&protocol.Error{Code: code, Message: err.Error()})
	return err
}

// replicate runs the protocol on an authenticated connection of server id,
// whose certificate has serial, until the connection ends.
func (s *Server) replicate(ctx context.Context, c net.Conn, id, serial string) error {
	ss := &session{s: s, c: c, id: id, serial: serial, bw: bufio.NewWriterSize(c, writeBuffer), acks: make(chan pending, ackQueue), traffic: s.trafficOf(id), poke: make(chan struct{}, 1), wake: make(chan struct{}, 1)}
	r := protocol.NewReaderSize(c, readBuffer)
	_ = c.SetReadDeadline(time.Now().Add(readTimeout))
	m, err := r.Read()
	if err != nil {
		return fmt.Errorf("read HELLO: %w", err)
	}
	hello, ok := m.(*protocol.Hello)
	if !ok {
		return ss.fail(protocol.ErrCodeProtocol, fmt.Errorf("first message is %s, want HELLO", m.Type()))
	}
	if hello.ProtocolVersion != protocol.Version {
		return ss.fail(protocol.ErrCodeVersion, fmt.Errorf("protocol version %d is not supported (want %d)", hello.ProtocolVersion, protocol.Version))
	}
	if hello.ServerID != id {
		return ss.fail(protocol.ErrCodeUnauthorized, fmt.Errorf("HELLO names server %q but the certificate is %q's", hello.ServerID, id))
	}
	// One session per server: a reconnecting agent replaces its old
	// session, which first drains its pending commits.
	release, err := s.claim(ctx, id, true, ss.cancel)
	if err != nil {
		return err
	}
	defer release()
	ss.unstable, ss.dropLogged = s.dropState(id)

	ack, err := ss.openDisks(ctx, hello)
	if err != nil {
		s.setStep(ctx, id, ferry.StepCreateStagingDisks, ferry.StepFailed, err)
		return ss.fail(protocol.ErrCodeStorage, err)
	}
	// The steps that succeeded by now (paired, connected, staging disks
	// created) are recorded by the control loop's first update, in one
	// write with the rest: HELLO_ACK never waits for the metadata store.
	ss.lastRecv = make([]uint64, len(ss.disks))
	ss.lastBarrier = make([]uint64, len(ss.disks))
	ss.flushPoints = make([]flushPoint, len(ss.disks))
	s.publish(id, ss)
	now := s.now()
	ss.lastHeard, ss.lastProgress, ss.tracker = now, now, hello.Tracker
	if err := ss.send(ack); err != nil {
		ss.recordEnd(ctx)
		return err
	}
	defer ss.releaseCredit()
	if err := ss.grantCredit(bulkStart(hello, ack), true); err != nil {
		// The agent read HELLO_ACK and the connection failed: that
		// session ended as much as one that ran for hours.
		ss.recordEnd(ctx)
		return err
	}

	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	ackDone := make(chan struct{})
	go func() { defer close(ackDone); ss.ackLoop(sctx) }()
	wg.Add(1)
	go func() {
		defer wg.Done()
		ss.controlLoop(sctx)
		c.Close() // stop the reader when the control loop ends the session
	}()
	err = ss.readLoop(sctx, r)
	if err != nil {
		ss.ending(true, err.Error())
	} else {
		ss.ending(true, "the agent closed the connection")
	}
	close(ss.acks)
	<-ackDone // every appended record is durable (or failed) before we return
	cancel()
	c.Close()
	wg.Wait()
	ss.recordEnd(ctx)
	return err
}

// recordEnd records the session's end (see ending) once nothing else of
// it runs: DISCONNECTED, and a drop toward UNSTABLE_NETWORK when it counts.
func (ss *session) recordEnd(ctx context.Context) {
	drop, cause := ss.endReason()
	// ss.settings is what the agent was last told (run, before the
	// control loop's first SETTINGS).
	drop = dropCounts(drop, ctx.Err() != nil, ss.settings.Desired)
	ss.recordDisconnect(context.WithoutCancel(ctx), drop, cause)
}

// claim makes this the only session of server id, ending an older one;
// replacing says a newer session of the agent is what claims it, and
// cancel is how a later claim ends this one.
func (s *Server) claim(ctx context.Context, id string, replacing bool, cancel func(replaced bool)) (func(), error) {
	for {
		s.mu.Lock()
		if s.sessions == nil {
			s.sessions = map[string]*activeSession{}
		}
		old := s.sessions[id]
		if old == nil {
			a := &activeSession{done: make(chan struct{}), cancel: cancel}
			s.sessions[id] = a
			s.live.Store(int64(len(s.sessions)))
			s.mu.Unlock()
			return func() {
				s.mu.Lock()
				delete(s.sessions, id)
				s.live.Store(int64(len(s.sessions)))
				s.mu.Unlock()
				close(a.done)
			}, nil
		}
		kick := old.cancel
		s.mu.Unlock()
		kick(replacing)
		select {
		case <-old.done:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

// replicaBlockSize is the replica block size for a device: 4 KiB when the
// size allows, else the device's logical block size.
func replicaBlockSize(size int64, lbs uint32) int {
	if size%4096 == 0 && lbs <= 4096 {
		return 4096
	}
	return max(int(lbs), 512)
}

// DiskID is the replica store's id of a source server's disk.
func DiskID(serverID, disk string) string { return serverID + "." + disk }

func (ss *session) openDisks(ctx context.Context, h *protocol.Hello) (*protocol.HelloAck, error) {
	if ss.s.Replica == nil {
		return nil, errors.New("this replication server has no replica store")
	}
	// The version field carries the server's revision: the agent sends
	// revision 2's STATS timing only when it sees it.
	ack := &protocol.HelloAck{ProtocolVersion: protocol.Revision}
	seen := map[string]bool{}
	for _, hd := range h.Disks {
		if seen[hd.Name] {
			return nil, fmt.Errorf("disk %q announced twice", hd.Name)
		}
		seen[hd.Name] = true
		id := DiskID(ss.id, hd.Name)
		if !replica.ValidDiskID(id) {
			return nil, fmt.Errorf("disk name %q cannot name a replica disk", hd.Name)
		}
		d, err := ss.s.Replica.Disk(id)
		if errors.Is(err, replica.ErrNotFound) {
			bs := replicaBlockSize(hd.Size, hd.LogicalBlockSize)
			d, err = ss.s.Replica.CreateDisk(ctx, id, hd.Size-hd.Size%int64(bs), bs)
		}
		if err != nil {
			return nil, fmt.Errorf("open replica disk %s: %w", id, err)
		}
		durable := d.DurableSeq()
		ad := protocol.AckDisk{DurableSeq: durable, ReplicaSize: d.Size(), BlockSize: uint32(d.BlockSize()), SyncCursor: hd.SyncCursor}
		if hd.AckedSeq == 0 && hd.SyncCursor == 0 && !hd.SyncDone && durable > 0 {
			// A fresh agent on a replica that already holds data (the
			// connector replicated this server, or the agent lost its
			// state): compare hashes and send only the differences
			// instead of a new initial sync.
			ad.Rescan = true
			ss.s.log().Info("replica already holds data; the agent adopts it with a rescan", "server", ss.id, "disk", hd.Name, "durable", durable)
		} else if durable < hd.AckedSeq {
			// The replica lost records the agent saw acknowledged (a
			// restored or recreated store): compare hashes rather than
			// trust the cursor.
			ad.Rescan = true
			ss.s.log().Warn("replica is behind what the agent saw acknowledged; asking for a rescan",
				"server", ss.id, "disk", hd.Name, "durable", durable, "agent_acked", hd.AckedSeq)
		}
		ack.Disks = append(ack.Disks, ad)
		sd := &sessDisk{name: hd.Name, d: d}
		sd.size.Store(hd.Size)
		ss.disks = append(ss.disks, sd)
		ss.acked = append(ss.acked, durable)
	}
	return ack, nil
}

func (ss *session) disk(i uint16, what string) (*sessDisk, error) {
	if int(i) >= len(ss.disks) {
		return nil, fmt.Errorf("%s names disk %d of %d", what, i, len(ss.disks))
	}
	return ss.disks[i], nil
}

// readLoop applies the agent's messages in order.
func (ss *session) readLoop(ctx context.Context, r *protocol.Reader) error {
	dz, err := protocol.NewDecompressor()
	if err != nil {
		return err
	}
	defer dz.Close()
	defer ss.dropHashReaders()
	var zbuf []byte
	for {
		_ = ss.c.SetReadDeadline(time.Now().Add(readTimeout))
		m, err := r.Read()
		if err != nil {
			if errors.Is(err, io.EOF) || ctx.Err() != nil {
				return nil
			}
			if errors.Is(err, protocol.ErrMalformed) {
				return ss.fail(protocol.ErrCodeProtocol, err)
			}
			return fmt.Errorf("read from agent: %w", err)
		}
		ss.mu.Lock()
		ss.lastHeard = ss.s.now()
		ss.mu.Unlock()
		if _, ok := m.(*protocol.HashRequest); !ok {
			ss.dropHashReaders()
		}
		switch m := m.(type) {
		case *protocol.Write:
			sd, err := ss.disk(m.Disk, "WRITE")
			if err != nil {
				return ss.fail(protocol.ErrCodeProtocol, err)
			}
			data, err := dz.Payload(m, zbuf)
			if err != nil {
				return ss.fail(protocol.ErrCodeProtocol, err)
			}
			if m.Flags&(protocol.FlagZstd|protocol.FlagS2) != 0 {
				zbuf = data
			}
			ss.s.received.Add(int64(len(data)))
			ss.traffic.received.Add(int64(len(data)))
			sd.unsaved.Add(int64(len(m.Data)))
			// The agent's zstd frame or S2 block, decoded above, is kept as
			// the stored chunk's compressed form: the store does not
			// compress it again.
			var frame replica.Frame
			switch {
			case m.Flags&protocol.FlagZstd != 0:
				frame = replica.Frame{Codec: replica.CodecZstd, Data: m.Data}
			case m.Flags&protocol.FlagS2 != 0:
				frame = replica.Frame{Codec: replica.CodecS2, Data: m.Data}
			}
			t0 := time.Now()
			c, err := sd.d.AppendFrame(m.Seq, m.Offset, data, frame)
			ss.traffic.stagingNano.Add(int64(time.Since(t0)))
			if err != nil {
				return ss.fail(protocol.ErrCodeStorage, fmt.Errorf("write seq %d: %w", m.Seq, err))
			}
			sd.last = c
			if o := ss.s.Observer; o != nil {
				o.Written(ss.id, int(m.Disk), m.Seq, m.Offset, data)
			}
			ss.received(m.Disk, m.Seq)
			if err := ss.queue(ctx, pending{int(m.Disk), m.Seq, c}); err != nil {
				return err
			}
		case *protocol.Zero:
			sd, err := ss.disk(m.Disk, "ZERO")
			if err != nil {
				return ss.fail(protocol.ErrCodeProtocol, err)
			}
			c, err := sd.d.AppendZeroes(m.Seq, m.Offset, m.Length)
			if err != nil {
				return ss.fail(protocol.ErrCodeStorage, fmt.Errorf("zero seq %d: %w", m.Seq, err))
			}
			sd.last = c
			ss.received(m.Disk, m.Seq)
			if err := ss.queue(ctx, pending{int(m.Disk), m.Seq, c}); err != nil {
				return err
			}
		case *protocol.Barrier:
			if err := ss.barrier(ctx, m.Disk, m.Seq, m.Consistency, m.FlushID); err != nil {
				return err
			}
		case *protocol.Snapshot:
			if err := ss.barrier(ctx, m.Disk, m.Seq, m.Consistency, 0); err != nil {
				return err
			}
			ss.snapshot(ctx, ss.disks[m.Disk], m.Seq, int(m.Keep))
		case *protocol.Resize:
			sd, err := ss.disk(m.Disk, "RESIZE")
			if err != nil {
				return ss.fail(protocol.ErrCodeProtocol, err)
			}
			if err := sd.d.Resize(ctx, m.Seq, m.Size); err != nil {
				return ss.fail(protocol.ErrCodeStorage, fmt.Errorf("resize seq %d: %w", m.Seq, err))
			}
			if m.Size > sd.size.Load() {
				sd.size.Store(m.Size)
				ss.s.log().Info("disk grew", "server", ss.id, "disk", sd.name, "size", m.Size)
			}
			sd.last = replica.Commit{}
			if err := ss.queue(ctx, pending{int(m.Disk), m.Seq, replica.Commit{}}); err != nil {
				return err
			}
		case *protocol.HashRequest:
			reply, err := ss.hashes(ctx, m)
			if err != nil {
				return ss.fail(protocol.ErrCodeStorage, err)
			}
			if err := ss.send(reply); err != nil {
				return err
			}
		case *protocol.Stats:
			st := *m
			st.Disks = append([]protocol.DiskStats(nil), m.Disks...)
			ss.mu.Lock()
			now := milestone(ss.stats, &st)
			ss.stats, ss.statsAt = &st, ss.s.now()
			ss.mu.Unlock()
			if now {
				// The end of an initial sync moves the server to
				// READY_FOR_TEST, the end of a rescan to CONTINUOUS:
				// record it now, not at the next poll.
				select {
				case ss.wake <- struct{}{}:
				default:
				}
			}
			if m.Timing != nil {
				ss.traffic.setAgentTiming(*m.Timing)
			}
			if err := ss.grantCredit(bulkPhase(m), false); err != nil {
				return err
			}
		case *protocol.Heartbeat:
		case *protocol.Renew:
			// A refusal is an answer, not the end of the session: the
			// agent keeps its certificate and asks again later.
			reply := &protocol.Renewed{}
			if reply.Certificate, err = ss.renew(ctx, m); err != nil {
				ss.s.log().Warn("agent certificate not renewed", "server", ss.id, "err", err)
				reply.Refusal = err.Error()
			}
			if err := ss.send(reply); err != nil {
				return err
			}
		case *protocol.Error:
			// The agent ended the session on purpose.
			err := fmt.Errorf("agent: %w", m)
			ss.ending(false, err.Error())
			return err
		default:
			return ss.fail(protocol.ErrCodeProtocol, fmt.Errorf("unexpected %s from the agent", m.Type()))
		}
	}
}

// milestone reports whether a disk's initial sync is done in cur and was
// not in prev, or a disk's rescan ended. Only these few changes are
// recorded at once: a phase that flaps between CONTINUOUS and BACKLOG
// waits for the poll, or thousands of agents would each write a record
// every second.
func milestone(prev, cur *protocol.Stats) bool {
	for i, d := range cur.Disks {
		var p *protocol.DiskStats
		if prev != nil && i < len(prev.Disks) {
			p = &prev.Disks[i]
		}
		if d.SyncDone && (p == nil || !p.SyncDone) {
			return true
		}
		if p != nil && p.Phase == protocol.PhaseRescan && d.Phase != protocol.PhaseRescan {
			return true
		}
	}
	return false
}

func (ss *session) queue(ctx context.Context, p pending) error {
	select {
	case ss.acks <- p:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (ss *session) barrier(ctx context.Context, disk uint16, seq uint64, c uint8, flushID uint32) error {
	sd, err := ss.disk(disk, "BARRIER")
	if err != nil {
		return ss.fail(protocol.ErrCodeProtocol, err)
	}
	if err := sd.d.Barrier(ctx, seq, replica.Consistency(c)); err != nil {
		return ss.fail(protocol.ErrCodeStorage, fmt.Errorf("barrier seq %d: %w", seq, err))
	}
	sd.last = replica.Commit{}
	ss.received(disk, seq)
	ss.mu.Lock()
	ss.lastBarrier[disk] = seq
	if flushID != 0 {
		ss.flushPoints[disk] = flushPoint{id: flushID, seq: seq, cons: c}
	}
	ss.mu.Unlock()
	return ss.queue(ctx, pending{int(disk), seq, replica.Commit{}})
}

// snapshot takes a snapshot at seq in the background: it folds the
// journal, which may take a while, and needs nothing later in the stream.
// With keep > 0 it then deletes the disk's older snapshots beyond the keep
// newest (see pruneSnapshots).
func (ss *session) snapshot(ctx context.Context, sd *sessDisk, seq uint64, keep int) {
	ss.mu.Lock()
	ss.snapshotting++
	ss.mu.Unlock()
	go func() {
		info, err := sd.d.Snapshot(context.WithoutCancel(ctx), replica.SnapshotOptions{Seq: seq})
		ss.mu.Lock()
		defer ss.mu.Unlock()
		ss.snapshotting--
		ss.snapErr = err
		if err != nil {
			ss.s.log().Warn("snapshot failed", "server", ss.id, "disk", sd.name, "err", err)
			return
		}
		ss.snapAt = info.Time
		ss.s.log().Info("snapshot taken", "server", ss.id, "disk", sd.name, "id", info.ID)
		if keep > 0 {
			go ss.s.pruneSnapshots(context.WithoutCancel(ctx), ss.id, sd.name, sd.d, keep)
		}
	}()
}

// pruneSnapshots keeps the keep newest snapshots of a disk and deletes the
// older ones, except those marked keep and the one the server's launched
// instance (test or cutover, not terminated) runs from: a source that
// replicates by snapshots (the connector) bounds its replica's history so.
func (s *Server) pruneSnapshots(ctx context.Context, serverID, disk string, d *replica.Disk, keep int) {
	inUse := ""
	if srv, err := s.Store.Server(ctx, serverID); err == nil && srv.Launched != nil && srv.Launched.TerminatedAt.IsZero() {
		inUse = srv.Launched.Snapshots[disk]
	}
	snaps := d.Snapshots()
	sort.Slice(snaps, func(i, j int) bool { return snaps[i].Seq > snaps[j].Seq })
	kept := 0
	for _, sn := range snaps {
		if sn.Keep || sn.ID == inUse {
			continue
		}
		if kept < keep {
			kept++
			continue
		}
		if err := d.DeleteSnapshot(ctx, sn.ID); err != nil && !errors.Is(err, replica.ErrNotFound) {
			s.log().Warn("delete an old snapshot", "server", serverID, "disk", disk, "snapshot", sn.ID, "err", err)
			continue
		}
		s.log().Info("old snapshot deleted (recent snapshots to keep)", "server", serverID, "disk", disk, "snapshot", sn.ID, "keep", keep)
	}
}

// ackLoop waits for commits in order and acknowledges the durable
// sequence numbers, coalescing whatever is already durable.
func (ss *session) ackLoop(ctx context.Context) {
	latest := map[int]uint64{}
	for p := range ss.acks {
		wctx := context.WithoutCancel(ctx)
		t0 := time.Now()
		err := p.c.Wait(wctx)
		ss.traffic.stagingNano.Add(int64(time.Since(t0)))
		if err != nil {
			ss.s.log().Warn("replica write failed", "server", ss.id, "disk", ss.disks[p.disk].name, "seq", p.seq, "err", err)
			_ = ss.fail(protocol.ErrCodeStorage, err)
			ss.c.Close()
			for range ss.acks {
			}
			return
		}
		latest[p.disk] = max(latest[p.disk], p.seq)
		if len(ss.acks) > 0 && len(latest) < 64 {
			continue
		}
		for d, seq := range latest {
			ss.mu.Lock()
			if seq > ss.acked[d] {
				ss.acked[d] = seq
				ss.lastProgress = ss.s.now()
			}
			ss.mu.Unlock()
			if o := ss.s.Observer; o != nil {
				o.Durable(ss.id, d, seq)
			}
			_ = ss.send(&protocol.Ack{Disk: uint16(d), Seq: seq})
		}
		clear(latest)
	}
}

// hashes answers a HASH_REQUEST from the disk's durable head, after every
// record appended before the request is durable (a head kept from the
// request before, with nothing appended since, is that head).
func (ss *session) hashes(ctx context.Context, m *protocol.HashRequest) (*protocol.HashReply, error) {
	sd, err := ss.disk(m.Disk, "HASH_REQUEST")
	if err != nil {
		return nil, err
	}
	if sd.hashRd == nil {
		if err := sd.last.Wait(ctx); err != nil {
			return nil, fmt.Errorf("hash request: %w", err)
		}
		if sd.hashRd, err = sd.d.OpenHead(ctx); err != nil {
			return nil, fmt.Errorf("hash request: %w", err)
		}
	}
	return HashRange(sd.hashRd, m)
}

// dropHashReaders closes the heads kept for HASH_REQUESTs. Any other
// message may change a disk (or come a second after the last request),
// so a head is reused only by an unbroken run of requests: a rescan's
// second comparisons come that way, and opening a head costs the whole
// journal window (a rescan opening one per request spent a third of the
// server's time there). Closing them soon keeps them from pinning journal
// segments that a fold would free.
func (ss *session) dropHashReaders() {
	for _, sd := range ss.disks {
		if sd.hashRd != nil {
			sd.hashRd.Close()
			sd.hashRd = nil
		}
	}
}

// HashRange hashes the blocks a HASH_REQUEST names from r; blocks past the
// end of r hash as zeros. When r also reports its extents (a replica
// reader does), stretches that read as zeros are neither read nor hashed:
// a rescan of a half-empty disk spent a fifth of the server's time on
// them. (Hashing a long range with a worker per core was tried: a replica
// reader's read-ahead already decrypts on the other cores, and the rescan
// took no less time.)
func HashRange(r interface {
	ReadAt([]byte, int64) (int, error)
	Size() int64
}, m *protocol.HashRequest) (*protocol.HashReply, error) {
	bs := int64(m.BlockSize)
	hl := int64(protocol.HashLen(m.Algo))
	reply := &protocol.HashReply{ID: m.ID, Disk: m.Disk, Offset: m.Offset, BlockSize: m.BlockSize, Algo: m.Algo, Hashes: make([]byte, 0, m.Length/bs*hl)}
	size := r.Size()
	end := m.Offset + m.Length
	var zero []replica.Extent // the disk's zero extents in the range, in order
	if x, ok := r.(interface {
		Extents(off, length int64) ([]replica.Extent, error)
	}); ok && m.Offset < size {
		ext, err := x.Extents(m.Offset, min(end, size)-m.Offset)
		if err != nil {
			return nil, fmt.Errorf("hash request: extents: %w", err)
		}
		for _, e := range ext {
			if e.Zero {
				zero = append(zero, e)
			}
		}
	}
	// zeroTo returns how far from at the disk reads as zeros without
	// reading it (at itself when it does not); adjacent zero extents are
	// merged, so one holds the whole stretch.
	zeroTo := func(at int64) int64 {
		if at >= size {
			return end
		}
		for len(zero) > 0 && zero[0].Offset+zero[0].Length <= at {
			zero = zero[1:]
		}
		if len(zero) == 0 || zero[0].Offset > at {
			return at
		}
		if e := zero[0].Offset + zero[0].Length; e < size {
			return e
		}
		return end
	}
	var buf []byte
	for at := m.Offset; at < end; {
		if z := zeroTo(at); z-at >= bs {
			k := (z - at) / bs
			zh := protocol.ZeroHash(m.Algo, int(bs))
			for range k {
				reply.Hashes = append(reply.Hashes, zh...)
			}
			at += k * bs
			continue
		}
		if buf == nil {
			buf = make([]byte, min(m.Length, max(bs, 1<<20)))
		}
		b := buf[:min(int64(len(buf)), end-at)]
		in := min(at+int64(len(b)), max(at, size)) // [at, in) is inside the disk
		if _, err := r.ReadAt(b[:in-at], at); err != nil && !errors.Is(err, io.EOF) {
			return nil, fmt.Errorf("hash request: read %d at %d: %w", in-at, at, err)
		}
		clear(b[in-at:])
		for i := int64(0); i < int64(len(b)); i += bs {
			reply.Hashes = protocol.AppendBlockHash(reply.Hashes, m.Algo, b[i:i+bs])
		}
		at += int64(len(b))
	}
	return reply, nil
}
