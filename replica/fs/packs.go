package fs

import (
	"errors"
	"fmt"
	"hash/crc32"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"

	"github.com/ferrymigrate/ferry/replica/backend"
)

// Pack files hold many small objects in one file with an index, so a batch
// of a thousand chunks costs one file, one fsync and one directory entry
// instead of a thousand (restic's answer to the same problem). They live
// under root/.packs, which List never reports: names starting with "." are
// not object names.
const (
	packsDir = ".packs"
	tombLog  = "deleted"
	// defaultPackSize is where a batch starts a new pack: big enough that
	// a group commit of whole 1 MiB chunks is one or two packs, small
	// enough that compaction rewrites little at a time.
	defaultPackSize = 64 << 20
	// pruneMin is how many delete records the log may gain before the
	// records no pack needs any more are dropped from it.
	pruneMin = 1 << 16
)

// loc is where the current object of a name is.
type loc struct {
	pack uint64
	off  int64
	size uint32
	crc  uint32
	ver  uint64
}

// nameVer is one object a pack file holds, current or not.
type nameVer struct {
	name string
	ver  uint64
}

// packFile is what the index knows of one pack on disk.
type packFile struct {
	total, live int64     // bytes of all objects in it, of current ones
	entries     []nameVer // every object in it
}

// packs is the index of the objects in pack files, the delete log, and
// the compactor that rewrites packs whose objects are mostly deleted.
type packs struct {
	b        *Backend
	dir      string // root/.packs
	prefixes []string
	size     int64

	mu         sync.Mutex
	index      map[string]loc
	files      map[uint64]*packFile
	nextSeq    uint64
	nextVer    uint64
	tombs      map[string]uint64 // name -> highest deleted version still on disk
	log        *os.File
	logSize    int64 // bytes of whole records in the log
	logRecords int
	pruneAt    int
	damaged    map[string]error
	compacting map[uint64]bool
	closed     bool

	compactCh chan uint64
	stop      chan struct{}
	wg        sync.WaitGroup
}

// packed reports whether name's new objects go into packs.
func (p *packs) packed(name string) bool {
	for _, pre := range p.prefixes {
		if strings.HasPrefix(name, pre) {
			return true
		}
	}
	return false
}

func (p *packs) path(seq uint64) string {
	return filepath.Join(p.dir, fmt.Sprintf("%02x", seq&0xff), fmt.Sprintf("%016x.pack", seq))
}

