package replica

import (
	"container/list"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/ferrymigrate/ferry/internal/zeros"
	"github.com/ferrymigrate/ferry/replica/backend"
)

// DefaultChunkSize is the chunk size of new stores (see docs/storage.md for
// the measurements behind it).
const DefaultChunkSize = 1 << 20

// formatVersion is the store format written by this version; older
// stores are upgraded at Open (see docs/storage.md).
const formatVersion = 4

// Window bounds how much folded journal is kept for any-point-in-time reads.
// Unfolded records are always kept.
type Window struct {
	MaxBytes int64         // default 1 GiB per disk
	MaxAge   time.Duration // default 1 hour
}

// Options configure Open. Dir, Backend and Keys are required.
type Options struct {
	// Dir is the local staging directory: journals and the lock file. It
	// should be on a low-latency local file system.
	Dir string
	// Backend stores chunks, block maps and snapshot metadata.
	Backend backend.Backend
	// CloseBackend makes Close close Backend too, for a store that is
	// its backend's only user (a server's): the fs backend holds a lock
	// on its directory until closed.
	CloseBackend bool
	// Keys wraps the store's data keys.
	Keys KeyProvider

	// ChunkSize is the chunk size of a new store, a power of two from
	// 64 KiB to 4 MiB; default DefaultChunkSize. An existing store keeps
	// the size it was created with.
	ChunkSize int
	// Cipher seals objects of a new store; default XChaCha20Poly1305.
	Cipher Cipher
	// SegmentSize is the size at which a journal segment is closed; default 64 MiB.
	SegmentSize int64
	// Window bounds the folded journal kept per disk.
	Window Window
	// FoldInterval is how often each disk's journal is folded into a new
	// block map; default 10s, stretched on a store with more than 500
	// disks so that at most 50 timed folds start a second. Negative
	// disables background folding (call Disk.Fold).
	FoldInterval time.Duration
	// FoldBytes starts a fold early once this many journal bytes are
	// unfolded; default 256 MiB.
	FoldBytes int64
	// CacheSize is the byte budget of the decrypted chunk cache; default 64 MiB.
	CacheSize int64
	// MaxOpenSegments bounds the journal segment files kept open across
	// all disks (idle ones are closed, least recently used first, and
	// opened again when needed); default a quarter of the process's
	// open-file limit, so that a server with as many disks as agents
	// keeps most descriptors for their connections.
	MaxOpenSegments int
	// Retention is the default snapshot retention policy of every disk;
	// zero means DefaultRetention.
	Retention RetentionPolicy
	// Now is the clock; default time.Now.
	Now func() time.Time
	// Logf logs background errors; default discards them.
	Logf func(format string, args ...any)
}

// storeConfig is the "config" object: the only object not sealed.
type storeConfig struct {
	Version     int    `json:"version"`
	ID          string `json:"id"`
	ChunkSize   int    `json:"chunk_size"`
	Cipher      Cipher `json:"cipher"`
	WrappedKeys []byte `json:"wrapped_keys"`
}

