// Package storebench measures the replica store against the goals of its
// design (docs/storage.md, "Benchmarks") in one run on one disk and prints
// a table with PASS or MISS per goal. The ferry command line runs it as
// "ferry bench store".
package storebench

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	mrand "math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"text/tabwriter"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/ferrymigrate/ferry/nbd"
	"github.com/ferrymigrate/ferry/replica"
	"github.com/ferrymigrate/ferry/replica/fs"
	"golang.org/x/sync/semaphore"
)

// Options size the run. Zero values take the defaults, chosen so a run
// takes about a minute on 2 cores.
type Options struct {
	// Dir is the directory to measure in (the disk under test). A
	// temporary directory is created in it and removed afterwards.
	// Default os.TempDir().
	Dir string
	// SeqBytes is the amount written by the sequential random-data
	// ingest and the zeros ingest; it is also the
	// size of the snapshot read over NBD. Default 256 MiB.
	SeqBytes int64
	// RandomWrites is the number of random 4 KiB writes; default 16384
	// (64 MiB).
	RandomWrites int
	// RandomDiskSize is the disk the random writes are scattered over;
	// default 4 GiB.
	RandomDiskSize int64
	// ImageBytes is the size of the image stored Copies times for the
	// dedup ratio; default 64 MiB.
	ImageBytes int64
	// Copies is how many disks hold the image; default 20.
	Copies int
	// ChunkSize is the store's chunk size; default replica.DefaultChunkSize.
	ChunkSize int
	// QemuImg is the qemu-img binary; default "qemu-img" from PATH. When it
	// cannot be found the NBD read is reported as skipped.
	QemuImg string
	// BaselineBytes is the amount written by each run of the file system
	// baseline (O_DIRECT); default 1 GiB. BaselineRuns is how many runs
	// it takes the median of; default 3.
	BaselineBytes int64
	BaselineRuns  int
	// Logf reports progress; default silent.
	Logf func(format string, args ...any)
}

// Goal statuses.
const (
	Pass = "PASS"
	Miss = "MISS"
	Skip = "SKIP"
	None = "" // a measurement without a goal
)

// Row is one measurement.
type Row struct {
	Name   string  `json:"name"`
	Value  float64 `json:"value"`
	Unit   string  `json:"unit"`
	Goal   string  `json:"goal,omitempty"`
	Status string  `json:"status,omitempty"`
	Note   string  `json:"note,omitempty"`
}

// Result holds every measurement of a run.
type Result struct {
	Dir       string `json:"dir"`
	ChunkSize int    `json:"chunk_size"`
	// FSWriteMBps is the file system's own durable sequential write
	// speed: the median of BaselineRuns runs of BaselineBytes written in
	// 1 MiB O_DIRECT writes and an fdatasync (FSWriteDirect), or, where
	// O_DIRECT is unsupported, buffered with an fdatasync every 64 MiB.
	FSWriteMBps   float64 `json:"fs_write_mbps"`
	FSWriteDirect bool    `json:"fs_write_direct"`
	// SeqIngestMBps is durable sequential 1 MiB random-data ingest into
	// the journal; SeqFoldMBps the fold of it into compressed, encrypted
	// chunks; SeqEndToEndMBps both in series.
	SeqIngestMBps   float64 `json:"seq_ingest_mbps"`
	SeqFoldMBps     float64 `json:"seq_fold_mbps"`
	SeqEndToEndMBps float64 `json:"seq_end_to_end_mbps"`
	// ZerosMBps is durable ingest plus fold of 1 MiB zero extents.
	ZerosMBps float64 `json:"zeros_mbps"`
	// RandomIngestMBps is durable ingest of random 4 KiB writes;
	// RandomFoldMBps the fold of them (journal bytes per second).
	RandomIngestMBps float64 `json:"random_ingest_mbps"`
	RandomFoldMBps   float64 `json:"random_fold_mbps"`
	// NBDReadMBps is qemu-img reading a snapshot served over NBD into
	// its null-co driver (the read alone); NBDCopyMBps the same into a new
	// raw file on the same disk (qemu-img convert -O raw). RawReadMBps and
	// RawCopyMBps are the same for a raw file holding the same bytes, and
	// QemuNBDReadMBps and QemuNBDCopyMBps for that file served by
	// qemu-nbd. Zero when skipped (NBDSkipped, QemuNBDSkipped say why).
	NBDReadMBps     float64 `json:"nbd_read_mbps"`
	NBDCopyMBps     float64 `json:"nbd_copy_mbps"`
	RawReadMBps     float64 `json:"raw_read_mbps"`
	RawCopyMBps     float64 `json:"raw_copy_mbps"`
	QemuNBDReadMBps float64 `json:"qemu_nbd_read_mbps,omitempty"`
	QemuNBDCopyMBps float64 `json:"qemu_nbd_copy_mbps,omitempty"`
	NBDSkipped      string  `json:"nbd_skipped,omitempty"`
	QemuNBDSkipped  string  `json:"qemu_nbd_skipped,omitempty"`
	// DedupRatio is the stored bytes of Copies copies of one image over
	// the stored bytes of one copy.
	DedupRatio float64 `json:"dedup_ratio"`
	// Rows is the table Run prints.
	Rows []Row `json:"rows"`
}

