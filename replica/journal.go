package replica

import (
	"bufio"
	"container/list"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

const (
	segMagic      = "FRYJRNL1"
	segHeaderSize = 16 // magic, first sequence number (uint64 LE)
	// maxPending bounds the bytes queued for the next group commit; Append
	// blocks while the queue is fuller than this and a commit is running.
	maxPending = 64 << 20
)

// segment is one journal file. Its records are indexed in journal.recs.
type segment struct {
	path  string
	first uint64 // sequence number in the name

	// guarded by segFiles.mu
	f     *os.File      // nil while closed
	users int           // acquires not released
	elem  *list.Element // in segFiles.idle while open and unused
	dead  bool          // dropped: never opened again

	// guarded by journal.mu
	size     int64 // bytes of valid records, header included
	last     uint64
	lastTime int64
	refs     int  // readers using its records
	removed  bool // unlinked (or the journal closed); dropped when refs drops to 0
	held     bool // removed with refs: an acquire keeps the unlinked file open
	broken   bool // a failed append left bytes past size
}

// jrec is a durable journal record and where its payload lives.
type jrec struct {
	record
	seg    *segment
	pos    int64  // file offset of the payload
	hashes []Hash // recChunks: the chunks, one per chunk size of length
}

// chunkJob stores the chunks of one recChunks record (hashing, sealing and
// staging them in the batch's chunkBatch, in parallel); the flusher waits
// for it and makes the chunks durable before the record.
type chunkJob struct {
	wg     sync.WaitGroup
	mu     sync.Mutex
	hashes []Hash // set by the job; each non-zero one holds a journal reference
	err    error
}

func (cj *chunkJob) fail(err error) {
	cj.mu.Lock()
	if cj.err == nil {
		cj.err = err
	}
	cj.mu.Unlock()
}

// pendingJob is a recChunks record of a batch whose hashes are not known yet.
type pendingJob struct {
	rec int // index in batch.recs
	pos int // offset of the record in batch.buf
	job *chunkJob
}

// chunkHooks connect a journal to the store's chunks: the batch that makes
// a group commit's chunks durable, and the count of journal references
// that keeps GC from deleting a chunk only the journal references.
type chunkHooks struct {
	chunkSize int64
	newBatch  func() *chunkBatch
	ref       func([]Hash)
	unref     func([]Hash)
	// sync makes a segment's appended bytes durable (Store.syncer; a
	// plain fdatasync when nil).
	sync func(*os.File) error
}

// batch is one group commit: records appended together and made durable
// with one fdatasync.
type batch struct {
	size    int64 // disk size after the batch
	buf     []byte
	recs    []jrec // pos relative to buf
	lastSeq uint64
	done    chan struct{}
	err     error // valid after done is closed
	jobs    []pendingJob
	cb      *chunkBatch // chunks of the batch's recChunks records
	extra   int         // bytes of data held by jobs, for back pressure
}

// discard waits for b's chunk jobs, drops the chunks they staged and their
// journal references: b failed and nothing of it becomes durable.
func (b *batch) discard(h chunkHooks) {
	for _, pj := range b.jobs {
		pj.job.wg.Wait()
		h.unref(pj.job.hashes)
	}
	if b.cb != nil {
		b.cb.abort()
	}
}

func newBatch() *batch { return &batch{done: make(chan struct{})} }

// batchBufs are a written batch's buffers, emptied for reuse.
type batchBufs struct {
	buf  []byte
	recs []jrec
}

// maxSpare bounds the buffer a journal keeps for reuse; a batch larger
// than this (an initial sync's) lets its buffer go.
const maxSpare = 4 << 20

// Commit reports when a queued write is durable.
type Commit struct{ b *batch }

// Wait blocks until the write is durable (nil) or failed (the error), or
// ctx is done.
func (c Commit) Wait(ctx context.Context) error {
	if c.b == nil {
		return nil
	}
	select {
	case <-c.b.done:
		return c.b.err
	case <-ctx.Done():
		return ctx.Err()
	}
}

var doneBatch = func() *batch { b := newBatch(); close(b.done); return b }()

// journal is a disk's append-only write-ahead log on the local staging
// directory: segments named by the first sequence number they hold.
type journal struct {
	dir    string
	segMax int64
	now    func() time.Time
	hooks  chunkHooks
	files  *segFiles

	mu       sync.Mutex
	cond     *sync.Cond
	segs     []*segment // oldest first; the last one receives appends
	recs     []jrec     // durable records in sequence order
	lastSeq  uint64     // last accepted sequence number, pending or durable
	durable  uint64
	size     int64  // disk size after the last accepted record
	durSize  int64  // disk size after the last durable record
	cur      *batch // accepting appends
	flushing *batch // being written
	// spare is the buffers of the last batch written, for the next batch
	// to reuse while writes keep coming: growing a batch's buffer from
	// nothing cost a third of the CPU of small writes. The flusher drops
	// it when the journal goes idle, so an idle disk holds none. Guarded
	// by mu.
	spare  batchBufs
	closed bool
	done   chan struct{}
}

func segName(first uint64) string { return fmt.Sprintf("%016x.seg", first) }

// openJournal opens (or creates) the journal in dir, replaying every
// segment. A torn record at the end of the newest segment (a crash during
// an append) is cut off; damage anywhere else is a CorruptError.
//
// files keeps the segments open: the store's, shared by its disks, or the
// journal's own when nil.
func openJournal(dir string, segMax int64, now func() time.Time, hooks chunkHooks, files *segFiles) (*journal, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("create journal directory: %w", err)
	}
	if files == nil {
		files = newSegFiles(0)
	}
	j := &journal{dir: dir, segMax: segMax, now: now, hooks: hooks, files: files, cur: newBatch(), done: make(chan struct{})}
	j.cond = sync.NewCond(&j.mu)
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("read journal directory: %w", err)
	}
	var names []string
	for _, e := range ents {
		if strings.HasSuffix(e.Name(), ".seg") {
			names = append(names, e.Name())
		}
	}
	sort.Strings(names)
	for i, name := range names {
		first, err := strconv.ParseUint(strings.TrimSuffix(name, ".seg"), 16, 64)
		if err != nil || segName(first) != name {
			j.closeFiles()
			return nil, corrupt(filepath.Join(dir, name), errors.New("bad segment name"))
		}
		last := i == len(names)-1
		seg, err := j.replay(filepath.Join(dir, name), first, last)
		if err != nil {
			j.closeFiles()
			return nil, err
		}
		if seg != nil {
			j.segs = append(j.segs, seg)
		}
	}
	if n := len(j.recs); n > 0 {
		j.durable = j.recs[n-1].seq
		j.lastSeq = j.durable
	}
	go j.flusher()
	return j, nil
}