// Store is a replica store: per-disk journals on a local staging directory
// and deduplicated, encrypted chunks, block maps and snapshots on a
// Backend. All methods are safe for concurrent use. Only one process may
// open a staging directory (and its backend) at a time.
type Store struct {
	opts   Options
	be     backend.Backend
	sl     *sealer
	cfg    storeConfig
	lock   *os.File
	cache  *chunkCache
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	// gcMu is held shared by folds (from chunk dedup checks to publishing
	// the map) and exclusively by GC, so GC never deletes a chunk a fold
	// is about to reference.
	gcMu sync.RWMutex

	mu     sync.Mutex
	disks  map[string]*Disk // guarded by mu
	closed bool             // guarded by mu

	flightMu sync.Mutex
	flights  map[Hash]*flight // chunk reads in progress; guarded by flightMu
	// readAhead bounds the chunks read ahead at once (one slot per CPU).
	readAhead chan struct{}
	// foldBufs holds chunk-sized buffers (*[]byte) for fold workers: a
	// server with thousands of disks folds many times a second, and a
	// fresh zeroed chunk per worker and fold was 4 % of its CPU (memclr
	// and the allocator) at 3,000 agents.
	foldBufs sync.Pool

	chunkMu  sync.Mutex
	known    map[Hash]int64       // stored chunks and their object sizes; guarded by chunkMu
	inflight map[Hash]*chunkBatch // chunks being staged and by which fold; guarded by chunkMu
	// jrefs counts the journal records (durable or being written) that
	// reference each chunk; GC never deletes a chunk with references.
	jrefs map[Hash]int // guarded by chunkMu

	// syncer makes the journals' appends durable, many at once.
	syncer *syncer
	// files bounds the journal segments open across the disks.
	files *segFiles

	// sealSlots bounds the chunk jobs of ingest running at once.
	sealSlots chan struct{}
	// foldSlots bounds the background folds running at once.
	foldSlots chan struct{}
}

// Exists reports whether b already holds a store (its config object), so
// that a caller creating a key on first use can tell a new store from one
// whose key went missing: a new key could never open the old store.
func Exists(ctx context.Context, b backend.Backend) (bool, error) {
	_, err := b.Get(ctx, "config")
	switch {
	case err == nil:
		return true, nil
	case errors.Is(err, backend.ErrNotFound):
		return false, nil
	default:
		return false, fmt.Errorf("look for a store: %w", err)
	}
}

// Open opens the store described by opts, creating it when the backend
// holds no store yet. A key provider that cannot unwrap the store's keys
// gives an error wrapping ErrWrongKey; a nil provider one wrapping ErrNoKey.
func Open(ctx context.Context, opts Options) (*Store, error) {
	if opts.Dir == "" || opts.Backend == nil {
		return nil, errors.New("open store: Dir and Backend are required")
	}
	if opts.Keys == nil {
		return nil, fmt.Errorf("open store: %w", ErrNoKey)
	}
	setDefaults(&opts)
	if !validChunkSize(opts.ChunkSize) {
		return nil, fmt.Errorf("open store: chunk size %d is not a power of two from 64 KiB to 4 MiB", opts.ChunkSize)
	}
	if _, err := opts.Cipher.id(); err != nil {
		return nil, fmt.Errorf("open store: %w", err)
	}
	if err := os.MkdirAll(filepath.Join(opts.Dir, "disks"), 0o700); err != nil {
		return nil, fmt.Errorf("open store: create staging directory: %w", err)
	}
	lock, err := os.OpenFile(filepath.Join(opts.Dir, "LOCK"), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open store: %w", err)
	}
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		lock.Close()
		return nil, fmt.Errorf("open store %s: %w", opts.Dir, ErrLocked)
	}
	s := &Store{opts: opts, be: opts.Backend, lock: lock, disks: map[string]*Disk{}, known: map[Hash]int64{}, inflight: map[Hash]*chunkBatch{},
		flights: map[Hash]*flight{}, readAhead: make(chan struct{}, runtime.GOMAXPROCS(0)),
		jrefs: map[Hash]int{}, sealSlots: make(chan struct{}, 2*runtime.GOMAXPROCS(0)),
		foldSlots: make(chan struct{}, max(2, runtime.GOMAXPROCS(0)))}
	s.ctx, s.cancel = context.WithCancel(context.Background())
	s.files = newSegFiles(opts.MaxOpenSegments)
	if s.syncer, err = newSyncer(filepath.Join(opts.Dir, "disks"), syncBatchAt); err != nil {
		lock.Close()
		return nil, fmt.Errorf("open store: %w", err)
	}
	if err := s.open(ctx); err != nil {
		s.cancel()
		for _, d := range s.disks {
			d.j.close()
		}
		s.syncer.close()
		if s.sl != nil {
			s.sl.close()
		}
		lock.Close()
		return nil, fmt.Errorf("open store: %w", err)
	}
	for _, d := range s.disks {
		s.startFolder(d)
	}
	return s, nil
}