func (o *Options) setDefaults() {
	if o.Dir == "" {
		o.Dir = os.TempDir()
	}
	if o.SeqBytes <= 0 {
		o.SeqBytes = 256 << 20
	}
	o.SeqBytes = max(o.SeqBytes>>20, 1) << 20
	if o.BaselineBytes <= 0 {
		o.BaselineBytes = 1 << 30
	}
	o.BaselineBytes = max(o.BaselineBytes>>20, 1) << 20
	if o.BaselineRuns <= 0 {
		o.BaselineRuns = 3
	}
	if o.RandomWrites <= 0 {
		o.RandomWrites = 16384
	}
	if o.RandomDiskSize <= 0 {
		o.RandomDiskSize = 4 << 30
	}
	o.RandomDiskSize = max(o.RandomDiskSize>>12, 1) << 12
	if o.ImageBytes <= 0 {
		o.ImageBytes = 64 << 20
	}
	o.ImageBytes = max(o.ImageBytes>>20, 1) << 20
	if o.Copies <= 0 {
		o.Copies = 20
	}
	if o.ChunkSize == 0 {
		o.ChunkSize = replica.DefaultChunkSize
	}
	if o.QemuImg == "" {
		o.QemuImg = "qemu-img"
	}
	if o.Logf == nil {
		o.Logf = func(string, ...any) {}
	}
}

// Run measures, prints the table to out and returns the results.
func Run(ctx context.Context, opts Options, out io.Writer) (*Result, error) {
	opts.setDefaults()
	dir, err := os.MkdirTemp(opts.Dir, "ferry-storebench-")
	if err != nil {
		return nil, fmt.Errorf("storebench: %w", err)
	}
	defer os.RemoveAll(dir)
	b := &bench{opts: opts, dir: dir, data: newData()}
	res := &Result{Dir: opts.Dir, ChunkSize: opts.ChunkSize}
	steps := []struct {
		name string
		fn   func(context.Context, *Result) error
	}{
		{"file system write", b.fsWrite},
		{"sequential ingest and NBD read", b.seqIngest},
		{"zeros ingest", b.zeros},
		{"random 4 KiB ingest", b.random},
		{"dedup", b.dedup},
	}
	for _, s := range steps {
		opts.Logf("storebench: %s", s.name)
		if err := s.fn(ctx, res); err != nil {
			return nil, fmt.Errorf("storebench: %s: %w", s.name, err)
		}
	}
	res.Rows = rows(res, opts)
	if err := printTable(out, res); err != nil {
		return res, fmt.Errorf("storebench: print: %w", err)
	}
	return res, nil
}

type bench struct {
	opts Options
	dir  string
	data *data
	n    int // stores opened, for unique directories
}

// data produces incompressible 1 MiB blocks that are all distinct (a
// random base window stamped with the block's index), so neither
// compression nor dedup flatters the figures.
type data struct {
	base []byte
	buf  []byte
}

const mib = 1 << 20

func newData() *data {
	base := make([]byte, 16*mib)
	r := mrand.NewChaCha8([32]byte{'f', 'e', 'r', 'r', 'y'})
	_, _ = r.Read(base)
	return &data{base: base, buf: make([]byte, mib)}
}

