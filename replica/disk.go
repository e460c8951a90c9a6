package replica

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ferrymigrate/ferry/internal/zeros"
	"github.com/ferrymigrate/ferry/replica/backend"
)

// Consistency says what a barrier (and a snapshot taken at it) guarantees.
type Consistency uint8

// Consistency levels. AppConsistent implies CrashConsistent.
const (
	// Inconsistent: a point between barriers; the file system may need repair.
	Inconsistent Consistency = 0
	// CrashConsistent: every write issued before the barrier is included,
	// as after a power cut.
	CrashConsistent Consistency = 1
	// AppConsistent: the agent froze the file system (and applications) at
	// the barrier.
	AppConsistent Consistency = 2
)

// String returns "inconsistent", "crash-consistent" or "app-consistent".
func (c Consistency) String() string {
	switch c {
	case Inconsistent:
		return "inconsistent"
	case CrashConsistent:
		return "crash-consistent"
	case AppConsistent:
		return "app-consistent"
	}
	return fmt.Sprintf("consistency(%d)", uint8(c))
}

// diskMeta is the sealed "disks/<id>" object.
type diskMeta struct {
	ID        string    `json:"id"`
	Size      int64     `json:"size"` // size at creation; later sizes are in the journal and maps
	BlockSize int       `json:"block_size"`
	Created   time.Time `json:"created"`
}

// Disk is one replicated source disk: a journal of writes and the block
// maps and snapshots folded from it. All methods are safe for concurrent
// use, but writes must be submitted in sequence-number order (see Append).
type Disk struct {
	s    *Store
	id   string
	meta diskMeta
	dir  string
	j    *journal
	kick chan struct{}
	// pending estimates the journal bytes not folded yet (unfoldedBytes,
	// kept current by the appends) so a write can start a fold at
	// FoldBytes without every disk polling its journal.
	pending atomic.Int64

	// foldMu serializes folds, snapshot creation and deletion, and map pruning.
	foldMu sync.Mutex

	mu        sync.Mutex
	maps      []uint64                // published map sequence numbers, ascending; guarded by mu
	roots     map[uint64]*blockMap    // decoded map roots; guarded by mu
	pins      map[uint64]int          // maps in use by readers; guarded by mu
	trimmed   uint64                  // highest sequence number cut from the journal; guarded by mu
	snaps     map[string]SnapshotInfo // guarded by mu
	retention RetentionPolicy         // guarded by mu
	foldErr   error                   // last background fold error; guarded by mu
	deleted   bool                    // DeleteDisk ran; guarded by mu
	stop      chan struct{}           // closed by DeleteDisk: the folder ends
}

// gone returns an error wrapping ErrNotFound once the disk is deleted.
func (d *Disk) gone() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.deleted {
		return fmt.Errorf("disk %s: deleted: %w", d.id, ErrNotFound)
	}
	return nil
}

// ID returns the disk's id.
func (d *Disk) ID() string { return d.id }

// BlockSize returns the disk's block size: offsets and lengths of writes
// are multiples of it.
func (d *Disk) BlockSize() int { return d.meta.BlockSize }

// Size returns the disk's size after the last accepted write or resize.
func (d *Disk) Size() int64 {
	d.j.mu.Lock()
	defer d.j.mu.Unlock()
	return d.j.size
}

// DurableSeq returns the sequence number up to which every accepted record
// is durable; an agent resumes sending after it.
func (d *Disk) DurableSeq() uint64 { return d.j.durableSeq() }

// CreateDisk creates a disk of size bytes tracked in blocks of blockSize
// (a power of two from 512 to the chunk size; 0 means 4096). It fails with
// an error wrapping ErrExists if the id is taken.
func (s *Store) CreateDisk(ctx context.Context, id string, size int64, blockSize int) (*Disk, error) {
	if !ValidDiskID(id) {
		return nil, fmt.Errorf("create disk: invalid id %q", id)
	}
	if blockSize == 0 {
		blockSize = 4096
	}
	if blockSize < 512 || blockSize > s.cfg.ChunkSize || blockSize&(blockSize-1) != 0 {
		return nil, fmt.Errorf("create disk: block size %d is not a power of two from 512 to the chunk size", blockSize)
	}
	if size < 0 || size > maxDiskSize || size%int64(blockSize) != 0 {
		return nil, fmt.Errorf("create disk: size %d is not a multiple of the block size up to 1 PiB: %w", size, ErrUnaligned)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil, ErrClosed
	}
	if _, ok := s.disks[id]; ok {
		return nil, fmt.Errorf("create disk %q: %w", id, ErrExists)
	}
	// A journal left by a creation that crashed before the metadata was
	// written holds nothing acknowledged, and maps or snapshots of a disk
	// of the same id whose deletion was cut short are not this disk's.
	if err := s.removeLeftovers(ctx, id); err != nil {
		return nil, fmt.Errorf("create disk: %w", err)
	}
	meta := diskMeta{ID: id, Size: size, BlockSize: blockSize, Created: s.opts.Now().UTC()}
	raw, err := json.Marshal(meta)
	if err != nil {
		return nil, err
	}
	if err := s.be.Put(ctx, "disks/"+id, s.sl.seal("disks/"+id, kindDisk, raw)); err != nil {
		return nil, backendErr("create disk", err)
	}
	d, err := s.newDisk(meta, nil)
	if err != nil {
		return nil, fmt.Errorf("create disk: %w", err)
	}
	s.disks[id] = d
	s.startFolder(d)
	return d, nil
}

