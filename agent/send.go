package agent

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/time/rate"

	"github.com/ferrymigrate/ferry/internal/aio"
	"github.com/ferrymigrate/ferry/internal/directio"
	"github.com/ferrymigrate/ferry/internal/zeros"
	"github.com/ferrymigrate/ferry/protocol"
	"github.com/ferrymigrate/ferry/track"
)

// senderTimers add up where the send loop's time goes, so the server can
// tell a slow source disk from a slow network (STATS timing).
type senderTimers struct {
	read, network, throttle, idle atomic.Int64
}

// since adds the time since t0 to c and returns now, to chain spans.
func since(c *atomic.Int64, t0 time.Time) time.Time {
	now := time.Now()
	c.Add(int64(now.Sub(t0)))
	return now
}

// timing returns the STATS timing block, or nil when the server's revision
// does not decode it.
func (e *engine) timing() *protocol.AgentTiming {
	if !e.sendTiming.Load() {
		return nil
	}
	t := &e.timers
	return &protocol.AgentTiming{ReadNanos: t.read.Load(), NetworkNanos: t.network.Load(),
		ThrottleNanos: t.throttle.Load(), IdleNanos: t.idle.Load()}
}

// chunkResult is one initial-sync chunk, read (and compressed) ahead.
type chunkResult struct {
	off, n int64
	zero   bool
	data   []byte // payload as sent (compressed when flags say so)
	flags  uint8
	err    error
	// back is data's buffer, which goes back to pool once data is sent:
	// the readers hand their buffers over instead of copying a chunk
	// that stays as read.
	back *[]byte
	pool *sync.Pool
}

// release gives r's buffer back to its pipe once it has been sent.
func (r *chunkResult) release() {
	if r.back != nil {
		r.pool.Put(r.back)
		r.back, r.data = nil, nil
	}
}

// syncPipe reads a disk's initial-sync chunks in order with parallel
// readers; at most Readers chunks are in memory (and one being sent).
type syncPipe struct {
	d      *rdisk
	futs   chan chan chunkResult
	cancel context.CancelFunc
	wg     sync.WaitGroup
	// raw holds aligned chunk buffers for the reads, packed buffers of
	// a chunk's size for compressed payloads.
	raw, packed sync.Pool
}

func (e *engine) startPipe(ctx context.Context, d *rdisk, from int64) *syncPipe {
	ctx, cancel := context.WithCancel(ctx)
	p := &syncPipe{d: d, futs: make(chan chan chunkResult, e.o.Readers), cancel: cancel}
	chunk := int(e.chunk)
	p.raw.New = func() any { b := directio.Buf(chunk); return &b }
	p.packed.New = func() any { b := make([]byte, 0, protocol.CompressBound(chunk)); return &b }
	codec := protocol.Codec(e.syncCodec.Load())
	if codec == 0 { // no session yet: only tests start a pipe so
		codec = protocol.Zstd
	}
	jobs := make(chan struct {
		off, n int64
		res    chan chunkResult
	}, e.o.Readers)
	for range e.o.Readers {
		p.wg.Add(1)
		go func() {
			defer p.wg.Done()
			comp, err := protocol.NewCompressor(codec)
			var gate compressGate
			for j := range jobs {
				r := chunkResult{off: j.off, n: j.n, err: err}
				if err == nil {
					bp := p.raw.Get().(*[]byte)
					b := (*bp)[:j.n]
					r.err = d.dev.readAt(b, j.off)
					if r.err == nil {
						r.zero = zeros.Is(b)
					}
					if r.err == nil && !r.zero {
						ok := gate.try()
						if ok {
							zp := p.packed.Get().(*[]byte)
							var z []byte
							z, ok = comp.Compress(b, (*zp)[:0])
							gate.result(ok)
							if ok {
								*zp = z
								r.data, r.flags, r.back, r.pool = z, codec.Flag(), zp, &p.packed
							} else {
								p.packed.Put(zp)
							}
						}
						if !ok {
							r.data, r.back, r.pool = b, bp, &p.raw
							bp = nil
						}
					}
					if bp != nil {
						p.raw.Put(bp)
					}
				}
				j.res <- r
			}
		}()
	}
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		defer close(jobs)
		defer close(p.futs)
		for off := from; off < d.size; {
			n := min(e.chunk, d.size-off)
			e.mu.Lock()
			d.dispatched = max(d.dispatched, off+n)
			e.mu.Unlock()
			res := make(chan chunkResult, 1)
			select {
			case p.futs <- res:
			case <-ctx.Done():
				return
			}
			select {
			case jobs <- struct {
				off, n int64
				res    chan chunkResult
			}{off, n, res}:
			case <-ctx.Done():
				return
			}
			off += n
		}
	}()
	return p
}