// block returns the i-th distinct 1 MiB block, valid until the next call.
func (d *data) block(i int64) []byte {
	off := (i * 4099) % int64(len(d.base)-mib)
	copy(d.buf, d.base[off:off+mib])
	binary.LittleEndian.PutUint64(d.buf, uint64(i))
	binary.LittleEndian.PutUint64(d.buf[mib/2:], uint64(i))
	return d.buf
}

// small returns the i-th distinct 4 KiB block, valid until the next call.
func (d *data) small(i int64) []byte {
	off := (i * 4099) % int64(len(d.base)-4096)
	b := d.buf[:4096]
	copy(b, d.base[off:off+4096])
	binary.LittleEndian.PutUint64(b, uint64(i))
	return b
}

func mbps(bytes int64, d time.Duration) float64 {
	if d <= 0 {
		return 0
	}
	return float64(bytes) / d.Seconds() / 1e6
}

// fsWrite measures the file system's own durable sequential write speed:
// BaselineBytes written in 1 MiB O_DIRECT writes (so the page cache can
// neither absorb nor delay them) followed by one fdatasync, the median of
// BaselineRuns runs. Where O_DIRECT is not supported (tmpfs, some FUSE
// file systems) it falls back to buffered 1 MiB writes with an fdatasync
// every 64 MiB. This is the disk's speed, the yardstick for Ferry's
// overhead; it must not flatter (or penalise) Ferry by measuring a cache.
func (b *bench) fsWrite(ctx context.Context, res *Result) error {
	var rates []float64
	for run := 0; run < b.opts.BaselineRuns; run++ {
		r, direct, err := b.fsWriteOnce(ctx)
		if err != nil {
			return err
		}
		rates = append(rates, r)
		res.FSWriteDirect = direct
	}
	res.FSWriteMBps = median(rates)
	return nil
}

func median(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	s := slices.Clone(v)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

func (b *bench) fsWriteOnce(ctx context.Context) (float64, bool, error) {
	name := filepath.Join(b.dir, "seq")
	defer os.Remove(name)
	direct := true
	f, err := os.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_TRUNC|unix.O_DIRECT, 0o600)
	if err != nil {
		direct = false
		if f, err = os.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600); err != nil {
			return 0, false, err
		}
	}
	defer func() { f.Close() }()
	// O_DIRECT needs a buffer aligned to the logical block size; a page
	// boundary is enough everywhere.
	raw := make([]byte, mib+4096)
	buf := raw[4096-int(uintptr(unsafe.Pointer(&raw[0]))%4096):][:mib]
	start := time.Now()
	n := b.opts.BaselineBytes / mib
	for i := int64(0); i < n; i++ {
		if err := ctx.Err(); err != nil {
			return 0, direct, err
		}
		copy(buf, b.data.block(i))
		if _, err := f.Write(buf); err != nil {
			if direct && i == 0 && errors.Is(err, syscall.EINVAL) {
				// O_DIRECT accepted at open but not for writes: fall back.
				f.Close()
				if f, err = os.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600); err != nil {
					return 0, false, err
				}
				direct = false
				start = time.Now()
				if _, err = f.Write(buf); err == nil {
					continue
				}
			}
			return 0, direct, fmt.Errorf("write: %w", err)
		}
		if !direct && i%64 == 63 {
			if err := unix.Fdatasync(int(f.Fd())); err != nil {
				return 0, direct, fmt.Errorf("sync: %w", err)
			}
		}
	}
	if err := unix.Fdatasync(int(f.Fd())); err != nil {
		return 0, direct, fmt.Errorf("sync: %w", err)
	}
	return mbps(n*mib, time.Since(start)), direct, nil
}