// replay reads one segment into j.recs. For the newest segment a damaged
// tail is truncated (and an empty, headerless file removed).
func (j *journal) replay(path string, first uint64, last bool) (*segment, error) {
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return nil, fmt.Errorf("open journal segment: %w", err)
	}
	seg := &segment{path: path, first: first}
	br := bufio.NewReaderSize(io.NewSectionReader(f, 0, 1<<62), 1<<20)
	var hdr [segHeaderSize]byte
	if _, err := io.ReadFull(br, hdr[:]); err != nil || string(hdr[:8]) != segMagic || binary.LittleEndian.Uint64(hdr[8:]) != first {
		if last {
			// A crash while creating the segment: nothing in it was acknowledged.
			f.Close()
			if err := os.Remove(path); err != nil {
				return nil, fmt.Errorf("remove torn journal segment: %w", err)
			}
			return nil, nil
		}
		f.Close()
		return nil, corrupt(path, errors.New("bad segment header"))
	}
	pos := int64(segHeaderSize)
	buf := make([]byte, recHeaderSize+maxExtent)
	prev := uint64(0)
	if n := len(j.recs); n > 0 {
		prev = j.recs[n-1].seq
	}
	var bad error
	for {
		h := buf[:recHeaderSize]
		if _, err := io.ReadFull(br, h); err != nil {
			if err != io.EOF {
				bad = errShortRecord
			}
			break
		}
		_, total, err := decodeRecordHeader(h)
		if err != nil {
			bad = err
			break
		}
		if _, err := io.ReadFull(br, buf[recHeaderSize:total]); err != nil {
			bad = errShortRecord
			break
		}
		r, payload, _, err := decodeRecord(buf[:total])
		if err != nil {
			bad = err
			break
		}
		var hashes []Hash
		if r.typ == recChunks {
			hashes = chunkHashes(payload)
			if r.length != int64(len(hashes))*j.hooks.chunkSize {
				bad = fmt.Errorf("chunk record of %d chunks for %d bytes, chunk size %d", len(hashes), r.length, j.hooks.chunkSize)
				break
			}
		}
		if r.seq <= prev {
			bad = fmt.Errorf("sequence number %d after %d", r.seq, prev)
			break
		}
		prev = r.seq
		j.hooks.ref(hashes)
		j.recs = append(j.recs, jrec{record: r, seg: seg, pos: pos + recHeaderSize, hashes: hashes})
		seg.last, seg.lastTime = r.seq, r.time
		pos += int64(total)
	}
	if bad != nil {
		if !last {
			f.Close()
			return nil, corrupt(path, fmt.Errorf("record at offset %d: %w", pos, bad))
		}
		if err := f.Truncate(pos); err != nil {
			f.Close()
			return nil, fmt.Errorf("truncate torn journal tail: %w", err)
		}
		if err := unix.Fdatasync(int(f.Fd())); err != nil {
			f.Close()
			return nil, fmt.Errorf("sync journal segment: %w", err)
		}
	}
	seg.size = pos
	if seg.lastTime == 0 {
		if st, err := f.Stat(); err == nil {
			seg.lastTime = st.ModTime().UnixNano()
		}
	}
	j.files.add(seg, f)
	return seg, nil
}

