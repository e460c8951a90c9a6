package ebpf

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/cilium/ebpf/btf"
	"github.com/cilium/ebpf/link"
	"github.com/cilium/ebpf/ringbuf"
	"github.com/cilium/ebpf/rlimit"
	"golang.org/x/sys/unix"

	"github.com/ferrymigrate/ferry/track"
)

// ErrUnsupported means the eBPF tracker cannot run here: not root (or no
// CAP_BPF), no kernel BTF, or the kernel refused to load or attach the
// program. Callers fall back to track.NewRescan (Auto does).
var ErrUnsupported = errors.New("eBPF change tracking unsupported")

// DefaultRingSize is the size of the BPF ring buffer in bytes: 1 MiB holds
// about 43,000 completed writes between two reads.
const DefaultRingSize = 1 << 20

// lostPoll is how often Next checks the overflow counters (and the
// program's recursion misses): at most that often while events stream in,
// at least that often when none arrive. Reading them costs two or more
// system calls, which at thousands of writes a second were a tenth of the
// agent's CPU when done for every batch; a loss noticed 100 ms later is
// still never a gap (the device is compared by hashes), and Sync reads
// them itself.
const lostPoll = 100 * time.Millisecond

// eventSize is the size of struct event in blk.c.
const eventSize = 32

// Event kinds (blk.c).
const (
	evComplete = 0
	evIssue    = 1
)

// pendingGrace is how long a write request may be issued without a
// completion event before its range is reported anyway. The completion
// tracepoint does not fire for every completed request (seen on loop
// devices with concurrent reads: about one write in 40,000), so an issued
// write whose completion was not seen counts as written once this much
// time has passed, and at once when Sync vouches for the present.
const pendingGrace = 2 * time.Second

// Option configures New.
type Option func(*options)

type options struct {
	ringSize   int
	maxExtents int
	hold       chan struct{} // tests: the ring reader waits until it is closed
}

// WithRingSize sets the size of the BPF ring buffer in bytes, rounded up
// to a power of two of at least the page size. Tests shrink it to provoke
// overflow.
func WithRingSize(n int) Option {
	return func(o *options) { o.ringSize = n }
}

// WithMaxExtents bounds the dirty extents kept per device between two
// calls of Next (see track.ExtentSet); the default is
// track.DefaultMaxExtents.
func WithMaxExtents(n int) Option {
	return func(o *options) { o.maxExtents = n }
}

// Tracker reports the writes completed on a set of block devices, as seen
// by an eBPF program on block_rq_complete. It implements track.Tracker.
// Next and Close may be called from different goroutines.
type Tracker struct {
	objs      blkObjects
	link      link.Link // block_rq_complete
	issueLink link.Link // block_rq_issue
	ring      *ringbuf.Reader
	disks     []*disk // index = value in the devices map = key in lost

	notify  chan struct{} // a batch may be ready; capacity 1
	hurry   chan struct{} // a Sync waits: end the reader's linger; capacity 1
	closing chan struct{} // closed by Close
	done    chan struct{} // closed when the ring reader goroutine ends

	closeOnce sync.Once
	closeErr  error
	// mapsMu is held shared while Next reads the maps and exclusively
	// while Close releases them.
	mapsMu sync.RWMutex

	// missesSeen is the program's recursion-miss count at the last look;
	// guarded by mapsMu's readers being serialised by missMu.
	missMu     sync.Mutex
	missesSeen uint64
	// ringMu guards ringClosed against the reader's looks at the ring.
	ringMu     sync.RWMutex
	ringClosed bool
	// lostChecked is when Next last read the overflow counters; used by
	// Next only (its one caller at a time, the agent's consumer).
	lostChecked time.Time

	mu      sync.Mutex
	devices []*device // guarded by mu (their sets and lost flags)
	err     error     // guarded by mu: the ring reader's failure
	// counted is the number of events read into the sets: every event
	// numbered below it is in them (or was taken from them). Guarded by
	// mu, as are ahead (events read out of order, numbered above counted) and
	// taken (how many times Next returned batches).
	counted uint64
	ahead   map[uint64]struct{}
	taken   uint64
	// progress is closed and replaced whenever counted moves while a Sync
	// waits (waiters > 0); guarded by mu.
	progress chan struct{}
	waiters  int
	// pending holds write requests issued and not yet seen completing;
	// guarded by mu.
	pending map[reqKey]*pendingReq
}

// reqKey names a request by where it writes: its completion reports the
// same disk, sector and length.
type reqKey struct {
	dev       uint32
	sector    uint64
	nrSectors uint32
}