func (p *syncPipe) stop() {
	if p == nil {
		return
	}
	p.cancel()
	go func() {
		for f := range p.futs {
			select {
			case <-f:
			default:
			}
		}
	}()
	p.wg.Wait()
}

// work is the next thing the send loop does.
type work int

const (
	workNone work = iota
	workDirty
	workRescan
	workSync
	workSnapshot
	workBarrier
	workResize
)

// nextWorkLocked picks what to send next: tracked writes first (they set
// the lag), then rescans, then the initial sync, then consistency points.
func (e *engine) nextWorkLocked() (work, *rdisk) {
	if e.settings.Desired != protocol.DesiredRun {
		return workNone, nil
	}
	// A grown disk's replica grows before its new tail is written.
	for _, d := range e.disks {
		if d.size > d.replicaSize {
			return workResize, d
		}
	}
	for _, d := range e.disks {
		if d.dirty.Bytes() > 0 {
			return workDirty, d
		}
	}
	for _, d := range e.disks {
		if d.rescan.Bytes() > 0 {
			return workRescan, d
		}
	}
	for _, d := range e.disks {
		if !d.prog.SyncDone {
			if d.sent < d.size {
				return workSync, d
			}
			if d.syncSeq == 0 {
				return workSnapshot, d
			}
		}
	}
	now := time.Now()
	for _, d := range e.disks {
		if d.prog.SyncDone && !d.flushAt.IsZero() && d.flushReady {
			return workBarrier, d
		}
		if d.prog.SyncDone && d.lastSent > d.barrierSeq && now.Sub(d.barrierAt) >= barrierEvery {
			return workBarrier, d
		}
	}
	return workNone, nil
}

// sender is the send loop's connection and scratch space.
type sender struct {
	c      *conn
	buf    []byte // one chunk, aligned for O_DIRECT reads
	comp   *protocol.Compressor
	gate   compressGate
	zbuf   []byte // compressed payload
	hashes <-chan *protocol.HashReply
	hashID uint32 // last HASH_REQUEST id
	// asked holds the HASH_REQUESTs not answered yet, early the replies
	// that came before the one awaited.
	asked  map[uint32]bool
	early  map[uint32]*protocol.HashReply
	diff   []byte // rescan blocks held for a second comparison
	dirty  []track.Extent
	ranges []aio.Range
	// readers are the disks' batch readers by disk index; nil where a
	// disk reads one extent at a time (no O_DIRECT, or no native AIO).
	readers map[int]*aio.Reader
}

// maxDirtyBatch bounds the dirty extents read in one system call. Under
// random 4 KiB writes at 10 MB/s the tracker hands over about 130 every
// 50 ms; a blocking pread each was a third of the agent's CPU.
const maxDirtyBatch = 256

// takeDirtyLocked takes the next dirty extents in sweep order: up to
// maxDirtyBatch whole extents in a chunk's bytes (the first may be split
// to fit).
func (e *engine) takeDirtyLocked(d *rdisk, xs []track.Extent) []track.Extent {
	room := e.chunk
	for len(xs) < maxDirtyBatch {
		next, ok := d.dirty.Peek(d.sweep)
		if !ok || (len(xs) > 0 && next.Length > room) {
			break
		}
		x, _ := d.dirty.Take(d.sweep, room)
		d.sweep = x.Offset + x.Length
		xs = append(xs, x)
		room -= x.Length
	}
	return xs
}

