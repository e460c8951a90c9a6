package connector

import (
	"context"
	"fmt"

	"github.com/ferrymigrate/ferry/internal/zeros"
	"github.com/ferrymigrate/ferry/nbd"
	"github.com/ferrymigrate/ferry/protocol"
	"golang.org/x/sync/errgroup"
)

// Rescan geometry: one HASH_REQUEST per range, one hash per block.
const (
	rescanRange = 16 << 20
	rescanBlock = 64 << 10
)

// extent is a byte range of a disk.
type extent struct{ off, len int64 }

// copier sends one disk's extents of one run.
type copier struct {
	s    *Source
	p    *plan
	c    *nbd.Client
	bs   int64 // replica block size
	size int64 // replica-aligned size
	// fresh says the replica has never held data, so zeros need not be
	// sent.
	fresh bool
	comp  *protocol.Compressor
	buf   []byte
	zbuf  []byte
}

func (s *Source) copyDisk(ctx context.Context, p *plan, sock string) error {
	meta := []string{"base:allocation"}
	dirtyCtx := ""
	if p.tmp != "" {
		dirtyCtx = "qemu:dirty-bitmap:" + p.tmp
		meta = append(meta, dirtyCtx)
	}
	c, err := nbd.DialClient(ctx, "unix:"+sock, p.export, meta...)
	if err != nil {
		return err
	}
	defer c.Close()
	if dirtyCtx != "" && !c.HasContext(dirtyCtx) {
		return fmt.Errorf("QEMU did not export dirty bitmap %s", p.tmp)
	}
	// Whole-disk copies are bound by the CPU, not the link, at LAN
	// speeds: they go as S2 where the server decodes it (see
	// agent.Options.SyncCodec); the incremental copies of changes, as zstd.
	codec := protocol.Zstd
	if p.mode != ModeIncremental {
		codec = protocol.BulkCodec(s.link.hello.ProtocolVersion)
	}
	comp, err := protocol.NewCompressor(codec)
	if err != nil {
		return err
	}
	a := s.link.hello.Disks[p.i]
	bs := max(int64(a.BlockSize), 512)
	cp := &copier{s: s, p: p, c: c, bs: bs, size: min(c.Size(), p.disk.Size) / bs * bs,
		fresh: a.DurableSeq == 0 && p.ds.AckedSeq == 0, comp: comp, buf: make([]byte, s.chunk())}
	phase := map[Mode]protocol.Phase{ModeFull: protocol.PhaseInitialSync, ModeIncremental: protocol.PhaseBacklog, ModeRescan: protocol.PhaseRescan}[p.mode]
	if p.ds.Synced && p.mode == ModeIncremental {
		phase = protocol.PhaseContinuous
	}
	s.figures(p.disk.Name, func(f *diskFigures) { f.phase, f.rescanned = phase, 0 })
	switch p.mode {
	case ModeFull:
		return cp.full(ctx)
	case ModeIncremental:
		return cp.incremental(ctx, dirtyCtx)
	default:
		return cp.rescan(ctx)
	}
}

func (s *Source) chunk() int {
	if s.ChunkSize <= 0 {
		return 1 << 20
	}
	return min(s.ChunkSize, protocol.MaxPayload)
}

// align widens an extent to whole replica blocks within the disk.
func (cp *copier) align(off, length int64) extent {
	start := off / cp.bs * cp.bs
	end := min((off+length+cp.bs-1)/cp.bs*cp.bs, cp.size)
	return extent{start, max(end-start, 0)}
}

// full copies what base:allocation reports as data; holes are skipped on
// a fresh replica and zeroed on one that may hold older data.
func (cp *copier) full(ctx context.Context) error {
	st, err := cp.c.BlockStatus("base:allocation", 0, cp.size)
	if err != nil {
		return err
	}
	for _, e := range st {
		x := cp.align(e.Offset, e.Length)
		if x.len == 0 {
			continue
		}
		if e.Flags&nbd.StateZero != 0 {
			if !cp.fresh {
				if err := cp.zero(x.off, x.len, protocol.FlagSync); err != nil {
					return err
				}
			}
		} else {
			cp.p.res.TrackedBytes += x.len
			if err := cp.copyExtent(ctx, x, protocol.FlagSync); err != nil {
				return err
			}
		}
		cp.s.figures(cp.p.disk.Name, func(f *diskFigures) { f.replicated = x.off + x.len })
	}
	return nil
}