// openPacks loads the index of every pack under root/.packs and the delete
// log. A pack whose index does not check out is left in place, its
// objects unknown, and reported by Damaged.
func openPacks(b *Backend, prefixes []string, size int64) (*packs, error) {
	p := &packs{
		b: b, dir: filepath.Join(b.root, packsDir), prefixes: prefixes, size: size,
		index: map[string]loc{}, files: map[uint64]*packFile{}, tombs: map[string]uint64{},
		damaged: map[string]error{}, compacting: map[uint64]bool{},
		nextSeq: 1, nextVer: 1, pruneAt: pruneMin,
		compactCh: make(chan uint64, 1024), stop: make(chan struct{}),
	}
	if err := b.mkdirs(p.dir); err != nil {
		return nil, fmt.Errorf("create pack directory: %w", err)
	}
	raw, err := os.ReadFile(filepath.Join(p.dir, tombLog))
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("read delete log: %w", err)
	}
	parseTombs(raw, func(name string, ver uint64) {
		p.tombs[name] = max(p.tombs[name], ver)
		p.nextVer = max(p.nextVer, ver+1)
	})
	type loaded struct {
		seq     uint64
		entries []packEntry
	}
	var all []loaded
	shards, err := os.ReadDir(p.dir)
	if err != nil {
		return nil, fmt.Errorf("list packs: %w", err)
	}
	for _, sh := range shards {
		if !sh.IsDir() {
			continue
		}
		names, err := os.ReadDir(filepath.Join(p.dir, sh.Name()))
		if err != nil {
			return nil, fmt.Errorf("list packs: %w", err)
		}
		for _, n := range names {
			base, ok := strings.CutSuffix(n.Name(), ".pack")
			seq, perr := strconv.ParseUint(base, 16, 64)
			if !ok || perr != nil || len(base) != 16 {
				continue
			}
			p.nextSeq = max(p.nextSeq, seq+1)
			entries, err := loadPack(filepath.Join(p.dir, sh.Name(), n.Name()))
			if err != nil {
				p.damaged[filepath.ToSlash(filepath.Join(packsDir, sh.Name(), n.Name()))] = err
				continue
			}
			all = append(all, loaded{seq, entries})
		}
	}
	for _, l := range all {
		pf := &packFile{entries: make([]nameVer, 0, len(l.entries))}
		p.files[l.seq] = pf
		for _, e := range l.entries {
			pf.total += int64(e.size)
			pf.entries = append(pf.entries, nameVer{e.name, e.ver})
			p.nextVer = max(p.nextVer, e.ver+1)
			if t, ok := p.tombs[e.name]; ok && e.ver <= t {
				continue
			}
			// Compaction copies objects with their versions, so a crash
			// between a copy and the removal of its source leaves two of
			// one version: either is the object.
			if cur, ok := p.index[e.name]; ok && (cur.ver > e.ver || cur.ver == e.ver && cur.pack > l.seq) {
				continue
			}
			p.index[e.name] = loc{pack: l.seq, off: e.off, size: e.size, crc: e.crc, ver: e.ver}
		}
	}
	for _, l := range p.index {
		p.files[l.pack].live += int64(l.size)
	}
	p.mu.Lock()
	err = p.pruneLocked()
	p.mu.Unlock()
	if err != nil {
		return nil, err
	}
	for seq, pf := range p.files {
		switch {
		case pf.live == 0 && p.allCurrentElsewhere(seq, pf):
			if err := os.Remove(p.path(seq)); err != nil && !errors.Is(err, fs.ErrNotExist) {
				return nil, fmt.Errorf("remove pack of deleted objects: %w", err)
			}
			delete(p.files, seq)
		case pf.live*2 < pf.total:
			p.enqueueLocked(seq)
		}
	}
	p.wg.Add(1)
	go p.compactor()
	return p, nil
}

// loadPack reads the index of the pack at path.
func loadPack(path string) ([]packEntry, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	return readPackIndex(f, fi.Size())
}

// close stops the compactor and makes the delete log durable.
func (p *packs) close() error {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil
	}
	p.closed = true
	p.mu.Unlock()
	close(p.stop)
	p.wg.Wait()
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.log == nil {
		return nil
	}
	err := p.log.Sync()
	if cerr := p.log.Close(); err == nil {
		err = cerr
	}
	p.log = nil
	if err != nil {
		return fmt.Errorf("close delete log: %w", err)
	}
	return nil
}

// lookup returns where name's current packed object is.
func (p *packs) lookup(name string) (loc, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	l, ok := p.index[name]
	return l, ok
}

// get returns name's packed object; found is false when no pack holds it.
func (p *packs) get(name string) (data []byte, found bool, err error) {
	for try := 0; ; try++ {
		l, ok := p.lookup(name)
		if !ok {
			return nil, false, nil
		}
		data, err := p.read(name, l)
		if errors.Is(err, fs.ErrNotExist) && try < 3 {
			continue // compacted into another pack meanwhile: look again
		}
		return data, true, err
	}
}

// read reads and checks the object at l.
func (p *packs) read(name string, l loc) ([]byte, error) {
	path := p.path(l.pack)
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("get %s: pack %s: %w", name, p.rel(l.pack), err)
	}
	defer f.Close()
	data := make([]byte, l.size)
	if _, err := f.ReadAt(data, l.off); err != nil {
		return nil, fmt.Errorf("get %s: pack %s: read at %d: %w", name, p.rel(l.pack), l.off, err)
	}
	if crc32.Checksum(data, castagnoli) != l.crc {
		return nil, fmt.Errorf("get %s: pack %s: object at %d: %w", name, p.rel(l.pack), l.off, backend.ErrCorrupt)
	}
	return data, nil
}

