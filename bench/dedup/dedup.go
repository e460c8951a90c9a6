package dedup

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"

	"github.com/ferrymigrate/ferry/bench/workload"
	"github.com/ferrymigrate/ferry/replica"
	"github.com/ferrymigrate/ferry/replica/fs"
)

// Options size a run; zero values take the defaults.
type Options struct {
	// Dir holds the stores (removed afterwards). Required.
	Dir string
	// ImageBytes is the image size (default 256 MiB): half zeros, a
	// quarter text, a quarter random.
	ImageBytes int64
	// Clones is the number of servers cloned from the image (default 20).
	Clones int
	// DivergePercent is the share of each clone overwritten with its own
	// random data after cloning (default 5).
	DivergePercent float64
}

// Scenario is one way the clones diverge.
type Scenario struct {
	Name string `json:"name"`
	// StoredBytes is the store's chunk bytes after every clone was
	// written, diverged and folded.
	StoredBytes int64 `json:"stored_bytes"`
	// Ratio is StoredBytes over one image's stored bytes.
	Ratio float64 `json:"ratio"`
	// FloorRatio is the least any store can keep, over one image: the
	// image plus every clone's own (incompressible) changes.
	FloorRatio float64 `json:"floor_ratio"`
}

// Result is a run's figures.
type Result struct {
	ImageBytes int64 `json:"image_bytes"`
	Clones     int   `json:"clones"`
	// DivergePercent is the share of each clone changed.
	DivergePercent float64 `json:"diverge_percent"`
	LogicalBytes   int64   `json:"logical_bytes"`
	// OneImageBytes is what the store keeps for the image alone.
	OneImageBytes int64      `json:"one_image_stored_bytes"`
	ChangedBytes  int64      `json:"changed_bytes_per_clone"`
	Scenarios     []Scenario `json:"scenarios"`
}

// Run measures two scenarios, each in a new store: the changes as
// scattered 4 KiB blocks (the worst case for fixed chunks: a 1 MiB chunk
// holds 256 blocks, so 5 % scattered changes touch nearly every chunk),
// and as 1 MiB runs (files rewritten whole).
func Run(ctx context.Context, o Options) (*Result, error) {
	if o.Dir == "" {
		return nil, errors.New("dedup: a working directory is required")
	}
	if o.ImageBytes <= 0 {
		o.ImageBytes = 256 << 20
	}
	o.ImageBytes -= o.ImageBytes % (4 * workload.MiB)
	if o.ImageBytes == 0 {
		return nil, errors.New("dedup: the image must be at least 4 MiB")
	}
	if o.Clones <= 0 {
		o.Clones = 20
	}
	if o.DivergePercent <= 0 {
		o.DivergePercent = 5
	}
	if o.DivergePercent > 100 {
		return nil, fmt.Errorf("dedup: diverge percent %v is over 100", o.DivergePercent)
	}
	res := &Result{ImageBytes: o.ImageBytes, Clones: o.Clones, DivergePercent: o.DivergePercent, LogicalBytes: o.ImageBytes * int64(o.Clones)}
	for _, sc := range []struct {
		name  string
		block int64
	}{{"scattered 4 KiB blocks", 4096}, {"1 MiB runs", workload.MiB}} {
		s, err := scenario(ctx, o, sc.block, res)
		if err != nil {
			return nil, fmt.Errorf("dedup, %s: %w", sc.name, err)
		}
		s.Name = sc.name
		res.Scenarios = append(res.Scenarios, s)
	}
	return res, nil
}

func scenario(ctx context.Context, o Options, block int64, res *Result) (Scenario, error) {
	root, err := os.MkdirTemp(o.Dir, "dedup")
	if err != nil {
		return Scenario{}, fmt.Errorf("store directory: %w", err)
	}
	defer os.RemoveAll(root)
	be, err := fs.Open(filepath.Join(root, "objects"), fs.Packed(replica.ChunkPrefix))
	if err != nil {
		return Scenario{}, err
	}
	defer be.Close()
	keys, err := replica.CreateKeyFile(filepath.Join(root, "key"))
	if err != nil {
		return Scenario{}, err
	}
	s, err := replica.Open(ctx, replica.Options{Dir: filepath.Join(root, "staging"), Backend: be, Keys: keys, FoldInterval: -1})
	if err != nil {
		return Scenario{}, err
	}
	defer s.Close()
	changes := int64(float64(o.ImageBytes/block) * o.DivergePercent / 100)
	res.ChangedBytes = changes * block
	var one int64
	for k := range o.Clones {
		d, err := s.CreateDisk(ctx, fmt.Sprintf("server-%02d", k), o.ImageBytes, 4096)
		if err != nil {
			return Scenario{}, err
		}
		seq, err := writeImage(ctx, d, o.ImageBytes)
		if err != nil {
			return Scenario{}, err
		}
		if k == 0 {
			if err := d.Fold(ctx); err != nil {
				return Scenario{}, fmt.Errorf("fold: %w", err)
			}
			u, err := s.Usage(ctx)
			if err != nil {
				return Scenario{}, err
			}
			one = u.StoredBytes
		}
		if err := diverge(ctx, d, seq, o.ImageBytes, block, changes, uint64(k)); err != nil {
			return Scenario{}, err
		}
		if err := d.Fold(ctx); err != nil {
			return Scenario{}, fmt.Errorf("fold: %w", err)
		}
	}
	u, err := s.Usage(ctx)
	if err != nil {
		return Scenario{}, err
	}
	res.OneImageBytes = one
	if one == 0 {
		return Scenario{}, errors.New("the store kept nothing for one image")
	}
	floor := one + int64(o.Clones)*res.ChangedBytes
	return Scenario{StoredBytes: u.StoredBytes, Ratio: float64(u.StoredBytes) / float64(one), FloorRatio: float64(floor) / float64(one)}, nil
}

// writeImage writes the image as an agent's initial sync arrives: zero
// MiBs as zero records, the rest in 1 MiB writes. It returns the last
// sequence number used.
func writeImage(ctx context.Context, d *replica.Disk, size int64) (uint64, error) {
	rng := rand.New(rand.NewPCG(1, 2))
	buf := make([]byte, workload.MiB)
	var seq uint64
	var last replica.Commit
	for off := int64(0); off < size; off += workload.MiB {
		seq++
		var err error
		switch {
		case off < size/2:
			last, err = d.AppendZeroes(seq, off, workload.MiB)
		case off < size*3/4:
			workload.FillText(rng, buf)
			last, err = d.Append(seq, off, buf)
		default:
			workload.FillRandom(rng, buf)
			last, err = d.Append(seq, off, buf)
		}
		if err != nil {
			return 0, fmt.Errorf("write image at %d: %w", off, err)
		}
	}
	if err := last.Wait(ctx); err != nil {
		return 0, fmt.Errorf("write image: %w", err)
	}
	return seq, nil
}

// diverge overwrites n random block-sized pieces of d with random data
// seeded by clone, so no two clones share their changes.
func diverge(ctx context.Context, d *replica.Disk, seq uint64, size, block, n int64, clone uint64) error {
	rng := rand.New(rand.NewPCG(clone+100, 7))
	buf := make([]byte, block)
	var last replica.Commit
	for range n {
		workload.FillRandom(rng, buf)
		off := rng.Int64N(size/block) * block
		seq++
		var err error
		if last, err = d.Append(seq, off, buf); err != nil {
			return fmt.Errorf("diverge at %d: %w", off, err)
		}
	}
	if n > 0 {
		if err := last.Wait(ctx); err != nil {
			return fmt.Errorf("diverge: %w", err)
		}
	}
	return nil
}