func (j *journal) closeFiles() {
	for _, s := range j.segs {
		j.files.drop(s)
	}
	j.segs = nil
}

// append queues r (with payload for writes) for the next group commit. A
// sequence number not above the last accepted one is a duplicate from a
// resumed stream: it is ignored and the returned Commit reports when
// everything accepted so far is durable.
//
// check, when not nil, validates r against the disk size after every record
// accepted before it; it runs under the journal lock.
//
// job, when not nil, makes r a recChunks record whose hashes job fills in
// later; the returned chunkBatch (nil when r was not accepted) is where the
// job stages its chunks. The record is written only after the job is done
// and the batch committed.
func (j *journal) append(r record, payload []byte, check func(size int64) error, job *chunkJob) (Commit, *chunkBatch, error) {
	j.mu.Lock()
	defer j.mu.Unlock()
	for !j.closed && len(j.cur.buf)+j.cur.extra >= maxPending && j.flushing != nil {
		j.cond.Wait()
	}
	if j.closed {
		return Commit{}, nil, ErrClosed
	}
	if r.seq <= j.lastSeq {
		return j.waitLocked(r.seq), nil, nil
	}
	if check != nil {
		if err := check(j.size); err != nil {
			return Commit{}, nil, err
		}
	}
	if r.typ == recResize {
		j.size = r.off
	}
	r.time = j.now().UnixNano()
	b := j.cur
	pos := len(b.buf)
	var cb *chunkBatch
	if job != nil {
		// The hashes are filled in (and the CRC computed) by the flusher.
		payload = make([]byte, 32*len(job.hashes))
		if b.cb == nil {
			b.cb = j.hooks.newBatch()
		}
		cb = b.cb
		b.jobs = append(b.jobs, pendingJob{rec: len(b.recs), pos: pos, job: job})
		b.extra += int(r.length)
	}
	b.buf = appendRecord(b.buf, r, payload)
	b.recs = append(b.recs, jrec{record: r, pos: int64(pos + recHeaderSize)})
	b.lastSeq = r.seq
	b.size = j.size
	j.lastSeq = r.seq
	j.cond.Broadcast()
	return Commit{b}, cb, nil
}