// rel names a pack as the operator finds it under the backend directory.
func (p *packs) rel(seq uint64) string {
	r, _ := filepath.Rel(p.b.root, p.path(seq))
	return filepath.ToSlash(r)
}

// list returns the names and sizes of the packed objects under prefix.
func (p *packs) list(prefix string) ([]string, []int64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	var names []string
	var sizes []int64
	for n, l := range p.index {
		if strings.HasPrefix(n, prefix) {
			names = append(names, n)
			sizes = append(sizes, int64(l.size))
		}
	}
	return names, sizes
}

// delete removes name's packed object, if any. The delete record is
// written before the object leaves the index, so a process killed at any
// point after delete returns does not bring the object back; like a file
// removal without a directory fsync, a power failure may (docs/storage.md).
func (p *packs) delete(name string) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	l, ok := p.index[name]
	if !ok {
		return nil
	}
	if p.log == nil {
		f, err := os.OpenFile(filepath.Join(p.dir, tombLog), os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
		if err != nil {
			return fmt.Errorf("delete %s: open delete log: %w", name, err)
		}
		fi, err := f.Stat()
		if err != nil {
			f.Close()
			return fmt.Errorf("delete %s: open delete log: %w", name, err)
		}
		p.log, p.logSize = f, fi.Size()
	}
	rec := appendTomb(nil, name, l.ver)
	if _, err := p.log.Write(rec); err != nil {
		// A short append is a torn record the log's reader would stop
		// at, hiding every record after it: cut it off.
		_ = p.log.Truncate(p.logSize)
		p.log.Close()
		p.log = nil
		return fmt.Errorf("delete %s: append to delete log: %w", name, err)
	}
	p.logSize += int64(len(rec))
	p.logRecords++
	p.tombs[name] = max(p.tombs[name], l.ver)
	delete(p.index, name)
	p.unliveLocked(l)
	if p.logRecords >= p.pruneAt {
		return p.pruneLocked()
	}
	return nil
}

// unliveLocked accounts for the object at l no longer being current: a
// pack left with nothing current is removed, one mostly dead is queued for
// compaction.
func (p *packs) unliveLocked(l loc) {
	pf := p.files[l.pack]
	if pf == nil {
		return
	}
	pf.live -= int64(l.size)
	switch {
	case p.compacting[l.pack]:
	case pf.live <= 0 && p.allCurrentElsewhere(l.pack, pf):
		// Every object in it is deleted (the log says so) or newer in
		// a durable pack: removing the file loses nothing.
		if err := os.Remove(p.path(l.pack)); err == nil || errors.Is(err, fs.ErrNotExist) {
			delete(p.files, l.pack)
		}
	case pf.live*2 < pf.total:
		p.enqueueLocked(l.pack)
	}
}

// allCurrentElsewhere reports whether no current object is in pack seq:
// live bytes count only sizes, and a pack of empty objects has none.
func (p *packs) allCurrentElsewhere(seq uint64, pf *packFile) bool {
	for _, e := range pf.entries {
		if l, ok := p.index[e.name]; ok && l.pack == seq {
			return false
		}
	}
	return true
}

func (p *packs) enqueueLocked(seq uint64) {
	select {
	case p.compactCh <- seq:
	default: // queue full: the next delete from this pack queues it again
	}
}

// pruneLocked rewrites the delete log with only the records some pack
// still needs: those deleting a copy still on disk.
func (p *packs) pruneLocked() error {
	need := map[string]uint64{}
	for _, pf := range p.files {
		for _, e := range pf.entries {
			if t, ok := p.tombs[e.name]; ok && e.ver <= t {
				need[e.name] = t
			}
		}
	}
	var buf []byte
	for n, v := range need {
		buf = appendTomb(buf, n, v)
	}
	tmp := p.b.tmpPath()
	if err := writeSynced(tmp, buf); err != nil {
		return fmt.Errorf("rewrite delete log: %w", err)
	}
	final := filepath.Join(p.dir, tombLog)
	if err := os.Rename(tmp, final); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("rewrite delete log: %w", err)
	}
	if err := syncDir(p.dir); err != nil {
		return fmt.Errorf("rewrite delete log: %w", err)
	}
	if p.log != nil {
		p.log.Close()
		p.log = nil
	}
	p.tombs = need
	p.logRecords = len(need)
	p.pruneAt = max(2*len(need), pruneMin)
	return nil
}