func (s *Store) newDisk(meta diskMeta, maps []uint64) (*Disk, error) {
	dir := filepath.Join(s.opts.Dir, "disks", meta.ID)
	hooks := chunkHooks{chunkSize: int64(s.cfg.ChunkSize), newBatch: s.newChunkBatch, ref: s.refChunks, unref: s.unrefChunks, sync: s.syncer.sync}
	jdir := filepath.Join(dir, "journal")
	if err := os.MkdirAll(jdir, 0o700); err != nil {
		return nil, fmt.Errorf("create journal directory: %w", err)
	}
	if !s.syncer.covers(jdir) {
		hooks.sync = nil // another file system: its own fdatasyncs
	}
	j, err := openJournal(jdir, s.opts.SegmentSize, s.opts.Now, hooks, s.files)
	if err != nil {
		return nil, err
	}
	j.size, j.durSize = meta.Size, meta.Size
	d := &Disk{
		s: s, id: meta.ID, meta: meta, dir: dir, j: j, kick: make(chan struct{}, 1), stop: make(chan struct{}),
		maps: maps, roots: map[uint64]*blockMap{}, pins: map[uint64]int{},
		snaps: map[string]SnapshotInfo{}, retention: s.opts.Retention,
	}
	return d, nil
}

// loadDisk loads an existing disk: metadata, maps and snapshots from the
// backend, the journal from the staging directory.
func (s *Store) loadDisk(ctx context.Context, id string) (*Disk, error) {
	name := "disks/" + id
	raw, err := s.getSealed(ctx, name, kindDisk)
	if err != nil {
		return nil, fmt.Errorf("load disk: %w", err)
	}
	var meta diskMeta
	if err := json.Unmarshal(raw, &meta); err != nil || meta.ID != id || meta.BlockSize <= 0 {
		return nil, corrupt(name, fmt.Errorf("bad disk metadata: %v", err))
	}
	var maps []uint64
	err = s.be.List(ctx, "maps/"+id+"/", func(name string, _ int64) error {
		seq, err := strconv.ParseUint(name[strings.LastIndexByte(name, '/')+1:], 16, 64)
		if err != nil || mapName(id, seq) != name {
			return corrupt(name, errors.New("bad map name"))
		}
		maps = append(maps, seq)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("list maps of %s: %w", id, err)
	}
	sort.Slice(maps, func(a, b int) bool { return maps[a] < maps[b] })
	d, err := s.newDisk(meta, maps)
	if err != nil {
		return nil, fmt.Errorf("load disk %s: %w", id, err)
	}
	fail := func(err error) (*Disk, error) {
		d.j.close()
		return nil, fmt.Errorf("load disk %s: %w", id, err)
	}
	head, err := d.root(ctx, d.headSeq())
	if err != nil {
		return fail(err)
	}
	// Sizes and sequence numbers: the newest map, then the journal after it.
	size := head.size
	d.j.mu.Lock()
	for _, r := range d.j.rangeLocked(head.seq, ^uint64(0)) {
		if r.typ == recResize {
			size = r.off
		}
	}
	if d.j.durable < head.seq {
		d.j.durable, d.j.lastSeq = head.seq, head.seq
	}
	d.j.size, d.j.durSize = size, size
	d.j.mu.Unlock()

	d.trimmed, err = d.readTrimmed(head.seq)
	if err != nil {
		return fail(err)
	}
	if err := d.loadSnapshots(ctx); err != nil {
		return fail(err)
	}
	return d, nil
}

// readTrimmed reads the staging directory's record of the highest journal
// sequence number removed. Without one (a new or lost staging directory)
// nothing before the newest map can be trusted to be in the journal.
func (d *Disk) readTrimmed(head uint64) (uint64, error) {
	raw, err := os.ReadFile(filepath.Join(d.dir, "trimmed"))
	if errors.Is(err, os.ErrNotExist) {
		d.j.mu.Lock()
		empty := len(d.j.recs) == 0
		first := uint64(0)
		if !empty {
			first = d.j.recs[0].seq
		}
		d.j.mu.Unlock()
		if len(d.maps) == 0 || (!empty && first == 1) {
			return 0, nil
		}
		return head, nil
	}
	if err != nil {
		return 0, fmt.Errorf("read journal trim mark: %w", err)
	}
	v, err := strconv.ParseUint(strings.TrimSpace(string(raw)), 10, 64)
	if err != nil {
		return 0, corrupt(filepath.Join(d.dir, "trimmed"), err)
	}
	return v, nil
}

func (d *Disk) writeTrimmed(v uint64) error {
	tmp := filepath.Join(d.dir, "trimmed.tmp")
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return fmt.Errorf("write journal trim mark: %w", err)
	}
	_, err = f.WriteString(strconv.FormatUint(v, 10) + "\n")
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, filepath.Join(d.dir, "trimmed"))
	}
	if err == nil {
		err = syncDir(d.dir)
	}
	if err != nil {
		return journalErr("write journal trim mark", err)
	}
	return nil
}