// waitLocked returns a Commit that completes once seq (already accepted) is durable.
func (j *journal) waitLocked(seq uint64) Commit {
	switch {
	case seq <= j.durable:
		return Commit{doneBatch}
	case j.flushing != nil && seq <= j.flushing.lastSeq:
		return Commit{j.flushing}
	default:
		return Commit{j.cur}
	}
}

// flusher writes batches and syncs them, one at a time; appends arriving
// during a sync form the next batch (group commit).
func (j *journal) flusher() {
	defer close(j.done)
	j.mu.Lock()
	for {
		for len(j.cur.recs) == 0 && !j.closed {
			j.cond.Wait()
		}
		if len(j.cur.recs) == 0 && j.closed {
			j.mu.Unlock()
			return
		}
		b := j.cur
		j.cur = newBatch()
		j.cur.buf, j.cur.recs = j.spare.buf, j.spare.recs
		j.spare = batchBufs{}
		j.flushing = b
		j.mu.Unlock()

		seg, base, err := j.write(b)

		j.mu.Lock()
		if err != nil {
			// Nothing after the last durable record may become durable
			// before it, so the queued batch fails too; the writer resumes
			// from the durable sequence number.
			b.discard(j.hooks)
			b.err = err
			close(b.done)
			if next := j.cur; len(next.recs) > 0 {
				next.discard(j.hooks)
				next.err = err
				close(next.done)
				j.cur = newBatch()
			}
			j.lastSeq = j.durable
			j.size = j.durSize
		} else {
			for _, r := range b.recs {
				r.seg = seg
				r.pos += base
				j.recs = append(j.recs, r)
			}
			seg.size = base + int64(len(b.buf))
			seg.last = b.lastSeq
			seg.lastTime = b.recs[len(b.recs)-1].time
			j.durable = b.lastSeq
			j.durSize = b.size
			close(b.done)
		}
		j.flushing = nil
		if cap(b.buf) <= maxSpare && len(j.cur.recs) > 0 {
			// Writes are still coming: the batch after j.cur reuses these.
			clear(b.recs)
			j.spare = batchBufs{buf: b.buf[:0], recs: b.recs[:0]}
		}
		b.buf, b.recs = nil, nil
		j.cond.Broadcast()
	}
}

// write appends b to the newest segment (starting a new one when it is
// full) and syncs it. It returns the segment and the offset b starts at.
func (j *journal) write(b *batch) (*segment, int64, error) {
	if err := j.writeChunks(b); err != nil {
		return nil, 0, err
	}
	j.mu.Lock()
	var seg *segment
	if n := len(j.segs); n > 0 {
		seg = j.segs[n-1]
	}
	j.mu.Unlock()
	if seg == nil || (seg.size >= j.segMax && seg.last > 0) {
		var err error
		if seg, err = j.newSegment(b.recs[0].seq); err != nil {
			return nil, 0, err
		}
	}
	f, err := j.files.acquire(seg)
	if err != nil {
		return nil, 0, journalErr("append journal", err)
	}
	defer j.files.release(seg)
	base := seg.size
	if seg.broken {
		if err := f.Truncate(base); err != nil {
			return nil, 0, journalErr("truncate failed journal append", err)
		}
		seg.broken = false
	}
	if _, err := f.WriteAt(b.buf, base); err != nil {
		seg.broken = true
		if terr := f.Truncate(base); terr == nil {
			seg.broken = false
		}
		return nil, 0, journalErr("append journal", err)
	}
	if err := j.syncSegment(f); err != nil {
		seg.broken = true
		if terr := f.Truncate(base); terr == nil {
			seg.broken = false
		}
		return nil, 0, journalErr("sync journal", err)
	}
	return seg, base, nil
}