func setDefaults(o *Options) {
	if o.ChunkSize == 0 {
		o.ChunkSize = DefaultChunkSize
	}
	if o.Cipher == "" {
		o.Cipher = XChaCha20Poly1305
	}
	if o.SegmentSize <= 0 {
		o.SegmentSize = 64 << 20
	}
	if o.Window.MaxBytes <= 0 {
		o.Window.MaxBytes = 1 << 30
	}
	if o.Window.MaxAge <= 0 {
		o.Window.MaxAge = time.Hour
	}
	if o.FoldInterval == 0 {
		o.FoldInterval = 10 * time.Second
	}
	if o.FoldBytes <= 0 {
		o.FoldBytes = 256 << 20
	}
	if o.CacheSize <= 0 {
		o.CacheSize = 64 << 20
	}
	if len(o.Retention.Rules) == 0 {
		o.Retention = DefaultRetention()
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Logf == nil {
		o.Logf = func(string, ...any) {}
	}
}

func (s *Store) open(ctx context.Context) error {
	raw, err := s.be.Get(ctx, "config")
	switch {
	case errors.Is(err, backend.ErrNotFound):
		if err := s.create(ctx); err != nil {
			return err
		}
	case err != nil:
		return fmt.Errorf("read config: %w", err)
	default:
		if err := json.Unmarshal(raw, &s.cfg); err != nil {
			return corrupt("config", err)
		}
		if s.cfg.Version < 1 || s.cfg.Version > formatVersion {
			return fmt.Errorf("store format version %d is not supported", s.cfg.Version)
		}
		if !validChunkSize(s.cfg.ChunkSize) {
			return corrupt("config", fmt.Errorf("chunk size %d", s.cfg.ChunkSize))
		}
	}
	keys, err := s.opts.Keys.UnwrapKey(ctx, s.cfg.WrappedKeys)
	if err != nil {
		return fmt.Errorf("unwrap data keys: %w", err)
	}
	if s.cfg.Version < formatVersion {
		// Version 2 adds journal records that reference chunks (recChunks),
		// version 3 delta entries in map pages (FPG2), version 4 chunks
		// compressed with S2; record the upgrade before any is written so
		// that an older version refuses the store instead of misreading its
		// journals, maps or chunks.
		s.cfg.Version = formatVersion
		raw, err := json.MarshalIndent(s.cfg, "", "  ")
		if err != nil {
			return err
		}
		if err := s.be.Put(ctx, "config", raw); err != nil {
			return fmt.Errorf("upgrade config: %w", err)
		}
	}
	if s.sl, err = newSealer(s.cfg.Cipher, keys, s.cfg.ChunkSize); err != nil {
		return err
	}
	s.cache = newChunkCache(s.opts.CacheSize)
	err = s.be.List(ctx, ChunkPrefix, func(name string, size int64) error {
		if h, ok := parseChunkName(name); ok {
			s.known[h] = size
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("list chunks: %w", err)
	}
	var ids []string
	err = s.be.List(ctx, "disks/", func(name string, _ int64) error {
		ids = append(ids, strings.TrimPrefix(name, "disks/"))
		return nil
	})
	if err != nil {
		return fmt.Errorf("list disks: %w", err)
	}
	known := map[string]bool{}
	for _, id := range ids {
		known[id] = true
	}
	if err := s.finishDeletes(ctx, known); err != nil {
		return err
	}
	for _, id := range ids {
		d, err := s.loadDisk(ctx, id)
		if err != nil {
			return err
		}
		s.disks[id] = d
	}
	return nil
}

func (s *Store) create(ctx context.Context) error {
	keys := make([]byte, 64)
	if _, err := rand.Read(keys); err != nil {
		return fmt.Errorf("generate data keys: %w", err)
	}
	wrapped, err := s.opts.Keys.WrapKey(ctx, keys)
	if err != nil {
		return fmt.Errorf("wrap data keys: %w", err)
	}
	id := make([]byte, 16)
	_, _ = rand.Read(id)
	s.cfg = storeConfig{Version: formatVersion, ID: hex.EncodeToString(id), ChunkSize: s.opts.ChunkSize, Cipher: s.opts.Cipher, WrappedKeys: wrapped}
	raw, err := json.MarshalIndent(s.cfg, "", "  ")
	if err != nil {
		return err
	}
	if err := s.be.Put(ctx, "config", raw); err != nil {
		return fmt.Errorf("write config: %w", err)
	}
	return nil
}

// ID returns the store's random identifier.
func (s *Store) ID() string { return s.cfg.ID }

// ChunkSize returns the store's chunk size in bytes.
func (s *Store) ChunkSize() int { return s.cfg.ChunkSize }

// Close stops background folds, waits for queued journal writes and
// releases the staging directory. Readers opened before keep working until
// closed only as far as they need no new backend reads.
func (s *Store) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	disks := make([]*Disk, 0, len(s.disks))
	for _, d := range s.disks {
		disks = append(disks, d)
	}
	s.mu.Unlock()
	s.cancel()
	s.wg.Wait()
	for _, d := range disks {
		d.j.close()
	}
	s.syncer.close()
	s.sl.close()
	err := s.lock.Close()
	if s.opts.CloseBackend {
		if berr := s.be.Close(); berr != nil {
			err = errors.Join(err, fmt.Errorf("close backend: %w", berr))
		}
	}
	return err
}

// Disk returns the disk with id, or an error wrapping ErrNotFound.
func (s *Store) Disk(id string) (*Disk, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	d, ok := s.disks[id]
	if !ok {
		return nil, fmt.Errorf("disk %q: %w", id, ErrNotFound)
	}
	return d, nil
}

// Disks returns the store's disks sorted by id.
func (s *Store) Disks() []*Disk {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]*Disk, 0, len(s.disks))
	for _, d := range s.disks {
		out = append(out, d)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].id < out[j].id })
	return out
}