// sendDirty reads the dirty extents xs and sends them in order.
func (e *engine) sendDirty(ctx context.Context, s *sender, d *rdisk, xs []track.Extent) error {
	t0 := time.Now()
	data, err := s.readExtents(e, d, xs)
	since(&e.timers.read, t0)
	for i := 0; err == nil && i < len(xs); i++ {
		err = e.sendData(ctx, s, d, xs[i].Offset, data[i], 0, kindDirty)
	}
	if err != nil {
		// The extents left the dirty map but may not have been recorded
		// as in flight (the credit wait or the read failed first): put
		// them back, or their writes are lost. Re-adding one that is in
		// flight too is harmless.
		e.mu.Lock()
		now := time.Now()
		for _, x := range xs {
			d.dirty.Add(x.Offset, x.Length, now)
		}
		e.mu.Unlock()
	}
	return err
}

// readExtents reads xs (at most a chunk's bytes in all) from d's device:
// in one batch of native AIO where the device allows it, else one pread
// each into s.buf. The slices stay valid until the next read.
func (s *sender) readExtents(e *engine, d *rdisk, xs []track.Extent) ([][]byte, error) {
	if r := s.reader(e, d); r != nil {
		s.ranges = s.ranges[:0]
		for _, x := range xs {
			s.ranges = append(s.ranges, aio.Range{Off: x.Offset, Len: x.Length})
		}
		out, err := r.Read(s.ranges)
		if err == nil {
			return out, nil
		}
		if errors.Is(err, aio.ErrBroken) {
			e.log.Warn("batched reads failed; reading written blocks one at a time", "disk", d.dev.name, "err", err)
			s.readers[d.idx] = nil
		}
		// Read one at a time: that reads zeros past the device's end,
		// bounces unaligned blocks and names the extent that failed.
	}
	out := make([][]byte, len(xs))
	pos := int64(0)
	for i, x := range xs {
		b := s.buf[pos : pos+x.Length]
		if err := d.dev.readAt(b, x.Offset); err != nil {
			return nil, err
		}
		out[i] = b
		pos += x.Length
	}
	return out, nil
}

// reader returns d's batch reader, opening it at first use; nil when the
// disk has none.
func (s *sender) reader(e *engine, d *rdisk) *aio.Reader {
	if r, ok := s.readers[d.idx]; ok {
		return r
	}
	if s.readers == nil {
		s.readers = map[int]*aio.Reader{}
	}
	var r *aio.Reader
	if d.dev.direct != nil {
		var err error
		if r, err = aio.Open(d.dev.direct, maxDirtyBatch, int(e.chunk)); err != nil {
			e.log.Info("native AIO unavailable; reading written blocks one at a time", "disk", d.dev.name, "err", err)
			r = nil
		}
	}
	s.readers[d.idx] = r
	return r
}

func (s *sender) closeReaders() {
	for _, r := range s.readers {
		r.Close()
	}
}