// incremental copies what the exported dirty bitmap reports.
func (cp *copier) incremental(ctx context.Context, dirtyCtx string) error {
	st, err := cp.c.BlockStatus(dirtyCtx, 0, cp.size)
	if err != nil {
		return err
	}
	var dirty []extent
	var total int64
	for _, e := range st {
		if e.Flags&nbd.StateDirty == 0 {
			continue
		}
		x := cp.align(e.Offset, e.Length)
		if n := len(dirty); n > 0 && dirty[n-1].off+dirty[n-1].len >= x.off {
			end := max(dirty[n-1].off+dirty[n-1].len, x.off+x.len)
			total += end - (dirty[n-1].off + dirty[n-1].len)
			dirty[n-1].len = end - dirty[n-1].off
			continue
		}
		if x.len > 0 {
			dirty = append(dirty, x)
			total += x.len
		}
	}
	cp.p.res.TrackedBytes = total
	left := total
	cp.s.figures(cp.p.disk.Name, func(f *diskFigures) { f.backlog = left })
	for _, x := range dirty {
		if err := cp.copyExtent(ctx, x, 0); err != nil {
			return err
		}
		left -= x.len
		cp.s.figures(cp.p.disk.Name, func(f *diskFigures) { f.backlog = left })
	}
	return nil
}

// copyExtent reads x in chunks and sends each as WRITE (ZERO when it
// reads as zeros and the replica may hold data there).
func (cp *copier) copyExtent(ctx context.Context, x extent, flags uint8) error {
	for at := x.off; at < x.off+x.len; {
		n := min(int64(len(cp.buf)), x.off+x.len-at)
		b := cp.buf[:n]
		if _, err := cp.c.ReadAt(b, at); err != nil {
			return err
		}
		cp.p.res.ReadBytes += n
		if err := cp.sendData(ctx, at, b, flags); err != nil {
			return err
		}
		at += n
	}
	return nil
}

func (cp *copier) sendData(ctx context.Context, off int64, b []byte, flags uint8) error {
	if zeros.Is(b) {
		if cp.fresh && flags&protocol.FlagSync != 0 {
			return nil
		}
		return cp.zero(off, int64(len(b)), flags)
	}
	payload, ok := cp.comp.Compress(b, cp.zbuf)
	if ok {
		cp.zbuf = payload[:0]
		flags |= cp.comp.Codec().Flag()
	}
	l := cp.s.link
	if err := l.waitToSend(ctx, int64(len(payload))); err != nil {
		return err
	}
	seq := cp.s.next[cp.p.i]
	cp.s.next[cp.p.i]++
	l.note(cp.p.i, seq, int64(len(payload)))
	if err := l.send(&protocol.Write{Disk: uint16(cp.p.i), Seq: seq, Offset: off, Flags: flags, RawLen: uint32(len(b)), Data: payload}); err != nil {
		return err
	}
	l.sent.Add(int64(len(payload)))
	cp.p.res.SentBytes += int64(len(payload))
	cp.p.res.RawSentBytes += int64(len(b))
	return nil
}

func (cp *copier) zero(off, length int64, flags uint8) error {
	seq := cp.s.next[cp.p.i]
	cp.s.next[cp.p.i]++
	cp.s.link.note(cp.p.i, seq, 0)
	return cp.s.link.send(&protocol.Zero{Disk: uint16(cp.p.i), Seq: seq, Offset: off, Length: length, Flags: flags})
}