// ValidDiskID reports whether id can name a disk: 1 to 128 characters from
// [A-Za-z0-9._-], not starting with a dot.
func ValidDiskID(id string) bool {
	return len(id) <= 128 && !strings.Contains(id, "/") && backend.ValidName(id)
}

// getChunk returns the plaintext content of chunk h. A missing or damaged
// chunk is a CorruptError naming it. Concurrent calls for the same chunk
// (a read and a read-ahead) share one backend read and one decryption.
func (s *Store) getChunk(ctx context.Context, h Hash) ([]byte, error) {
	if b, ok := s.cache.get(h); ok {
		return b, nil
	}
	s.flightMu.Lock()
	if f, ok := s.flights[h]; ok {
		s.flightMu.Unlock()
		select {
		case <-f.done:
			return f.b, f.err
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	f := &flight{done: make(chan struct{})}
	s.flights[h] = f
	s.flightMu.Unlock()
	f.b, f.err = s.loadChunk(ctx, h)
	if f.err == nil {
		s.cache.add(h, f.b)
	}
	s.flightMu.Lock()
	delete(s.flights, h)
	s.flightMu.Unlock()
	close(f.done)
	return f.b, f.err
}

// flight is one backend read of a chunk that concurrent getChunk calls share.
type flight struct {
	done chan struct{}
	b    []byte
	err  error
}

func (s *Store) loadChunk(ctx context.Context, h Hash) ([]byte, error) {
	obj, err := s.be.Get(ctx, chunkName(h))
	if err != nil {
		if errors.Is(err, backend.ErrNotFound) {
			return nil, corrupt(chunkName(h), errors.New("missing"))
		}
		if errors.Is(err, backend.ErrCorrupt) {
			return nil, corrupt(chunkName(h), err)
		}
		return nil, fmt.Errorf("read chunk: %w", err)
	}
	return s.sl.openChunk(h, obj)
}

// prefetch loads chunk h into the cache in the background unless it is
// cached, being loaded, or every read-ahead slot is busy.
func (s *Store) prefetch(h Hash) {
	if h.IsZero() || s.cache.has(h) {
		return
	}
	s.flightMu.Lock()
	_, busy := s.flights[h]
	s.flightMu.Unlock()
	if busy {
		return
	}
	select {
	case s.readAhead <- struct{}{}:
	default:
		return
	}
	// Close waits for read-ahead like any background work: it then
	// closes the sealer and the backend a load would still be using.
	// Adding under mu before closed is set keeps Add before Close's Wait.
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		<-s.readAhead
		return
	}
	s.wg.Add(1)
	s.mu.Unlock()
	go func() {
		defer s.wg.Done()
		defer func() { <-s.readAhead }()
		_, _ = s.getChunk(s.ctx, h) // errors surface on the demand read
	}()
}

// chunkBatch collects the chunks one fold stores, so that they become
// durable together (backend.Batch) before the block map that references
// them is published.
type chunkBatch struct {
	s  *Store
	b  backend.Batch
	mu sync.Mutex
	// staged holds the chunks put into b and their object sizes.
	staged map[Hash]int64
}

func (s *Store) newChunkBatch() *chunkBatch {
	return &chunkBatch{s: s, b: backend.NewBatch(s.be), staged: map[Hash]int64{}}
}

// commit makes the batch's chunks durable and records them as stored.
func (cb *chunkBatch) commit(ctx context.Context) error {
	err := cb.b.Commit(ctx)
	s := cb.s
	s.chunkMu.Lock()
	for h, n := range cb.staged {
		if s.inflight[h] == cb {
			delete(s.inflight, h)
		}
		if err == nil {
			s.known[h] = n
		}
	}
	s.chunkMu.Unlock()
	if err != nil {
		return backendErr("write chunks", err)
	}
	return nil
}

// abort discards the batch after a failure.
func (cb *chunkBatch) abort() {
	cb.b.Abort()
	s := cb.s
	s.chunkMu.Lock()
	for h := range cb.staged {
		if s.inflight[h] == cb {
			delete(s.inflight, h)
		}
	}
	s.chunkMu.Unlock()
}

var objPool = sync.Pool{New: func() any { return new([]byte) }}

// putChunk stages content in cb unless an identical chunk is stored or
// staged in cb already, and returns its hash; all-zero content is never
// stored and has the zero Hash. A chunk another fold's batch is staging
// is staged again here rather than waited for: two folds waiting on each
// other's commit would deadlock, and both write the same complete object.
// Callers hold gcMu shared.
func (s *Store) putChunk(ctx context.Context, cb *chunkBatch, content []byte) (Hash, error) {
	return s.storeChunk(ctx, cb, content, Frame{}, false)
}

// storeChunk is putChunk; with journalRef it also takes a journal
// reference on the chunk (see jrefs) in the same critical section as the
// dedup check, so GC cannot delete a stored chunk the journal is about to
// reference. frame, when it has data, is a compressed form of content to
// store (see encodeChunk). Callers hold gcMu shared unless
// journalRef is set.
func (s *Store) storeChunk(ctx context.Context, cb *chunkBatch, content []byte, frame Frame, journalRef bool) (Hash, error) {
	if zeros.Is(content) {
		return Hash{}, nil
	}
	h := s.sl.hash(content)
	s.chunkMu.Lock()
	if journalRef {
		s.jrefs[h]++
	}
	if _, ok := s.known[h]; ok {
		s.chunkMu.Unlock()
		return h, nil
	}
	owner, busy := s.inflight[h]
	if busy && owner == cb {
		s.chunkMu.Unlock()
		return h, nil
	}
	if !busy {
		s.inflight[h] = cb
	}
	s.chunkMu.Unlock()
	bp := objPool.Get().(*[]byte)
	obj := s.sl.encodeChunk(h, content, frame, (*bp)[:0])
	err := cb.b.Put(ctx, chunkName(h), obj)
	*bp = obj
	objPool.Put(bp)
	if err != nil {
		s.chunkMu.Lock()
		if s.inflight[h] == cb {
			delete(s.inflight, h)
		}
		if journalRef {
			s.unrefLocked(h)
		}
		s.chunkMu.Unlock()
		return Hash{}, backendErr("write chunk", err)
	}
	cb.mu.Lock()
	cb.staged[h] = int64(len(obj))
	cb.mu.Unlock()
	return h, nil
}

// refChunks takes a journal reference on each non-zero hash.
func (s *Store) refChunks(hs []Hash) {
	if len(hs) == 0 {
		return
	}
	s.chunkMu.Lock()
	defer s.chunkMu.Unlock()
	for _, h := range hs {
		if !h.IsZero() {
			s.jrefs[h]++
		}
	}
}

// unrefChunks drops a journal reference on each non-zero hash.
func (s *Store) unrefChunks(hs []Hash) {
	if len(hs) == 0 {
		return
	}
	s.chunkMu.Lock()
	defer s.chunkMu.Unlock()
	for _, h := range hs {
		s.unrefLocked(h)
	}
}

func (s *Store) unrefLocked(h Hash) {
	if h.IsZero() {
		return
	}
	if s.jrefs[h]--; s.jrefs[h] <= 0 {
		delete(s.jrefs, h)
	}
}

func backendErr(op string, err error) error {
	if errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EDQUOT) {
		return fmt.Errorf("%s: %w: %w", op, ErrNoSpace, err)
	}
	return fmt.Errorf("%s: %w", op, err)
}