// pendingReq counts issued requests of one key without a completion.
type pendingReq struct {
	n  int
	at time.Time // when the oldest was issued
}

// disk is a tracked whole disk: what the kernel reports completions for.
type disk struct {
	dev      uint32    // the kernel's dev_t, major<<20 | minor
	devices  []*device // the tracked devices on it (the disk, partitions)
	lostSeen uint64    // overflow counter at the last look
}

// device is a tracked device path: a whole disk or a partition of one.
type device struct {
	path  string
	start int64 // byte offset on the disk (partitions)
	size  int64 // bytes; 0: unbounded (whole disks may grow)
	lbs   int64 // logical block size
	set   *track.ExtentSet
	lost  bool
}

var (
	_ track.Tracker = (*Tracker)(nil)
	_ track.Syncer  = (*Tracker)(nil)
)

// New loads the BPF program, fills its device filter with devices (block
// device paths: whole disks, loop devices or partitions) and attaches it.
// Writes that complete after New returns are reported by Next.
//
// Requires root (or CAP_BPF and CAP_PERFMON) and kernel BTF. Returns an
// error wrapping ErrUnsupported when the program cannot be loaded or
// attached, or when a device is bio-based (device mapper, md, zram: they
// complete no requests, so the tracepoint never fires for them); other
// errors concern the devices.
func New(devices []string, opts ...Option) (*Tracker, error) {
	o := options{ringSize: DefaultRingSize}
	for _, opt := range opts {
		opt(&o)
	}
	if len(devices) == 0 {
		return nil, errors.New("ebpf: no devices to track")
	}
	t := &Tracker{
		notify:   make(chan struct{}, 1),
		hurry:    make(chan struct{}, 1),
		closing:  make(chan struct{}),
		done:     make(chan struct{}),
		ahead:    map[uint64]struct{}{},
		progress: make(chan struct{}),
		pending:  map[reqKey]*pendingReq{},
	}
	byDev := map[uint32]*disk{}
	for _, path := range devices {
		d, diskDev, err := resolve(path)
		if err != nil {
			return nil, err
		}
		d.set = track.NewExtentSet(d.lbs, o.maxExtents)
		t.devices = append(t.devices, d)
		k := byDev[diskDev]
		if k == nil {
			k = &disk{dev: diskDev}
			byDev[diskDev] = k
			t.disks = append(t.disks, k)
		}
		k.devices = append(k.devices, d)
	}

	if _, err := btf.LoadKernelSpec(); err != nil {
		return nil, fmt.Errorf("%w: load kernel BTF: %w", ErrUnsupported, err)
	}
	// Before Linux 5.11, BPF maps count against RLIMIT_MEMLOCK. Best
	// effort: with CAP_BPF but not CAP_SYS_RESOURCE on a newer kernel it
	// fails and is not needed; if it was needed, the load fails below.
	_ = rlimit.RemoveMemlock()
	spec, err := loadBlk()
	if err != nil {
		return nil, fmt.Errorf("load BPF object: %w", err)
	}
	spec.Maps[blkMapDevices].MaxEntries = uint32(len(t.disks))
	spec.Maps[blkMapLost].MaxEntries = uint32(len(t.disks))
	spec.Maps[blkMapEvents].MaxEntries = ringSize(o.ringSize)
	if err := spec.LoadAndAssign(&t.objs, nil); err != nil {
		return nil, fmt.Errorf("%w: load BPF program: %w", ErrUnsupported, err)
	}
	for i, k := range t.disks {
		if err := t.objs.Devices.Put(k.dev, uint32(i)); err != nil {
			t.objs.Close()
			return nil, fmt.Errorf("fill device filter: %w", err)
		}
	}
	t.ring, err = ringbuf.NewReader(t.objs.Events)
	if err != nil {
		t.objs.Close()
		return nil, fmt.Errorf("%w: open ring buffer: %w", ErrUnsupported, err)
	}
	t.link, err = link.AttachTracing(link.TracingOptions{Program: t.objs.BlockRqComplete})
	if err != nil {
		t.ring.Close()
		t.objs.Close()
		return nil, fmt.Errorf("%w: attach to block_rq_complete: %w", ErrUnsupported, err)
	}
	t.issueLink, err = link.AttachTracing(link.TracingOptions{Program: t.objs.BlockRqIssue})
	if err != nil {
		t.link.Close()
		t.ring.Close()
		t.objs.Close()
		return nil, fmt.Errorf("%w: attach to block_rq_issue: %w", ErrUnsupported, err)
	}
	go t.read(o.hold)
	return t, nil
}