// sendLoop sends data until the connection fails or ctx ends.
func (e *engine) sendLoop(ctx context.Context, c *conn, hashes <-chan *protocol.HashReply) error {
	comp, err := protocol.NewCompressor(protocol.Zstd)
	if err != nil {
		return err
	}
	s := &sender{c: c, buf: directio.Buf(int(e.chunk)), comp: comp, hashes: hashes}
	defer s.closeReaders()
	var pipe *syncPipe
	defer func() { pipe.stop() }()
	tick := time.NewTicker(250 * time.Millisecond)
	defer tick.Stop()
	go func() {
		for {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
				e.mu.Lock()
				e.cond.Broadcast()
				e.mu.Unlock()
			}
		}
	}()
	var lingerEnd time.Time // when queued records must leave
	for {
		e.mu.Lock()
		w, d := e.nextWorkLocked()
		if w == workNone && ctx.Err() == nil && c.buffered() {
			// Out of work with records queued: linger a moment for the
			// next writes to share their TLS record and system call,
			// then send them.
			if lingerEnd.IsZero() {
				lingerEnd = time.Now().Add(sendLinger)
				time.AfterFunc(sendLinger, func() {
					e.mu.Lock()
					e.cond.Broadcast()
					e.mu.Unlock()
				})
			}
			if time.Now().Before(lingerEnd) {
				e.cond.Wait()
				e.mu.Unlock()
				continue
			}
			lingerEnd = time.Time{}
			e.mu.Unlock()
			if err := c.flush(); err != nil {
				return err
			}
			e.mu.Lock()
			w, d = e.nextWorkLocked()
		}
		// Idle time is added at every wake-up (at least every 250 ms), so
		// STATS see it while the wait lasts.
		for t0 := time.Now(); w == workNone && ctx.Err() == nil; {
			e.cond.Wait()
			t0 = since(&e.timers.idle, t0)
			w, d = e.nextWorkLocked()
		}
		if ctx.Err() != nil {
			e.mu.Unlock()
			return ctx.Err()
		}
		switch w {
		case workDirty:
			s.dirty = e.takeDirtyLocked(d, s.dirty[:0])
			e.mu.Unlock()
			if err := e.sendDirty(ctx, s, d, s.dirty); err != nil {
				return err
			}
		case workRescan:
			e.mu.Unlock()
			if err := e.rescan(ctx, s, d); err != nil {
				return err
			}
		case workSync:
			if pipe == nil || pipe.d != d {
				pipe.stop()
				pipe = e.startPipe(ctx, d, d.sent)
			}
			e.mu.Unlock()
			// Waiting for the parallel readers is the source read.
			t0 := time.Now()
			var r chunkResult
			select {
			case f, ok := <-pipe.futs:
				if !ok {
					return fmt.Errorf("initial sync of %s: reader ended early", d.dev.name)
				}
				select {
				case r = <-f:
				case <-ctx.Done():
					return ctx.Err()
				}
			case <-ctx.Done():
				return ctx.Err()
			}
			since(&e.timers.read, t0)
			if r.err != nil {
				r.release()
				return fmt.Errorf("initial sync of %s: %w", d.dev.name, r.err)
			}
			err := e.sendChunk(ctx, c, d, r)
			r.release()
			if err != nil {
				return err
			}
		case workSnapshot:
			seq := d.nextSeq
			d.nextSeq++
			d.syncSeq = seq
			d.inflight = append(d.inflight, flight{seq: seq, kind: kindControl})
			d.barrierSeq, d.barrierAt = seq, time.Now()
			e.mu.Unlock()
			if err := c.send(&protocol.Snapshot{Disk: uint16(d.idx), Seq: seq, Consistency: protocol.CrashConsistent}); err != nil {
				return err
			}
		case workResize:
			seq := d.nextSeq
			d.nextSeq++
			d.inflight = append(d.inflight, flight{seq: seq, kind: kindControl})
			from, to := d.replicaSize, d.size
			d.replicaSize = to
			d.lastSent = seq
			e.mu.Unlock()
			if err := c.send(&protocol.Resize{Disk: uint16(d.idx), Seq: seq, Size: to}); err != nil {
				return err
			}
			e.log.Info("resized the replica", "disk", d.dev.name, "from", from, "to", to)
		case workBarrier:
			seq := d.nextSeq
			d.nextSeq++
			d.inflight = append(d.inflight, flight{seq: seq, kind: kindControl})
			d.barrierSeq, d.barrierAt = seq, time.Now()
			b := &protocol.Barrier{Disk: uint16(d.idx), Seq: seq, Consistency: protocol.CrashConsistent}
			// A periodic barrier due before the tracker vouched for the
			// FLUSH's moment does not answer it.
			if !d.flushAt.IsZero() && d.flushReady {
				b.Consistency = e.barrierConsistencyLocked(d, seq)
				b.FlushID = d.flushID
				d.flushAt, d.flushReady = time.Time{}, false
			}
			e.mu.Unlock()
			if err := c.send(b); err != nil {
				return err
			}
		}
	}
}

// sendLinger is how long the send loop, out of work, keeps queued records
// for more to join them: at most that much added to the RPO.
const sendLinger = 2 * time.Millisecond