// getSealed reads and opens a sealed metadata object.
func (s *Store) getSealed(ctx context.Context, name string, kind byte) ([]byte, error) {
	obj, err := s.be.Get(ctx, name)
	if errors.Is(err, backend.ErrCorrupt) {
		return nil, corrupt(name, err)
	}
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", name, err)
	}
	return s.sl.open(name, kind, obj)
}

// chunkCache is an LRU cache of decrypted chunk contents.
type chunkCache struct {
	mu    sync.Mutex
	max   int64
	used  int64
	ll    *list.List
	items map[Hash]*list.Element
}

type cacheEntry struct {
	h Hash
	b []byte
}

func newChunkCache(max int64) *chunkCache {
	return &chunkCache{max: max, ll: list.New(), items: map[Hash]*list.Element{}}
}

func (c *chunkCache) get(h Hash) ([]byte, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if e, ok := c.items[h]; ok {
		c.ll.MoveToFront(e)
		return e.Value.(*cacheEntry).b, true
	}
	return nil, false
}

func (c *chunkCache) has(h Hash) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	_, ok := c.items[h]
	return ok
}

func (c *chunkCache) add(h Hash, b []byte) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, ok := c.items[h]; ok || int64(len(b)) > c.max {
		return
	}
	c.items[h] = c.ll.PushFront(&cacheEntry{h, b})
	c.used += int64(len(b))
	for c.used > c.max {
		e := c.ll.Back()
		ent := e.Value.(*cacheEntry)
		c.ll.Remove(e)
		delete(c.items, ent.h)
		c.used -= int64(len(ent.b))
	}
}

func (c *chunkCache) remove(h Hash) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if e, ok := c.items[h]; ok {
		c.ll.Remove(e)
		delete(c.items, h)
		c.used -= int64(len(e.Value.(*cacheEntry).b))
	}
}