// ringSize rounds n up to a power of two of at least the page size.
func ringSize(n int) uint32 {
	size := os.Getpagesize()
	for size < n {
		size <<= 1
	}
	return uint32(size)
}

// resolve finds the device's whole disk (its kernel dev_t), its place on
// it and its logical block size.
func resolve(path string) (*device, uint32, error) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return nil, 0, fmt.Errorf("stat device %s: %w", path, err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFBLK {
		return nil, 0, fmt.Errorf("device %s: not a block device", path)
	}
	major, minor := unix.Major(st.Rdev), unix.Minor(st.Rdev)
	sys, err := filepath.EvalSymlinks(fmt.Sprintf("/sys/dev/block/%d:%d", major, minor))
	if err != nil {
		return nil, 0, fmt.Errorf("device %s: find in sysfs: %w", path, err)
	}
	d := &device{path: path}
	diskSys := sys
	if _, err := os.Stat(filepath.Join(sys, "partition")); err == nil {
		// A partition: completions name its disk, with absolute sectors.
		diskSys = filepath.Dir(sys)
		start, err := readInt(filepath.Join(sys, "start"))
		if err != nil {
			return nil, 0, fmt.Errorf("device %s: partition start: %w", path, err)
		}
		size, err := readInt(filepath.Join(sys, "size"))
		if err != nil {
			return nil, 0, fmt.Errorf("device %s: partition size: %w", path, err)
		}
		d.start, d.size = start*512, size*512
		b, err := os.ReadFile(filepath.Join(diskSys, "dev"))
		if err != nil {
			return nil, 0, fmt.Errorf("device %s: disk of partition: %w", path, err)
		}
		if _, err := fmt.Sscanf(strings.TrimSpace(string(b)), "%d:%d", &major, &minor); err != nil {
			return nil, 0, fmt.Errorf("device %s: parse disk dev %q: %w", path, b, err)
		}
	}
	if _, err := os.Stat(filepath.Join(diskSys, "mq")); err != nil {
		// Bio-based drivers (device mapper, md, zram, brd) never allocate
		// requests, so block_rq_complete would never fire for them.
		return nil, 0, fmt.Errorf("%w: device %s: %s is bio-based, it completes no requests to trace; track the disks under it",
			ErrUnsupported, path, filepath.Base(diskSys))
	}
	d.lbs, err = readInt(filepath.Join(diskSys, "queue", "logical_block_size"))
	if err != nil {
		return nil, 0, fmt.Errorf("device %s: logical block size: %w", path, err)
	}
	return d, major<<20 | minor, nil
}

func readInt(path string) (int64, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	return strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
}

// read drains the ring buffer into the devices' extent sets until Close.
func (t *Tracker) read(hold chan struct{}) {
	defer close(t.done)
	if hold != nil {
		select {
		case <-hold:
		case <-t.closing:
			return
		}
	}
	byDev := make(map[uint32]*disk, len(t.disks))
	for _, k := range t.disks {
		byDev[k.dev] = k
	}
	var rec ringbuf.Record
	linger := time.NewTimer(readLinger)
	linger.Stop()
	for {
		err := t.ring.ReadInto(&rec)
		if errors.Is(err, ringbuf.ErrClosed) {
			return
		}
		if err != nil {
			t.mu.Lock()
			t.err = fmt.Errorf("read ring buffer: %w", err)
			t.mu.Unlock()
			t.wake()
			return
		}
		if len(rec.RawSample) < eventSize {
			continue
		}
		dev := binary.NativeEndian.Uint32(rec.RawSample[0:])
		n := binary.NativeEndian.Uint32(rec.RawSample[4:])
		sector := binary.NativeEndian.Uint64(rec.RawSample[8:])
		seq := binary.NativeEndian.Uint64(rec.RawSample[16:])
		kind := binary.NativeEndian.Uint32(rec.RawSample[24:])
		key := reqKey{dev, sector, n}
		t.mu.Lock()
		if k := byDev[dev]; k != nil {
			if kind == evIssue {
				if p := t.pending[key]; p != nil {
					p.n++
				} else {
					t.pending[key] = &pendingReq{n: 1, at: time.Now()}
				}
			} else {
				if p := t.pending[key]; p != nil {
					if p.n--; p.n <= 0 {
						delete(t.pending, key)
					}
				}
				k.addLocked(sector, n)
			}
		}
		t.countLocked(seq)
		t.mu.Unlock()
		if kind != evIssue {
			t.wake()
		}
		if t.ringEmpty() {
			// The ring is empty: let the next events gather instead of
			// waking for each one (every write is two events, and at
			// thousands of writes a second a wake-up per event was a
			// sixth of the agent's CPU). Adds at most readLinger to the
			// RPO; a Sync ends the wait at once.
			linger.Reset(readLinger)
			select {
			case <-linger.C:
			case <-t.hurry:
				linger.Stop()
			case <-t.closing:
				linger.Stop()
			}
		}
	}
}

