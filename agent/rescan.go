package agent

import (
	"context"
	"fmt"
	"time"

	"github.com/ferrymigrate/ferry/protocol"
	"github.com/ferrymigrate/ferry/track"
)

// A rescan compares the device with the replica by block hashes and sends
// only what differs. It runs in two levels: each rescanRange is compared
// in rescanBlock blocks (a reply of 32 bytes per 32 KiB), and the blocks
// that differ are compared again at the replica's block size before any
// data goes. One changed 4 KiB block then costs 4 KiB on the wire, not
// 32 KiB, while the hashes of a whole disk stay at 1/1024 of its size.
//
// The replica hashes the next range while the agent reads and compares
// this one, so the two sides' reads and hashing overlap instead of taking
// turns.
const (
	// refineBytes bounds the differing coarse blocks held in memory for
	// their second comparison.
	refineBytes = 2 << 20
	// maxHashPending bounds the HASH_REQUESTs in flight: one range ahead,
	// the range being compared, and one request per held block. The reply
	// channel holds that many, so the read loop never blocks on it (it
	// must keep reading ACKs and CREDIT while the send loop waits for
	// credit).
	maxHashPending = refineBytes/rescanBlock + 2
)

// hashWant is a HASH_REQUEST in flight.
type hashWant struct {
	id       uint32
	off, len int64
	bs       int64
}

// askHashes queues a HASH_REQUEST for [off, off+length) in blocks of bs;
// the caller flushes.
func (e *engine) askHashes(s *sender, d *rdisk, off, length, bs int64) (hashWant, error) {
	s.hashID++
	w := hashWant{id: s.hashID, off: off, len: length, bs: bs}
	if s.asked == nil {
		s.asked = map[uint32]bool{}
		s.early = map[uint32]*protocol.HashReply{}
	}
	s.asked[w.id] = true
	err := s.c.queue(&protocol.HashRequest{ID: w.id, Disk: uint16(d.idx), Offset: off, Length: length, BlockSize: uint32(bs), Algo: protocol.HashBLAKE3})
	return w, err
}