// openStore opens a new store (fs backend) under the run's directory. The
// returned function closes it.
func (b *bench) openStore(ctx context.Context) (*replica.Store, func(), error) {
	b.n++
	root := filepath.Join(b.dir, "store"+strconv.Itoa(b.n))
	be, err := fs.Open(filepath.Join(root, "backend"), fs.Packed(replica.ChunkPrefix))
	if err != nil {
		return nil, nil, err
	}
	keys, err := replica.CreateKeyFile(filepath.Join(root, "key"))
	if err != nil {
		be.Close()
		return nil, nil, err
	}
	s, err := replica.Open(ctx, replica.Options{
		Dir: filepath.Join(root, "staging"), Backend: be, Keys: keys,
		ChunkSize: b.opts.ChunkSize, FoldInterval: -1,
	})
	if err != nil {
		be.Close()
		return nil, nil, err
	}
	return s, func() {
		s.Close()
		be.Close()
		os.RemoveAll(root)
	}, nil
}

// The replication server's in-flight bounds for one agent's stream: it
// grants the agent 16 MiB of write credit (dataplane's defaultCreditBytes)
// and reads at most 256 records ahead of their acknowledgement (its
// ackQueue). ingest keeps the same two bounds, so the figures are what a
// single agent's stream can reach.
const (
	windowRecords = 256
	windowBytes   = 16 << 20
)

// ingest appends n extents from next with at most windowRecords records
// and windowBytes bytes in flight, as the replication server does with an
// agent's stream, and returns when all are durable.
func ingest(ctx context.Context, d *replica.Disk, n int64, next func(i int64) (int64, []byte)) error {
	type inflight struct {
		c     replica.Commit
		bytes int64
	}
	window := make(chan inflight, windowRecords)
	credit := semaphore.NewWeighted(windowBytes)
	done := make(chan error, 1)
	var failed atomic.Bool
	go func() {
		var first error
		for f := range window {
			if first == nil {
				if err := f.c.Wait(ctx); err != nil {
					first = err
					failed.Store(true)
				}
			}
			credit.Release(f.bytes)
		}
		done <- first
	}()
	seq := d.DurableSeq()
	var err error
	for i := int64(0); i < n && !failed.Load(); i++ {
		off, buf := next(i)
		size := min(int64(len(buf)), windowBytes)
		if err = credit.Acquire(ctx, size); err != nil {
			break
		}
		seq++
		var c replica.Commit
		if c, err = d.Append(seq, off, buf); err != nil {
			credit.Release(size)
			break
		}
		window <- inflight{c, size}
	}
	close(window)
	if werr := <-done; err == nil {
		err = werr
	}
	if err != nil {
		return fmt.Errorf("ingest: %w", err)
	}
	return nil
}

func (b *bench) seqIngest(ctx context.Context, res *Result) error {
	s, closeStore, err := b.openStore(ctx)
	if err != nil {
		return err
	}
	defer closeStore()
	size := b.opts.SeqBytes
	d, err := s.CreateDisk(ctx, "seq", size, 4096)
	if err != nil {
		return err
	}
	start := time.Now()
	err = ingest(ctx, d, size/mib, func(i int64) (int64, []byte) { return i * mib, b.data.block(i) })
	if err != nil {
		return err
	}
	ingested := time.Now()
	if err := d.Fold(ctx); err != nil {
		return err
	}
	folded := time.Now()
	res.SeqIngestMBps = mbps(size, ingested.Sub(start))
	res.SeqFoldMBps = mbps(size, folded.Sub(ingested))
	res.SeqEndToEndMBps = mbps(size, folded.Sub(start))
	return b.nbdRead(ctx, d, res)
}

func (b *bench) zeros(ctx context.Context, res *Result) error {
	s, closeStore, err := b.openStore(ctx)
	if err != nil {
		return err
	}
	defer closeStore()
	size := b.opts.SeqBytes
	d, err := s.CreateDisk(ctx, "zeros", size, 4096)
	if err != nil {
		return err
	}
	zero := make([]byte, mib)
	start := time.Now()
	if err := ingest(ctx, d, size/mib, func(i int64) (int64, []byte) { return i * mib, zero }); err != nil {
		return err
	}
	if err := d.Fold(ctx); err != nil {
		return err
	}
	res.ZerosMBps = mbps(size, time.Since(start))
	return nil
}