// ringEmpty reports whether the ring holds no record, false once the
// tracker closes. ringbuf.Reader.AvailableBytes may not run beside Close
// (Close clears the reader's ring), hence ringMu.
func (t *Tracker) ringEmpty() bool {
	t.ringMu.RLock()
	defer t.ringMu.RUnlock()
	if t.ringClosed {
		return false
	}
	return t.ring.AvailableBytes() == 0
}

// readLinger is how long the ring reader waits, once it emptied the ring,
// before it reads (and, when nothing came, sleeps in epoll) again. Each
// wake-up costs the agent the same whether one write or fifty came: at
// 5 MB/s of random 4 KiB writes the agent used 18 % of a core with 1 ms
// and 4 % with 50 ms (ferry bench all --only rpo), its RPO p99 staying
// under 0.2 s against the 1 s goal.
const readLinger = 50 * time.Millisecond

// countLocked records that event seq is in the sets. Events are numbered
// when their ring slot is taken but may be committed, and so read, out of
// order: counted only moves past a number once every lower one was read.
func (t *Tracker) countLocked(seq uint64) {
	switch {
	case seq == t.counted:
		t.counted++
		for {
			if _, ok := t.ahead[t.counted]; !ok {
				break
			}
			delete(t.ahead, t.counted)
			t.counted++
		}
	case seq > t.counted:
		t.ahead[seq] = struct{}{}
	default:
		return // a number seen twice cannot move anything
	}
	if t.waiters > 0 {
		close(t.progress)
		t.progress = make(chan struct{})
	}
}

// Sync vouches for the present: every write completed on a tracked device
// before Sync was called is in the batches returned by the first n calls
// of Next that returned batches (counted from New), or made one of them
// Lost. It implements track.Syncer. A write completes to its writer only
// after the program has numbered its event, so reading the counter here
// and waiting until every lower number was read leaves none behind; the
// overflow counters are read after it for the same reason.
func (t *Tracker) Sync(ctx context.Context) (n uint64, err error) {
	var target uint64
	t.mapsMu.RLock()
	select {
	case <-t.closing:
		t.mapsMu.RUnlock()
		return 0, fmt.Errorf("ebpf: sync: %w", track.ErrClosed)
	default:
	}
	err = t.objs.Seq.Lookup(uint32(0), &target)
	t.mapsMu.RUnlock()
	if err != nil {
		return 0, fmt.Errorf("ebpf: sync: read event counter: %w", err)
	}
	if err := t.checkLost(); err != nil {
		return 0, err
	}
	select {
	case t.hurry <- struct{}{}:
	default:
	}
	t.mu.Lock()
	t.waiters++
	defer func() {
		t.waiters--
		t.mu.Unlock()
	}()
	for t.counted < target {
		if t.err != nil {
			return 0, fmt.Errorf("ebpf: sync: %w", t.err)
		}
		ch := t.progress
		t.mu.Unlock()
		select {
		case <-ctx.Done():
			t.mu.Lock()
			return 0, fmt.Errorf("ebpf: sync: waiting for %d events, %d read: %w", target, t.counted, ctx.Err())
		case <-t.closing:
			t.mu.Lock()
			return 0, fmt.Errorf("ebpf: sync: %w", track.ErrClosed)
		case <-ch:
		}
		t.mu.Lock()
	}
	// A write completed before Sync whose completion event never came is
	// among the pending requests: report them all now (each stays
	// pending, to be reported again once it may have completed).
	t.settleLocked(time.Time{}, true)
	for _, d := range t.devices {
		if d.set.Len() > 0 || d.lost {
			// Still in the sets: the next batch carries it.
			t.wake()
			return t.taken + 1, nil
		}
	}
	return t.taken, nil
}

// addLocked marks n sectors written from sector on every tracked device
// of the disk.
func (k *disk) addLocked(sector uint64, n uint32) {
	for _, d := range k.devices {
		d.addLocked(int64(sector)*512, int64(n)*512)
	}
}

// settleLocked reports the pending requests issued before cutoff as
// written (their completion was not seen) and forgets them; with keep, it
// reports them all and keeps them pending, so that one still in flight is
// reported again once it may have completed.
func (t *Tracker) settleLocked(cutoff time.Time, keep bool) {
	for key, p := range t.pending {
		if !keep && p.at.After(cutoff) {
			continue
		}
		for _, k := range t.disks {
			if k.dev == key.dev {
				k.addLocked(key.sector, key.nrSectors)
			}
		}
		if !keep {
			delete(t.pending, key)
		}
	}
}