// awaitHashes returns the reply to w. The server answers in the order it
// was asked, and the next range's hashes are asked for before this range's
// second comparison, so a reply may come before the one awaited: it is
// kept until its turn. A reply to nothing asked is a protocol error.
func (e *engine) awaitHashes(ctx context.Context, s *sender, d *rdisk, w hashWant) (*protocol.HashReply, error) {
	// The server hashes its replica while we wait: network (and staging
	// read), not the source.
	t0 := time.Now()
	r := s.early[w.id]
	delete(s.early, w.id)
	for r == nil {
		select {
		case got := <-s.hashes:
			switch {
			case got.ID == w.id:
				r = got
			case s.asked[got.ID] && s.early[got.ID] == nil:
				s.early[got.ID] = got
			default:
				return nil, fmt.Errorf("rescan of %s: HASH_REPLY %d answers no request", d.dev.name, got.ID)
			}
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	delete(s.asked, w.id)
	since(&e.timers.network, t0)
	if r.Offset != w.off || int64(r.BlockSize) != w.bs || r.Algo != protocol.HashBLAKE3 || int64(r.Count()) != w.len/w.bs {
		return nil, fmt.Errorf("rescan of %s: HASH_REPLY %d has %d hashes of %d-byte blocks at %d, want %d of %d at %d",
			d.dev.name, r.ID, r.Count(), r.BlockSize, r.Offset, w.len/w.bs, w.bs, w.off)
	}
	return r, nil
}

// rescanBlockSize is the coarse block size for [off, off+length): the
// largest of rescanBlock, the replica's block size and the device's
// logical block size that the range is aligned to.
func rescanBlockSize(d *rdisk, off, length int64) int64 {
	for _, bs := range []int64{rescanBlock, d.bs} {
		if bs > 0 && off%bs == 0 && length%bs == 0 {
			return bs
		}
	}
	return int64(d.dev.lbs)
}

// rescan compares d's pending rescan ranges with the replica, one after
// another while the replica hashes the next, until none is left or other
// work (tracked writes, a pause) comes first. A range taken from the
// rescan map is put back when the connection fails before it is done.
func (e *engine) rescan(ctx context.Context, s *sender, d *rdisk) error {
	e.mu.Lock()
	cur, _ := d.rescan.Take(0, rescanRange)
	e.mu.Unlock()
	var next track.Extent
	fail := func(err error) error {
		e.mu.Lock()
		d.rescan.Add(cur.Offset, cur.Length, time.Now())
		d.rescan.Add(next.Offset, next.Length, time.Now())
		e.mu.Unlock()
		return err
	}
	w, err := e.askHashes(s, d, cur.Offset, cur.Length, rescanBlockSize(d, cur.Offset, cur.Length))
	if err != nil {
		return fail(err)
	}
	for {
		// Ask for the next range's hashes before comparing this one,
		// unless something else should go first.
		e.mu.Lock()
		if kind, nd := e.nextWorkLocked(); kind == workRescan && nd == d {
			next, _ = d.rescan.Take(0, rescanRange)
		}
		e.mu.Unlock()
		var nw hashWant
		if next.Length > 0 {
			if nw, err = e.askHashes(s, d, next.Offset, next.Length, rescanBlockSize(d, next.Offset, next.Length)); err != nil {
				return fail(err)
			}
		}
		if err := s.c.flush(); err != nil {
			return fail(err)
		}
		if err := e.compareRange(ctx, s, d, w); err != nil {
			return fail(err)
		}
		e.mu.Lock()
		d.rescanned += cur.Length
		done := d.rescan.Bytes() == 0 && next.Length == 0
		e.mu.Unlock()
		if done {
			// The server shows the end of the rescan now, not at the next
			// STATS.
			select {
			case e.statsNow <- struct{}{}:
			default:
			}
		}
		if next.Length == 0 {
			return nil
		}
		cur, w, next = next, nw, track.Extent{}
	}
}

// compareRange compares the range w asked hashes for and sends what
// differs.
func (e *engine) compareRange(ctx context.Context, s *sender, d *rdisk, w hashWant) error {
	reply, err := e.awaitHashes(ctx, s, d, w)
	if err != nil {
		return err
	}
	hb, fine := w.bs, d.bs
	refine := fine >= int64(d.dev.lbs) && fine < hb && hb%fine == 0
	var held []int64 // offsets of the differing blocks in s.diff, in order
	piece := int64(len(s.buf)) - int64(len(s.buf))%hb
	var local []byte
	for at := w.off; at < w.off+w.len; at += piece {
		n := min(piece, w.off+w.len-at)
		b := s.buf[:n]
		t0 := time.Now()
		if err := d.dev.readAt(b, at); err != nil {
			return err
		}
		since(&e.timers.read, t0)
		err := protocol.DiffRuns(b, hb, reply, int((at-w.off)/hb), &local, func(lo, hi int64) error {
			if !refine {
				return e.sendData(ctx, s, d, at+lo, b[lo:hi], protocol.FlagRescan, kindDirty)
			}
			for j := lo; j < hi; j += hb {
				if int64(len(s.diff))+hb > refineBytes {
					if err := e.refine(ctx, s, d, held, hb, fine); err != nil {
						return err
					}
					held = held[:0]
				}
				s.diff = append(s.diff, b[j:j+hb]...)
				held = append(held, at+j)
			}
			return nil
		})
		if err != nil {
			return err
		}
	}
	if len(held) > 0 {
		return e.refine(ctx, s, d, held, hb, fine)
	}
	return nil
}

// refine compares the held blocks (offsets held, data in s.diff, each hb
// bytes) with the replica at the fine block size and sends the fine
// blocks that differ. Adjacent held blocks share one request.
func (e *engine) refine(ctx context.Context, s *sender, d *rdisk, held []int64, hb, fine int64) error {
	defer func() { s.diff = s.diff[:0] }()
	type run struct {
		first, n int // indexes into held
		w        hashWant
	}
	var runs []run
	for i := 0; i < len(held); {
		j := i + 1
		for j < len(held) && held[j] == held[j-1]+hb {
			j++
		}
		w, err := e.askHashes(s, d, held[i], int64(j-i)*hb, fine)
		if err != nil {
			return err
		}
		runs = append(runs, run{first: i, n: j - i, w: w})
		i = j
	}
	if err := s.c.flush(); err != nil {
		return err
	}
	var local []byte
	for _, r := range runs {
		reply, err := e.awaitHashes(ctx, s, d, r.w)
		if err != nil {
			return err
		}
		data := s.diff[int64(r.first)*hb : int64(r.first+r.n)*hb]
		err = protocol.DiffRuns(data, fine, reply, 0, &local, func(lo, hi int64) error {
			return e.sendData(ctx, s, d, r.w.off+lo, data[lo:hi], protocol.FlagRescan, kindDirty)
		})
		if err != nil {
			return err
		}
	}
	return nil
}