func (b *bench) random(ctx context.Context, res *Result) error {
	s, closeStore, err := b.openStore(ctx)
	if err != nil {
		return err
	}
	defer closeStore()
	d, err := s.CreateDisk(ctx, "random", b.opts.RandomDiskSize, 4096)
	if err != nil {
		return err
	}
	rng := mrand.New(mrand.NewPCG(1, 2))
	blocks := b.opts.RandomDiskSize / 4096
	n := int64(b.opts.RandomWrites)
	start := time.Now()
	err = ingest(ctx, d, n, func(i int64) (int64, []byte) {
		return rng.Int64N(blocks) * 4096, b.data.small(i)
	})
	if err != nil {
		return err
	}
	ingested := time.Now()
	if err := d.Fold(ctx); err != nil {
		return err
	}
	res.RandomIngestMBps = mbps(n*4096, ingested.Sub(start))
	res.RandomFoldMBps = mbps(n*4096, time.Since(ingested))
	return nil
}

// nbdRead snapshots d, serves the snapshot over NBD on a unix socket and
// times qemu-img reading it, beside the same bytes read from a raw file on
// the same disk and, when qemu-nbd is installed, from that file served by
// qemu-nbd, QEMU's own NBD server. Each source is read twice: into
// qemu's null-co driver (the read alone, which the goal is about) and
// into a new raw file on the same disk (a copy-out, which adds qemu-img's
// write path and the disk's write to the read).
func (b *bench) nbdRead(ctx context.Context, d *replica.Disk, res *Result) error {
	qemuImg, err := exec.LookPath(b.opts.QemuImg)
	if err != nil {
		res.NBDSkipped = fmt.Sprintf("qemu-img not found: %v", err)
		return nil
	}
	snap, err := d.Snapshot(ctx, replica.SnapshotOptions{Consistency: replica.Inconsistent})
	if err != nil {
		return err
	}
	r, err := d.OpenSnapshot(ctx, snap.ID)
	if err != nil {
		return err
	}
	defer r.Close()
	sock := filepath.Join(b.dir, "nbd.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	dev := nbd.WithExtents(r, r.Extents)
	srv := &nbd.Server{Lookup: func(name string) (nbd.Device, error) {
		if name != "snapshot" {
			return nil, fmt.Errorf("export %q: %w", name, nbd.ErrUnknownExport)
		}
		return dev, nil
	}}
	sctx, stop := context.WithCancel(ctx)
	served := make(chan error, 1)
	go func() { served <- srv.Serve(sctx, l) }()
	defer func() {
		stop()
		<-served
	}()

	raw := filepath.Join(b.dir, "snapshot.raw")
	defer os.Remove(raw)
	if err := b.writeRaw(raw, r.Size()); err != nil {
		return err
	}
	sources := []struct {
		uri       string
		read, out *float64
	}{
		{"nbd+unix:///snapshot?socket=" + sock, &res.NBDReadMBps, &res.NBDCopyMBps},
		{raw, &res.RawReadMBps, &res.RawCopyMBps},
	}
	qsock := filepath.Join(b.dir, "qemu-nbd.sock")
	stopQemuNBD, err := startQemuNBD(ctx, raw, qsock)
	switch {
	case err != nil:
		res.QemuNBDSkipped = err.Error()
	default:
		defer stopQemuNBD()
		sources = append(sources, struct {
			uri       string
			read, out *float64
		}{"nbd+unix:///raw?socket=" + qsock, &res.QemuNBDReadMBps, &res.QemuNBDCopyMBps})
	}

	outFile := filepath.Join(b.dir, "out.raw")
	defer os.Remove(outFile)
	null := fmt.Sprintf("driver=null-co,size=%d", r.Size())
	convert := func(args ...string) (float64, error) {
		if err := os.Remove(outFile); err != nil && !errors.Is(err, os.ErrNotExist) {
			return 0, err
		}
		start := time.Now()
		cmd := exec.CommandContext(ctx, qemuImg, append([]string{"convert"}, args...)...)
		if out, err := cmd.CombinedOutput(); err != nil {
			return 0, fmt.Errorf("qemu-img %s: %w: %s", strings.Join(cmd.Args[1:], " "), err, out)
		}
		return mbps(r.Size(), time.Since(start)), nil
	}
	for _, src := range sources {
		if *src.read, err = convert("-n", "-f", "raw", src.uri, "--target-image-opts", null); err != nil {
			return err
		}
		if *src.out, err = convert("-f", "raw", "-O", "raw", src.uri, outFile); err != nil {
			return err
		}
	}
	return nil
}

// startQemuNBD serves the raw file read-only as export "raw" on a unix
// socket with qemu-nbd and returns once the socket accepts connections.
func startQemuNBD(ctx context.Context, raw, sock string) (stop func(), err error) {
	bin, err := exec.LookPath("qemu-nbd")
	if err != nil {
		return nil, fmt.Errorf("qemu-nbd not found: %w", err)
	}
	cmd := exec.CommandContext(ctx, bin, "--read-only", "--persistent", "--format", "raw", "--export-name", "raw", "--socket", sock, raw)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start qemu-nbd: %w", err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	stop = func() {
		_ = cmd.Process.Kill()
		<-exited
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := net.Dial("unix", sock)
		if err == nil {
			c.Close()
			return stop, nil
		}
		select {
		case werr := <-exited:
			return nil, fmt.Errorf("qemu-nbd exited: %v: %s", werr, stderr.Bytes())
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			stop()
			return nil, fmt.Errorf("qemu-nbd did not listen on %s within 10 s: %w", sock, err)
		}
	}
}