// addLocked marks a completed write of the whole disk dirty on d, clipped
// to a partition's range.
func (d *device) addLocked(off, length int64) {
	end := off + length
	if d.size > 0 {
		off = max(off, d.start)
		end = min(end, d.start+d.size)
	}
	if end <= off {
		return
	}
	d.set.Add(off-d.start, end-off)
}

func (t *Tracker) wake() {
	select {
	case t.notify <- struct{}{}:
	default:
	}
}

// Kind returns "ebpf".
func (t *Tracker) Kind() string { return "ebpf" }

// Next blocks until at least one device has dirty extents or lost events,
// or ctx ends, and returns one batch per such device. After Close it
// returns an error wrapping track.ErrClosed.
func (t *Tracker) Next(ctx context.Context) ([]track.Batch, error) {
	tick := time.NewTicker(lostPoll)
	defer tick.Stop()
	for {
		select {
		case <-t.closing:
			return nil, fmt.Errorf("ebpf: next batch: %w", track.ErrClosed)
		default:
		}
		if now := time.Now(); now.Sub(t.lostChecked) >= lostPoll {
			if err := t.checkLost(); err != nil {
				return nil, err
			}
			t.lostChecked = now
		}
		t.mu.Lock()
		err := t.err
		t.settleLocked(time.Now().Add(-pendingGrace), false)
		batches := t.takeLocked()
		t.mu.Unlock()
		if len(batches) > 0 {
			return batches, nil
		}
		if err != nil {
			return nil, err
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-t.closing:
		case <-t.notify:
		case <-tick.C:
		}
	}
}

// checkLost marks the devices of every disk whose overflow counter grew,
// and every device when the program missed events. The kernel does not
// run a tracing program on a CPU where it is already running: a
// completion interrupting the program's run for another completion is
// skipped, counted only as a recursion miss. Which disk it was is
// unknown, so every device is compared by hashes (rare: about one event in
// tens of thousands at thousands of writes a second, on two CPUs).
func (t *Tracker) checkLost() error {
	t.mapsMu.RLock()
	defer t.mapsMu.RUnlock()
	select {
	case <-t.closing:
		return fmt.Errorf("ebpf: next batch: %w", track.ErrClosed)
	default:
	}
	st, err := t.objs.BlockRqComplete.Stats()
	if err != nil {
		return fmt.Errorf("ebpf: read the program's recursion misses: %w", err)
	}
	t.missMu.Lock()
	missed := st.RecursionMisses != t.missesSeen
	t.missesSeen = st.RecursionMisses
	t.missMu.Unlock()
	if missed {
		t.mu.Lock()
		for _, d := range t.devices {
			d.lost = true
		}
		t.mu.Unlock()
	}
	for i, k := range t.disks {
		var perCPU []uint64
		if err := t.objs.Lost.Lookup(uint32(i), &perCPU); err != nil {
			select {
			case <-t.closing:
				return fmt.Errorf("ebpf: next batch: %w", track.ErrClosed)
			default:
			}
			return fmt.Errorf("ebpf: read overflow counter: %w", err)
		}
		var n uint64
		for _, v := range perCPU {
			n += v
		}
		if n == k.lostSeen {
			continue
		}
		k.lostSeen = n
		t.mu.Lock()
		for _, d := range k.devices {
			d.lost = true
		}
		t.mu.Unlock()
	}
	return nil
}

func (t *Tracker) takeLocked() []track.Batch {
	var batches []track.Batch
	for _, d := range t.devices {
		if d.set.Len() == 0 && !d.lost {
			continue
		}
		batches = append(batches, track.Batch{Device: d.path, Extents: d.set.Take(), Lost: d.lost})
		d.lost = false
	}
	if len(batches) > 0 {
		t.taken++
	}
	return batches
}

// Close detaches the program and releases its maps. Writes after Close are
// not reported and Next returns an error.
func (t *Tracker) Close() error {
	t.closeOnce.Do(func() {
		close(t.closing)
		t.ringMu.Lock()
		t.ringClosed = true
		errs := []error{t.link.Close(), t.issueLink.Close(), t.ring.Close()}
		t.ringMu.Unlock()
		<-t.done
		t.mapsMu.Lock()
		errs = append(errs, t.objs.Close())
		t.mapsMu.Unlock()
		if err := errors.Join(errs...); err != nil {
			t.closeErr = fmt.Errorf("ebpf: close tracker: %w", err)
		}
	})
	return t.closeErr
}