func (j *journal) syncSegment(f *os.File) error {
	if j.hooks.sync != nil {
		return j.hooks.sync(f)
	}
	return unix.Fdatasync(int(f.Fd()))
}

// writeChunks waits for the chunk jobs of b, completes their records and
// makes their chunks durable: a record must never be durable before the
// chunks it references.
func (j *journal) writeChunks(b *batch) error {
	if len(b.jobs) == 0 {
		return nil
	}
	var err error
	for _, pj := range b.jobs {
		pj.job.wg.Wait()
		if err == nil && pj.job.err != nil {
			err = pj.job.err
		}
	}
	if err != nil {
		return err
	}
	for _, pj := range b.jobs {
		rec := &b.recs[pj.rec]
		rec.hashes = pj.job.hashes
		total := recHeaderSize + 32*len(rec.hashes)
		enc := b.buf[pj.pos : pj.pos+total]
		for i, h := range rec.hashes {
			copy(enc[recHeaderSize+32*i:], h[:])
		}
		sealRecord(enc)
	}
	cb := b.cb
	b.cb = nil // committed or aborted here; discard must not abort it again
	return cb.commit(context.Background())
}

func journalErr(op string, err error) error {
	if errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EDQUOT) {
		return fmt.Errorf("%s: %w: %w", op, ErrNoSpace, err)
	}
	return fmt.Errorf("%s: %w", op, err)
}

func (j *journal) newSegment(first uint64) (*segment, error) {
	path := filepath.Join(j.dir, segName(first))
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return nil, journalErr("create journal segment", err)
	}
	var hdr [segHeaderSize]byte
	copy(hdr[:], segMagic)
	binary.LittleEndian.PutUint64(hdr[8:], first)
	_, err = f.WriteAt(hdr[:], 0)
	if err == nil {
		err = unix.Fdatasync(int(f.Fd()))
	}
	if err == nil {
		err = syncDir(j.dir)
	}
	if err != nil {
		f.Close()
		os.Remove(path)
		return nil, journalErr("create journal segment", err)
	}
	seg := &segment{path: path, first: first, size: segHeaderSize, lastTime: j.now().UnixNano()}
	j.files.add(seg, f)
	j.mu.Lock()
	j.segs = append(j.segs, seg)
	j.mu.Unlock()
	return seg, nil
}

// durableSeq returns the sequence number of the newest durable record.
func (j *journal) durableSeq() uint64 {
	j.mu.Lock()
	defer j.mu.Unlock()
	return j.durable
}

// rangeLocked returns the durable records with after < seq <= upto.
func (j *journal) rangeLocked(after, upto uint64) []jrec {
	lo := sort.Search(len(j.recs), func(i int) bool { return j.recs[i].seq > after })
	hi := sort.Search(len(j.recs), func(i int) bool { return j.recs[i].seq > upto })
	if lo >= hi {
		return nil
	}
	return j.recs[lo:hi]
}

// readAt reads a payload of s, which the caller holds a reference on.
func (j *journal) readAt(s *segment, p []byte, off int64) error {
	f, err := j.files.acquire(s)
	if err != nil {
		return err
	}
	defer j.files.release(s)
	_, err = f.ReadAt(p, off)
	return err
}

// pinLocked takes a reference on every segment holding recs.
func pinSegments(recs []jrec) []*segment {
	var segs []*segment
	for i, r := range recs {
		if i == 0 || r.seg != recs[i-1].seg {
			r.seg.refs++
			segs = append(segs, r.seg)
		}
	}
	return segs
}

// unpin releases segment references taken by pinSegments.
func (j *journal) unpin(segs []*segment) {
	j.mu.Lock()
	defer j.mu.Unlock()
	for _, s := range segs {
		j.unrefLocked(s)
	}
}