// writeRaw writes the bytes the sequential disk holds to a file.
func (b *bench) writeRaw(name string, size int64) error {
	f, err := os.Create(name)
	if err != nil {
		return err
	}
	for i := int64(0); i < size/mib; i++ {
		if _, err := f.Write(b.data.block(i)); err != nil {
			f.Close()
			return fmt.Errorf("write raw image: %w", err)
		}
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("sync raw image: %w", err)
	}
	return f.Close()
}

// dedup stores one image on Copies disks: a mix of random, compressible
// and zero megabytes, like a real disk image.
func (b *bench) dedup(ctx context.Context, res *Result) error {
	s, closeStore, err := b.openStore(ctx)
	if err != nil {
		return err
	}
	defer closeStore()
	size := b.opts.ImageBytes
	img := make([]byte, mib)
	block := func(i int64) []byte {
		switch i % 4 {
		case 0, 1:
			return b.data.block(1<<40 + i)
		case 2:
			for j := range img {
				img[j] = byte((int64(j) + i*mib) / 512)
			}
		default:
			clear(img)
		}
		return img
	}
	var one int64
	for k := 0; k < b.opts.Copies; k++ {
		d, err := s.CreateDisk(ctx, fmt.Sprintf("server-%02d", k), size, 4096)
		if err != nil {
			return err
		}
		if err := ingest(ctx, d, size/mib, func(i int64) (int64, []byte) { return i * mib, block(i) }); err != nil {
			return err
		}
		if err := d.Fold(ctx); err != nil {
			return err
		}
		if k == 0 {
			u, err := s.Usage(ctx)
			if err != nil {
				return err
			}
			one = u.StoredBytes
		}
	}
	u, err := s.Usage(ctx)
	if err != nil {
		return err
	}
	if one > 0 {
		res.DedupRatio = float64(u.StoredBytes) / float64(one)
	}
	return nil
}

func status(ok bool) string {
	if ok {
		return Pass
	}
	return Miss
}