// headSeq returns the sequence number of the newest map (0: none).
func (d *Disk) headSeq() uint64 {
	d.mu.Lock()
	defer d.mu.Unlock()
	if len(d.maps) == 0 {
		return 0
	}
	return d.maps[len(d.maps)-1]
}

// root returns the decoded map root at seq; seq 0 without a published map
// is the empty disk as created.
func (d *Disk) root(ctx context.Context, seq uint64) (*blockMap, error) {
	d.mu.Lock()
	m, ok := d.roots[seq]
	d.mu.Unlock()
	if ok {
		return m, nil
	}
	if seq == 0 {
		return &blockMap{size: d.meta.Size, chunkSize: d.s.cfg.ChunkSize, pages: make([]Hash, (numChunks(d.meta.Size, d.s.cfg.ChunkSize)+pageEntries-1)/pageEntries)}, nil
	}
	name := mapName(d.id, seq)
	raw, err := d.s.getSealed(ctx, name, kindMap)
	if err != nil {
		if errors.Is(err, backend.ErrNotFound) {
			return nil, corrupt(name, errors.New("missing"))
		}
		return nil, err
	}
	m, err = decodeMap(raw)
	if err != nil {
		return nil, corrupt(name, err)
	}
	if m.seq != seq || m.chunkSize != d.s.cfg.ChunkSize {
		return nil, corrupt(name, errors.New("map does not match its name or the store's chunk size"))
	}
	d.mu.Lock()
	d.roots[seq] = m
	d.mu.Unlock()
	return m, nil
}

// Append queues a write of data at off with sequence number seq and
// returns a Commit that reports when it is durable. It returns as soon as
// the record is queued, so one goroutine can keep many writes in flight
// (they share fsyncs: group commit) while others wait on the Commits.
//
// Sequence numbers must increase. A seq at or below the last accepted one
// is a duplicate from a resumed stream: it is ignored and the Commit
// reports when everything accepted so far is durable. off and len(data)
// must be multiples of the block size (ErrUnaligned) and inside the disk
// (ErrOutOfRange). All-zero data is recorded as a zero extent.
func (d *Disk) Append(seq uint64, off int64, data []byte) (Commit, error) {
	return d.AppendFrame(seq, off, data, Frame{})
}

// AppendFrame is Append for data that arrived compressed: frame is a
// zstd frame or S2 block the caller decoded to data. When data is one
// whole, aligned chunk, the store keeps frame as the chunk's compressed
// form instead of compressing data again, so an initial sync's
// compression is paid once, on the agent. frame must have decoded to data
// (a zstd frame under a decoder that allows no window or output beyond
// MaxFrameBytes); the store, whose decoders allow that much, does not
// decode it again. Chunks are shared by content across all disks, so a
// frame the store's decoder would refuse would break every disk holding
// that content. The zero Frame is Append. The store does not read
// frame's data beyond this call.
func (d *Disk) AppendFrame(seq uint64, off int64, data []byte, frame Frame) (Commit, error) {
	if len(data) > maxExtent {
		return Commit{}, fmt.Errorf("write: extent of %d bytes exceeds %d", len(data), maxExtent)
	}
	r := record{typ: recWrite, seq: seq, off: off, length: int64(len(data))}
	payload := data
	if zeros.Is(data) {
		r.typ, payload = recZero, nil
	} else if cs := int64(d.s.cfg.ChunkSize); off%cs == 0 && r.length%cs == 0 && seq > 0 {
		if r.length != cs {
			frame = Frame{}
		}
		return d.appendChunks(r, data, frame)
	}
	return d.append(r, payload)
}

