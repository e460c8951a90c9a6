package connector

import (
	"context"
	"fmt"
	"time"

	"github.com/ferrymigrate/ferry/internal/zeros"
	"github.com/ferrymigrate/ferry/nbd"
	"github.com/ferrymigrate/ferry/protocol"
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
	comp, err := protocol.NewCompressor()
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
		flags |= protocol.FlagZstd
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
// hashes and sends the runs of blocks that differ.
func (cp *copier) rescan(ctx context.Context) error {
	var id uint32
	var local []byte
	buf := make([]byte, rescanRange)
	for off := int64(0); off < cp.size; off += rescanRange {
		length := min(int64(rescanRange), cp.size-off)
		hb := int64(rescanBlock)
		if length%hb != 0 {
			hb = cp.bs
		}
		id++
		reply, err := cp.s.link.hashRequest(ctx, &protocol.HashRequest{ID: uint32(time.Now().UnixNano()) ^ id, Disk: uint16(cp.p.i),
			Offset: off, Length: length, BlockSize: uint32(hb), Algo: protocol.HashBLAKE3})
		if err != nil {
			return fmt.Errorf("rescan: %w", err)
		}
		if reply.Count() != int(length/hb) {
			return fmt.Errorf("rescan: %d hashes for %d blocks", reply.Count(), length/hb)
		}
		b := buf[:length]
		for at := int64(0); at < length; at += 4 << 20 {
			n := min(4<<20, length-at)
			if _, err := cp.c.ReadAt(b[at:at+n], off+at); err != nil {
				return err
			}
		}
		cp.p.res.ReadBytes += length
		runStart := int64(-1)
		flush := func(end int64) error {
			if runStart < 0 {
				return nil
			}
			s := runStart
			runStart = -1
			cp.p.res.TrackedBytes += end - s
			for at := s; at < end; at += int64(len(cp.buf)) {
				if err := cp.sendData(ctx, off+at, b[at:min(end, at+int64(len(cp.buf)))], protocol.FlagRescan); err != nil {
					return err
				}
			}
			return nil
		}
		for i := int64(0); i < length; i += hb {
			local = protocol.AppendBlockHash(local[:0], protocol.HashBLAKE3, b[i:i+hb])
			if string(local) != string(reply.Hash(int(i/hb))) {
				if runStart < 0 {
					runStart = i
				}
				continue
			}
			if err := flush(i); err != nil {
				return err
			}
		}
		if err := flush(length); err != nil {
			return err
		}
		done := off + length
		cp.s.figures(cp.p.disk.Name, func(f *diskFigures) { f.rescanned = done })
	}
	return nil
}