func rows(r *Result, o Options) []Row {
	pct := func(v float64) string {
		if r.FSWriteMBps == 0 {
			return ""
		}
		return fmt.Sprintf("%.0f %% of fs write", 100*v/r.FSWriteMBps)
	}
	how := "1 MiB O_DIRECT writes + fdatasync"
	if !r.FSWriteDirect {
		how = "1 MiB writes, fdatasync every 64 MiB"
	}
	base := fmt.Sprintf("file system sequential write (%s), %d MiB, median of %d", how, o.BaselineBytes>>20, o.BaselineRuns)
	out := []Row{
		{Name: base, Value: r.FSWriteMBps, Unit: "MB/s"},
		{Name: "sequential 1 MiB random-data ingest, durable", Value: r.SeqIngestMBps, Unit: "MB/s", Note: pct(r.SeqIngestMBps)},
		{Name: "fold of it (zstd + encryption + store)", Value: r.SeqFoldMBps, Unit: "MB/s", Note: pct(r.SeqFoldMBps)},
		{Name: "random-data ingest + fold, end to end", Value: r.SeqEndToEndMBps, Unit: "MB/s",
			Goal: "≥ 70 % of fs write", Status: status(r.SeqEndToEndMBps >= 0.7*r.FSWriteMBps), Note: pct(r.SeqEndToEndMBps)},
		{Name: "sequential 1 MiB zeros ingest + fold", Value: r.ZerosMBps, Unit: "MB/s",
			Goal: "≥ 2000 MB/s", Status: status(r.ZerosMBps >= 2000)},
		{Name: fmt.Sprintf("random 4 KiB ingest, durable (%d writes over %d MiB)", o.RandomWrites, o.RandomDiskSize>>20), Value: r.RandomIngestMBps, Unit: "MB/s",
			Goal: "≥ 70 % of fs write", Status: status(r.RandomIngestMBps >= 0.7*r.FSWriteMBps), Note: pct(r.RandomIngestMBps)},
		{Name: "fold of the random 4 KiB writes", Value: r.RandomFoldMBps, Unit: "MB/s"},
	}
	const readGoal = "≥ 500 MB/s"
	if r.NBDSkipped != "" {
		out = append(out, Row{Name: "snapshot read over NBD (qemu-img convert to null-co)", Unit: "MB/s", Goal: readGoal, Status: Skip, Note: r.NBDSkipped})
	} else {
		rel := func(v, of float64) string {
			if of == 0 {
				return ""
			}
			return fmt.Sprintf("Ferry's NBD at %.0f %% of this", 100*v/of)
		}
		out = append(out,
			Row{Name: "snapshot read over NBD (qemu-img convert to null-co)", Value: r.NBDReadMBps, Unit: "MB/s",
				Goal: readGoal, Status: status(r.NBDReadMBps >= 500)},
			Row{Name: "same bytes, raw file (qemu-img convert to null-co)", Value: r.RawReadMBps, Unit: "MB/s", Note: rel(r.NBDReadMBps, r.RawReadMBps)})
		if r.QemuNBDSkipped != "" {
			out = append(out, Row{Name: "same bytes, raw file served by qemu-nbd (to null-co)", Unit: "MB/s", Status: Skip, Note: r.QemuNBDSkipped})
		} else {
			out = append(out, Row{Name: "same bytes, raw file served by qemu-nbd (to null-co)", Value: r.QemuNBDReadMBps, Unit: "MB/s", Note: rel(r.NBDReadMBps, r.QemuNBDReadMBps)})
		}
		out = append(out,
			Row{Name: "snapshot copied out over NBD (qemu-img convert -O raw)", Value: r.NBDCopyMBps, Unit: "MB/s"},
			Row{Name: "same bytes, raw file (qemu-img convert -O raw)", Value: r.RawCopyMBps, Unit: "MB/s", Note: rel(r.NBDCopyMBps, r.RawCopyMBps)})
		if r.QemuNBDSkipped == "" {
			out = append(out, Row{Name: "same bytes, raw file served by qemu-nbd (-O raw)", Value: r.QemuNBDCopyMBps, Unit: "MB/s", Note: rel(r.NBDCopyMBps, r.QemuNBDCopyMBps)})
		}
	}
	out = append(out, Row{Name: fmt.Sprintf("%d copies of one %d MiB image, stored", o.Copies, o.ImageBytes>>20), Value: r.DedupRatio, Unit: "× one copy",
		Goal: "≤ 1.1 ×", Status: status(r.DedupRatio > 0 && r.DedupRatio <= 1.1)})
	return out
}

func printTable(out io.Writer, r *Result) error {
	tw := tabwriter.NewWriter(out, 0, 0, 2, ' ', 0)
	fmt.Fprintf(tw, "measure\tresult\tgoal\tstatus\tnote\n")
	for _, row := range r.Rows {
		v := fmt.Sprintf("%.1f %s", row.Value, row.Unit)
		if row.Status == Skip {
			v = "-"
		} else if row.Unit != "MB/s" {
			v = fmt.Sprintf("%.3f %s", row.Value, row.Unit)
		}
		goal, st := row.Goal, row.Status
		if goal == "" {
			goal, st = "-", "-"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", row.Name, v, goal, st, row.Note)
	}
	return tw.Flush()
}