// Write appends a write like Append and waits until it is durable.
func (d *Disk) Write(ctx context.Context, seq uint64, off int64, data []byte) error {
	c, err := d.Append(seq, off, data)
	if err != nil {
		return err
	}
	return c.Wait(ctx)
}

// AppendZeroes queues a record that length bytes at off are zero, without data.
func (d *Disk) AppendZeroes(seq uint64, off, length int64) (Commit, error) {
	return d.append(record{typ: recZero, seq: seq, off: off, length: length}, nil)
}

// WriteZeroes records that length bytes at off are zero and waits until
// the record is durable. length may exceed the largest data extent.
func (d *Disk) WriteZeroes(ctx context.Context, seq uint64, off, length int64) error {
	c, err := d.AppendZeroes(seq, off, length)
	if err != nil {
		return err
	}
	return c.Wait(ctx)
}

// Barrier records a consistency point (CrashConsistent or AppConsistent)
// after every write with a lower sequence number and waits until it is durable.
func (d *Disk) Barrier(ctx context.Context, seq uint64, c Consistency) error {
	if c != CrashConsistent && c != AppConsistent {
		return fmt.Errorf("barrier: consistency %v is not crash- or app-consistent", c)
	}
	cm, err := d.append(record{typ: recBarrier, flag: byte(c), seq: seq}, nil)
	if err != nil {
		return err
	}
	return cm.Wait(ctx)
}

// Resize grows the disk to newSize bytes (a multiple of the block size) at
// sequence number seq and waits until that is durable. Disks cannot shrink.
func (d *Disk) Resize(ctx context.Context, seq uint64, newSize int64) error {
	cm, err := d.append(record{typ: recResize, seq: seq, off: newSize}, nil)
	if err != nil {
		return err
	}
	return cm.Wait(ctx)
}

func (d *Disk) append(r record, payload []byte) (Commit, error) {
	if r.seq == 0 {
		return Commit{}, errors.New("append: sequence number 0 is reserved")
	}
	c, _, err := d.j.append(r, payload, d.check(r), nil)
	if err != nil {
		return Commit{}, fmt.Errorf("disk %s: %w", d.id, err)
	}
	n := int64(recHeaderSize)
	if r.typ == recWrite {
		n += r.length
	}
	d.appended(n)
	return c, nil
}

// appended counts n more unfolded journal bytes and wakes the folder once
// they reach FoldBytes.
func (d *Disk) appended(n int64) {
	if d.pending.Add(n) >= d.s.opts.FoldBytes && d.s.opts.FoldInterval >= 0 {
		select {
		case d.kick <- struct{}{}:
		default:
		}
	}
}

// check returns the validation of r against the disk's size.
func (d *Disk) check(r record) func(size int64) error {
	bs := int64(d.meta.BlockSize)
	return func(size int64) error {
		switch r.typ {
		case recWrite, recZero, recChunks:
			if r.off%bs != 0 || r.length%bs != 0 || r.length == 0 {
				return fmt.Errorf("write %d bytes at %d: %w (%d)", r.length, r.off, ErrUnaligned, bs)
			}
			if r.off < 0 || r.off > size || r.length > size-r.off {
				return fmt.Errorf("write %d bytes at %d of a %d-byte disk: %w", r.length, r.off, size, ErrOutOfRange)
			}
		case recResize:
			if r.off%bs != 0 || r.off > maxDiskSize {
				return fmt.Errorf("resize to %d: %w (%d)", r.off, ErrUnaligned, bs)
			}
			if r.off < size {
				return fmt.Errorf("resize from %d to %d: disks cannot shrink: %w", size, r.off, ErrOutOfRange)
			}
		}
		return nil
	}
}

// chunkBufs holds chunk-sized copies of data for chunk jobs.
var chunkBufs sync.Pool