// unrefLocked drops a reference taken by pinSegments (or verify); the last
// one of a removed segment closes its file.
func (j *journal) unrefLocked(s *segment) {
	s.refs--
	if s.refs == 0 && s.removed {
		j.retireLocked(s)
	}
}

// holdLocked keeps s open while readers use it, before its file is
// unlinked: a closed segment is opened again by its path.
func (j *journal) holdLocked(s *segment) error {
	if s.refs == 0 || s.held {
		return nil
	}
	if _, err := j.files.acquire(s); err != nil {
		return err
	}
	s.held = true
	return nil
}

// retireLocked marks s removed: closed now when no reader uses it, else at
// the last unrefLocked.
func (j *journal) retireLocked(s *segment) {
	s.removed = true
	if s.refs == 0 {
		j.files.drop(s)
		if s.held {
			s.held = false
			j.files.release(s)
		}
	}
}

// trimPlan finds the oldest segments whose records are all folded
// (seq <= folded) and that fall outside the window (older than maxAge, or
// beyond maxBytes counted from the newest segment); the newest segment is
// never among them. It returns how many there are and the highest sequence
// number they hold. Only one trimPlan/removeOldest pair may run at a time.
func (j *journal) trimPlan(folded uint64, maxBytes int64, maxAge time.Duration) (int, uint64) {
	j.mu.Lock()
	defer j.mu.Unlock()
	now := j.now().UnixNano()
	var total int64
	keepFrom := len(j.segs) - 1 // index of the oldest segment kept
	for i := len(j.segs) - 1; i >= 0; i-- {
		total += j.segs[i].size
		s := j.segs[i]
		if i < len(j.segs)-1 && (total > maxBytes || now-s.lastTime > int64(maxAge)) {
			break
		}
		keepFrom = i
	}
	n := 0
	var through uint64
	for n < keepFrom && j.segs[n].last <= folded {
		through = max(through, j.segs[n].last)
		n++
	}
	return n, through
}

// removeOldest deletes the n oldest segments and their records.
func (j *journal) removeOldest(n int) error {
	j.mu.Lock()
	defer j.mu.Unlock()
	for n > 0 && len(j.segs) > 1 {
		s := j.segs[0]
		if err := j.holdLocked(s); err != nil {
			return fmt.Errorf("remove journal segment: %w", err)
		}
		if err := os.Remove(s.path); err != nil {
			return fmt.Errorf("remove journal segment: %w", err)
		}
		j.retireLocked(s)
		i := 0
		for i < len(j.recs) && j.recs[i].seg == s {
			j.hooks.unref(j.recs[i].hashes)
			i++
		}
		j.recs = j.recs[i:]
		j.segs = j.segs[1:]
		n--
	}
	return syncDir(j.dir)
}

// bytes returns the bytes held by the journal's segments.
func (j *journal) bytes() int64 {
	j.mu.Lock()
	defer j.mu.Unlock()
	var n int64
	for _, s := range j.segs {
		n += s.size
	}
	return n
}

// dropRefs drops the chunk references of every record, for a disk being
// deleted; the journal must be closed.
func (j *journal) dropRefs() {
	j.mu.Lock()
	defer j.mu.Unlock()
	for _, r := range j.recs {
		j.hooks.unref(r.hashes)
	}
	j.recs = nil
}

// close waits for queued records to be written and closes the segments.
func (j *journal) close() {
	j.mu.Lock()
	if j.closed {
		j.mu.Unlock()
		return
	}
	j.closed = true
	j.cond.Broadcast()
	j.mu.Unlock()
	<-j.done
	j.mu.Lock()
	for _, s := range j.segs {
		// A reader that still uses s opens it again by its path, which
		// closing does not remove.
		j.retireLocked(s)
	}
	j.mu.Unlock()
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("open directory for sync: %w", err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("sync directory: %w", err)
	}
	return nil
}