// writeSynced writes data to a new file at path and fsyncs it.
func writeSynced(path string, data []byte) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	_, err = f.Write(data)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(path)
	}
	return err
}

// packWriter writes one new pack into a temporary file.
type packWriter struct {
	p       *packs
	f       *os.File
	tmp     string
	off     int64
	entries []packEntry
	seq     uint64 // set by finish
}

func (p *packs) newWriter() (*packWriter, error) {
	tmp := p.b.tmpPath()
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return nil, fmt.Errorf("create pack: %w", err)
	}
	if _, err := f.Write([]byte(packMagic)); err != nil {
		f.Close()
		os.Remove(tmp)
		return nil, fmt.Errorf("write pack: %w", err)
	}
	return &packWriter{p: p, f: f, tmp: tmp, off: int64(packHeaderSize)}, nil
}

// add appends an object. ver is kept when compacting and set by finish
// for new objects.
func (w *packWriter) add(name string, data []byte, ver uint64) error {
	if len(data) > maxPackObject {
		return fmt.Errorf("put %s: %d bytes is more than a packed object may hold", name, len(data))
	}
	if _, err := w.f.Write(data); err != nil {
		return fmt.Errorf("put %s: write pack: %w", name, err)
	}
	w.entries = append(w.entries, packEntry{name: name, off: w.off, size: uint32(len(data)),
		crc: crc32.Checksum(data, castagnoli), ver: ver})
	w.off += int64(len(data))
	return nil
}

// finish gives the pack its sequence number (and new objects their
// versions, in the order they were added, so a name put twice keeps the
// later) and writes the index. The caller syncs and installs it.
func (w *packWriter) finish(newObjects bool) error {
	p := w.p
	p.mu.Lock()
	w.seq = p.nextSeq
	p.nextSeq++
	if newObjects {
		for i := range w.entries {
			w.entries[i].ver = p.nextVer
			p.nextVer++
		}
	}
	p.mu.Unlock()
	if _, err := w.f.Write(appendIndex(nil, w.entries)); err != nil {
		return fmt.Errorf("write pack index: %w", err)
	}
	return nil
}

// sync fsyncs and closes the pack's file.
func (w *packWriter) sync() error {
	err := w.f.Sync()
	if cerr := w.f.Close(); err == nil {
		err = cerr
	}
	w.f = nil
	if err != nil {
		return fmt.Errorf("sync pack: %w", err)
	}
	return nil
}

// place renames the synced pack into place and returns its directory,
// which the caller fsyncs before installing.
func (w *packWriter) place() (string, error) {
	dst := w.p.path(w.seq)
	if err := w.p.b.mkdirs(filepath.Dir(dst)); err != nil {
		return "", fmt.Errorf("place pack: %w", err)
	}
	if err := os.Rename(w.tmp, dst); err != nil {
		return "", fmt.Errorf("place pack: %w", err)
	}
	w.tmp = ""
	return filepath.Dir(dst), nil
}

// discard removes a pack that was not placed.
func (w *packWriter) discard() {
	if w.f != nil {
		w.f.Close()
		w.f = nil
	}
	if w.tmp != "" {
		os.Remove(w.tmp)
		w.tmp = ""
	}
}