// waitCredit blocks until n more bytes fit in the server's credit (a
// single record always may go when nothing is in flight), then throttles.
func (e *engine) waitCredit(ctx context.Context, c *conn, n int64) error {
	t0 := time.Now()
	e.mu.Lock()
	if e.inflightB > 0 && e.inflightB+n > e.credit {
		// The server grants credit for what it received: send what is
		// queued before waiting for it.
		e.mu.Unlock()
		if err := c.flush(); err != nil {
			return err
		}
		e.mu.Lock()
	}
	for e.inflightB > 0 && e.inflightB+n > e.credit && ctx.Err() == nil {
		e.cond.Wait()
	}
	e.mu.Unlock()
	t0 = since(&e.timers.network, t0)
	if ctx.Err() != nil {
		return ctx.Err()
	}
	defer since(&e.timers.throttle, t0)
	if e.limiter.Limit() != rate.Inf {
		// A throttled sender may wait here: nothing queued waits with it.
		if err := c.flush(); err != nil {
			return err
		}
	}
	for left := n; left > 0; {
		step := min(left, int64(e.limiter.Burst()))
		if err := e.limiter.WaitN(ctx, int(step)); err != nil {
			return err
		}
		left -= step
	}
	return nil
}

// record assigns the next sequence number to a record and notes it in
// flight.
func (e *engine) record(d *rdisk, off, length int64, kind int, bytes int64) uint64 {
	e.mu.Lock()
	defer e.mu.Unlock()
	seq := d.nextSeq
	d.nextSeq++
	d.inflight = append(d.inflight, flight{seq: seq, off: off, len: length, kind: kind, bytes: bytes})
	e.inflightB += bytes
	d.lastSent = seq
	if kind == kindSync {
		d.sent = off + length
	}
	return seq
}

func (e *engine) sendChunk(ctx context.Context, c *conn, d *rdisk, r chunkResult) error {
	if r.zero {
		seq := e.record(d, r.off, r.n, kindSync, 0)
		return c.queue(&protocol.Zero{Disk: uint16(d.idx), Seq: seq, Offset: r.off, Length: r.n, Flags: protocol.FlagSync})
	}
	if err := e.waitCredit(ctx, c, int64(len(r.data))); err != nil {
		return err
	}
	seq := e.record(d, r.off, r.n, kindSync, int64(len(r.data)))
	defer since(&e.timers.network, time.Now())
	return c.queue(&protocol.Write{Disk: uint16(d.idx), Seq: seq, Offset: r.off, Flags: protocol.FlagSync | r.flags, RawLen: uint32(r.n), Data: r.data})
}

// sendData sends data read from off: as ZERO when it is all zeros,
// compressed when that pays.
func (e *engine) sendData(ctx context.Context, s *sender, d *rdisk, off int64, data []byte, flags uint8, kind int) error {
	n := int64(len(data))
	if zeros.Is(data) {
		seq := e.record(d, off, n, kind, 0)
		return s.c.queue(&protocol.Zero{Disk: uint16(d.idx), Seq: seq, Offset: off, Length: n, Flags: flags})
	}
	t0 := time.Now()
	payload, ok := data, false
	if s.gate.try() {
		payload, ok = s.comp.Compress(data, s.zbuf)
		s.gate.result(ok)
	}
	since(&e.timers.read, t0)
	if ok {
		s.zbuf = payload[:0]
		flags |= protocol.FlagZstd
	}
	if err := e.waitCredit(ctx, s.c, int64(len(payload))); err != nil {
		return err
	}
	seq := e.record(d, off, n, kind, int64(len(payload)))
	defer since(&e.timers.network, time.Now())
	return s.c.queue(&protocol.Write{Disk: uint16(d.idx), Seq: seq, Offset: off, Flags: flags, RawLen: uint32(n), Data: payload})
}

// compressGate stops trying to compress a stream of incompressible
// records (random or already compressed data): after gateFails failures
// in a row it tries one record in gateProbe, until one compresses again.
// Compressing 4 KiB of random data that then goes out as it was cost the
// agent about a fifth of its CPU under random writes; a stream that turns
// compressible again is noticed within gateProbe records.
type compressGate struct {
	fails int // failures in a row
	skip  int // records to send without trying
}

const (
	gateFails = 8
	gateProbe = 16
)

// try reports whether to try compressing the next record.
func (g *compressGate) try() bool {
	if g.skip > 0 {
		g.skip--
		return false
	}
	return true
}

// result notes whether a tried record compressed.
func (g *compressGate) result(ok bool) {
	if ok {
		g.fails = 0
		return
	}
	g.fails++
	if g.fails >= gateFails {
		g.skip = gateProbe - 1
	}
}