// rescan compares every block of the point in time with the replica's
// hashes and sends only what differs. Like the agent's, it compares in
// two levels: each rescanRange in rescanBlock blocks (a reply of 32 bytes
// per 64 KiB), then the runs of blocks that differ again at the
// replica's block size, so a changed 4 KiB block costs 4 KiB on the wire,
// not 64 KiB.
func (cp *copier) rescan(ctx context.Context) error {
	var local []byte
	buf := make([]byte, rescanRange)
	for off := int64(0); off < cp.size; off += rescanRange {
		length := min(int64(rescanRange), cp.size-off)
		hb := int64(rescanBlock)
		if length%hb != 0 {
			hb = cp.bs
		}
		reply, err := cp.hashes(ctx, off, length, hb)
		if err != nil {
			return fmt.Errorf("rescan: %w", err)
		}
		b := buf[:length]
		for at := int64(0); at < length; at += 4 << 20 {
			n := min(4<<20, length-at)
			if _, err := cp.c.ReadAt(b[at:at+n], off+at); err != nil {
				return err
			}
		}
		cp.p.res.ReadBytes += length
		var runs []extent // byte ranges of b
		err = protocol.DiffRuns(b, hb, reply, 0, &local, func(lo, hi int64) error {
			runs = append(runs, extent{lo, hi - lo})
			return nil
		})
		if err != nil {
			return fmt.Errorf("rescan: %w", err)
		}
		if err := cp.refine(ctx, off, b, runs, hb); err != nil {
			return err
		}
		done := off + length
		cp.s.figures(cp.p.disk.Name, func(f *diskFigures) { f.rescanned = done })
	}
	return nil
}

// refineRequests bounds the second-level HASH_REQUESTs of one range in
// flight at once.
const refineRequests = 16

// refine compares runs (byte ranges of b, which holds the disk from off)
// whose coarse hashes differ again at the replica's block size, all
// runs' requests in flight together, and sends the blocks that differ.
// Where the replica's blocks are no finer than hb, it sends the runs.
func (cp *copier) refine(ctx context.Context, off int64, b []byte, runs []extent, hb int64) error {
	fine := cp.bs
	if fine <= 0 || fine >= hb || hb%fine != 0 {
		for _, r := range runs {
			if err := cp.sendRun(ctx, off+r.off, b[r.off:r.off+r.len]); err != nil {
				return err
			}
		}
		return nil
	}
	replies := make([]*protocol.HashReply, len(runs))
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(refineRequests)
	for i, r := range runs {
		g.Go(func() error {
			var err error
			replies[i], err = cp.hashes(gctx, off+r.off, r.len, fine)
			return err
		})
	}
	if err := g.Wait(); err != nil {
		return fmt.Errorf("rescan: %w", err)
	}
	var local []byte
	for i, r := range runs {
		data := b[r.off : r.off+r.len]
		err := protocol.DiffRuns(data, fine, replies[i], 0, &local, func(lo, hi int64) error {
			return cp.sendRun(ctx, off+r.off+lo, data[lo:hi])
		})
		if err != nil {
			return err
		}
	}
	return nil
}

// hashes asks the replica for the hashes of [off, off+length) in blocks
// of bs and checks that the reply has one per block.
func (cp *copier) hashes(ctx context.Context, off, length, bs int64) (*protocol.HashReply, error) {
	reply, err := cp.s.link.hashRequest(ctx, &protocol.HashRequest{ID: cp.s.link.nextHashID(), Disk: uint16(cp.p.i),
		Offset: off, Length: length, BlockSize: uint32(bs), Algo: protocol.HashBLAKE3})
	if err != nil {
		return nil, err
	}
	if reply.Count() != int(length/bs) {
		return nil, fmt.Errorf("%d hashes for %d blocks", reply.Count(), length/bs)
	}
	return reply, nil
}

// sendRun sends data, which differs from the replica at off, in pieces
// of at most a buffer.
func (cp *copier) sendRun(ctx context.Context, off int64, data []byte) error {
	cp.p.res.TrackedBytes += int64(len(data))
	for at := int64(0); at < int64(len(data)); at += int64(len(cp.buf)) {
		if err := cp.sendData(ctx, off+at, data[at:min(int64(len(data)), at+int64(len(cp.buf)))], protocol.FlagRescan); err != nil {
			return err
		}
	}
	return nil
}