// appendChunks queues a write of whole, aligned chunks as a recChunks
// record: the chunks are hashed, compressed, sealed and staged in
// parallel, made durable with the record's group commit, and only the
// hashes go to the journal. The data is written once, compressed, instead
// of raw to the journal and again by the fold. frame, when it has data,
// is data (one chunk) compressed, to keep as the chunk's stored form.
func (d *Disk) appendChunks(r record, data []byte, frame Frame) (Commit, error) {
	cs := int64(d.s.cfg.ChunkSize)
	n := int(r.length / cs)
	job := &chunkJob{hashes: make([]Hash, n)}
	job.wg.Add(n)
	r.typ = recChunks
	c, cb, err := d.j.append(r, nil, d.check(r), job)
	if err != nil {
		return Commit{}, fmt.Errorf("disk %s: %w", d.id, err)
	}
	if cb == nil { // a duplicate: nothing to store
		return c, nil
	}
	d.appended(recHeaderSize)
	for i := 0; i < n; i++ {
		part := data[int64(i)*cs : int64(i+1)*cs]
		if zeros.Is(part) {
			job.wg.Done()
			continue
		}
		bp, _ := chunkBufs.Get().(*[]byte)
		if bp == nil || cap(*bp) < int(cs) {
			b := make([]byte, cs)
			bp = &b
		}
		// The frame shares the chunk's buffer, after the content, so
		// that one copy keeps both past this call.
		buf := append((*bp)[:0], part...)
		z := Frame{Codec: frame.Codec}
		if frame.Data != nil {
			buf = append(buf, frame.Data...)
		}
		*bp = buf[:0]
		if frame.Data != nil {
			buf, z.Data = buf[:cs:cs], buf[cs:]
		}
		d.s.sealSlots <- struct{}{}
		go func() {
			defer job.wg.Done()
			defer func() { <-d.s.sealSlots }()
			defer chunkBufs.Put(bp)
			h, err := d.s.storeChunk(context.Background(), cb, buf, z, true)
			if err != nil {
				job.fail(fmt.Errorf("disk %s: %w", d.id, err))
				return
			}
			job.hashes[i] = h
		}()
	}
	return c, nil
}

// startFolder runs the disk's background fold loop.
func (s *Store) startFolder(d *Disk) {
	if s.opts.FoldInterval < 0 {
		return
	}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		// The first timed fold comes at a random point of the interval, so
		// the disks of a server (opened together at start, or created as
		// a fleet of agents connects) do not all fold in the same second.
		t := time.NewTimer(rand.N(s.foldInterval()) + 1)
		defer t.Stop()
		if d.pending.Add(d.unfoldedBytes()) >= s.opts.FoldBytes {
			d.appended(0)
		}
		for {
			select {
			case <-s.ctx.Done():
				return
			case <-d.stop:
				return
			case <-t.C:
				t.Reset(s.foldInterval())
			case <-d.kick:
			}
			// Folds of many disks at once only contend for the same
			// device and CPUs, each holding its chunk buffers meanwhile.
			select {
			case s.foldSlots <- struct{}{}:
			case <-s.ctx.Done():
				return
			}
			err := d.Fold(s.ctx)
			<-s.foldSlots
			d.mu.Lock()
			d.foldErr = err
			d.mu.Unlock()
			if err != nil && s.ctx.Err() == nil {
				s.opts.Logf("replica: fold disk %s: %v", d.id, err)
			}
		}
	}()
}

// maxTimedFolds bounds the timed folds a store starts per second: a
// fold reads, hashes, compresses and seals every chunk a write touched
// since the last one, so a server with 10,000 mostly idle disks folding
// each every 10 s would spend its CPU rewriting the same chunks.
const maxTimedFolds = 50

// foldInterval is the time between a disk's timed folds: FoldInterval,
// stretched so the store's disks together fold at most maxTimedFolds
// times a second (200 s with 10,000 disks). Busy disks still fold early
// at FoldBytes, and snapshots fold when they are taken.
func (s *Store) foldInterval() time.Duration {
	s.mu.Lock()
	n := len(s.disks)
	s.mu.Unlock()
	return max(s.opts.FoldInterval, time.Duration(n)*time.Second/maxTimedFolds)
}

// unfoldedBytes estimates the journal bytes not yet folded.
func (d *Disk) unfoldedBytes() int64 {
	head := d.headSeq()
	d.j.mu.Lock()
	defer d.j.mu.Unlock()
	var n int64
	for _, r := range d.j.rangeLocked(head, ^uint64(0)) {
		n += recHeaderSize
		if r.typ == recWrite {
			n += r.length
		}
	}
	return n
}

// FoldError returns the error of the last background fold, or nil.
func (d *Disk) FoldError() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.foldErr
}