// install makes a placed, durable pack's objects current. from is the
// pack a compaction copied them out of (0 for new objects): a copy
// becomes current only if its source still is.
func (p *packs) install(w *packWriter, from uint64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	pf := &packFile{entries: make([]nameVer, 0, len(w.entries))}
	p.files[w.seq] = pf
	for _, e := range w.entries {
		pf.total += int64(e.size)
		pf.entries = append(pf.entries, nameVer{e.name, e.ver})
		cur, ok := p.index[e.name]
		if from != 0 && (!ok || cur.pack != from || cur.ver != e.ver) {
			continue
		}
		if from == 0 && ok && cur.ver > e.ver {
			continue // a later put of the name committed first
		}
		p.index[e.name] = loc{pack: w.seq, off: e.off, size: e.size, crc: e.crc, ver: e.ver}
		pf.live += int64(e.size)
		if ok {
			p.unliveLocked(cur)
		}
	}
	if pf.live == 0 && len(pf.entries) > 0 && p.allCurrentElsewhere(w.seq, pf) {
		if err := os.Remove(p.path(w.seq)); err == nil {
			delete(p.files, w.seq)
		}
	}
}

// compactor rewrites packs queued as mostly dead until the backend closes.
func (p *packs) compactor() {
	defer p.wg.Done()
	for {
		select {
		case <-p.stop:
			return
		case seq := <-p.compactCh:
			// A failure (a full disk, say) leaves the pack as it was:
			// it is still sound, only larger than it needs to be, and
			// the next delete from it queues it again.
			_ = p.compact(seq)
		}
	}
}

// compact copies the current objects of pack seq into a new pack and
// removes the old one.
func (p *packs) compact(seq uint64) error {
	p.mu.Lock()
	pf := p.files[seq]
	if pf == nil || p.compacting[seq] || p.closed || pf.live*2 >= pf.total {
		p.mu.Unlock()
		return nil
	}
	var live []packEntry
	for _, e := range pf.entries {
		if l, ok := p.index[e.name]; ok && l.pack == seq && l.ver == e.ver {
			live = append(live, packEntry{name: e.name, off: l.off, size: l.size, crc: l.crc, ver: l.ver})
		}
	}
	p.compacting[seq] = true
	p.mu.Unlock()
	defer func() {
		p.mu.Lock()
		delete(p.compacting, seq)
		if pf := p.files[seq]; pf != nil && p.allCurrentElsewhere(seq, pf) {
			if err := os.Remove(p.path(seq)); err == nil || errors.Is(err, fs.ErrNotExist) {
				delete(p.files, seq)
			}
		}
		p.mu.Unlock()
	}()
	if len(live) == 0 {
		return nil
	}
	w, err := p.newWriter()
	if err != nil {
		return err
	}
	defer w.discard()
	for _, e := range live {
		data, err := p.read(e.name, loc{pack: seq, off: e.off, size: e.size, crc: e.crc, ver: e.ver})
		if err != nil {
			return fmt.Errorf("compact: %w", err)
		}
		if err := w.add(e.name, data, e.ver); err != nil {
			return fmt.Errorf("compact: %w", err)
		}
	}
	if err := w.finish(false); err != nil {
		return fmt.Errorf("compact: %w", err)
	}
	if err := w.sync(); err != nil {
		return fmt.Errorf("compact: %w", err)
	}
	dir, err := w.place()
	if err != nil {
		return fmt.Errorf("compact: %w", err)
	}
	if err := syncDir(dir); err != nil {
		// Placed but perhaps not durable: its copies must not become
		// current, and the source stays. If the copy cannot be removed
		// either, keep it in the books so the delete records covering
		// its objects are kept.
		if rerr := os.Remove(p.path(w.seq)); rerr != nil && !errors.Is(rerr, fs.ErrNotExist) {
			p.mu.Lock()
			pf := &packFile{}
			for _, e := range w.entries {
				pf.total += int64(e.size)
				pf.entries = append(pf.entries, nameVer{e.name, e.ver})
			}
			p.files[w.seq] = pf
			p.mu.Unlock()
		}
		return fmt.Errorf("compact: %w", err)
	}
	p.install(w, seq)
	return nil
}

// damagedPacks returns the packs whose index could not be read at open.
func (p *packs) damagedPacks() map[string]error {
	out := make(map[string]error, len(p.damaged))
	for k, v := range p.damaged {
		out[k] = v
	}
	return out
}
