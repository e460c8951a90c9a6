package export

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/ferrymigrate/ferry/launch"
	"github.com/ferrymigrate/ferry/launch/vmdir"
	"github.com/ferrymigrate/ferry/nbd"
)

var _ launch.Target = (*Target)(nil)

// DefaultFormat is the image format when Target.Format is empty.
const DefaultFormat = "qcow2"

// ManifestName is the manifest's file name inside an instance's directory.
const ManifestName = "manifest.json"

// Target writes instances as image files. Dir and Open must be set.
type Target struct {
	// Dir holds one state file per instance (ID.json) and, unless a
	// Spec's WorkDir says otherwise, each instance's directory (ID/).
	Dir string
	// Format is "raw", "qcow2" or "vmdk" (nbd.ExportFormats); default
	// DefaultFormat.
	Format string
	// Open returns the device a disk's NBD URL serves (the snapshot). It
	// is called once per disk per launch; the target does not close the
	// device. An error fails the launch.
	Open func(ctx context.Context, nbdURL string) (nbd.Device, error)
	// Logger receives one line per export and removal; nil discards.
	Logger *slog.Logger
	// Now is the clock for Manifest.CreatedAt; nil means time.Now.
	Now func() time.Time
}

// New returns a Target keeping its files in dir and reading disks with open.
func New(dir string, open func(ctx context.Context, nbdURL string) (nbd.Device, error)) *Target {
	return &Target{Dir: dir, Open: open}
}

// Name implements [launch.Target].
func (t *Target) Name() string { return "export" }

// Manifest is manifest.json: what the images are and where they came from.
type Manifest struct {
	ID        string        `json:"id"`
	Name      string        `json:"name"`
	CreatedAt time.Time     `json:"created_at"`
	Source    launch.Source `json:"source"`
	// BootMode is "BIOS" or "UEFI": the firmware the importing cloud
	// must give the first disk.
	BootMode launch.BootMode `json:"boot_mode"`
	// CPUs and MemoryMiB are the size the instance was launched with.
	CPUs      int            `json:"cpus"`
	MemoryMiB int            `json:"memory_mib"`
	Disks     []ManifestDisk `json:"disks"`
}

// ManifestDisk is one exported disk.
type ManifestDisk struct {
	// File is the image's file name, relative to the manifest.
	File   string `json:"file"`
	Format string `json:"format"`
	// VirtualSize is the disk's size as the guest sees it; FileSize the
	// image file's size (smaller for sparse qcow2 and vmdk).
	VirtualSize int64 `json:"virtual_size"`
	FileSize    int64 `json:"file_size"`
	// SHA256 is the hex digest of the image file.
	SHA256     string `json:"sha256"`
	SourceName string `json:"source_name,omitempty"`
	Snapshot   string `json:"snapshot,omitempty"`
	Boot       bool   `json:"boot"`
}

// state is the JSON state file of an instance: where its directory is.
type state struct {
	ID  string `json:"id"`
	Dir string `json:"dir"`
}

func (t *Target) logger() *slog.Logger {
	if t.Logger == nil {
		return slog.New(slog.DiscardHandler)
	}
	return t.Logger
}

func (t *Target) statePath(id string) string { return filepath.Join(t.Dir, id+".json") }

// Launch implements [launch.Target]: it writes every disk to an image
// file, runs Spec.Prepare on the images, checksums them and writes the
// manifest. Errors wrap launch.ErrInvalidSpec, launch.ErrNotSupported
// (port forwards, an unknown format) or launch.ErrUnavailable (qemu-img
// missing, no Open) where they apply.
func (t *Target) Launch(ctx context.Context, spec launch.Spec) (_ *launch.Instance, err error) {
	if t.Dir == "" {
		return nil, errors.New("export: Target.Dir is not set")
	}
	if err := spec.Validate(); err != nil {
		return nil, fmt.Errorf("export: %w", err)
	}
	if len(spec.Forwards) > 0 {
		return nil, fmt.Errorf("export: %w: port forwards (exported images do not run here)", launch.ErrNotSupported)
	}
	format := t.Format
	if format == "" {
		format = DefaultFormat
	}
	if !slices.Contains(nbd.ExportFormats(), format) {
		return nil, fmt.Errorf("export: %w: format %q (use one of %s)", launch.ErrNotSupported, format, strings.Join(nbd.ExportFormats(), ", "))
	}
	if t.Open == nil {
		return nil, fmt.Errorf("export: %w: Target.Open is not set", launch.ErrUnavailable)
	}
	if _, err := exec.LookPath("qemu-img"); err != nil {
		return nil, fmt.Errorf("export: %w: %v (install qemu-utils: scripts/setup.sh)", launch.ErrUnavailable, err)
	}

	id := vmdir.InstanceID(spec)
	if err := os.MkdirAll(t.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("export: create state dir: %w", err)
	}
	base := spec.WorkDir
	if base == "" {
		base = t.Dir
	}
	dir, err := filepath.Abs(filepath.Join(base, id))
	if err != nil {
		return nil, fmt.Errorf("export: %w", err)
	}
	if err := os.MkdirAll(filepath.Dir(dir), 0o700); err != nil {
		return nil, fmt.Errorf("export: create work dir: %w", err)
	}
	if err := os.Mkdir(dir, 0o700); err != nil {
		return nil, fmt.Errorf("export: create instance dir: %w", err)
	}
	defer func() {
		if err != nil {
			os.RemoveAll(dir)
			os.Remove(t.statePath(id))
		}
	}()

	now := time.Now
	if t.Now != nil {
		now = t.Now
	}
	m := &Manifest{
		ID: id, Name: spec.Name, Source: spec.Source, BootMode: spec.BootMode,
		CPUs: spec.CPUs, MemoryMiB: spec.MemoryMiB,
	}
	if m.BootMode == "" {
		m.BootMode = launch.BIOS
	}
	start := time.Now()
	var files, formats []string
	for i, d := range spec.Disks {
		dev, err := t.Open(ctx, d.NBDURL)
		if err != nil {
			return nil, fmt.Errorf("export: disk %d (%s): %w", i, d.NBDURL, err)
		}
		if d.Size > 0 && d.Size < dev.Size() {
			return nil, fmt.Errorf("export: %w: disk %d: size %d is smaller than the snapshot's %d bytes", launch.ErrInvalidSpec, i, d.Size, dev.Size())
		}
		name := fmt.Sprintf("disk%d.%s", i, ext(format))
		path := filepath.Join(dir, name)
		if err := nbd.Export(ctx, dev, format, path); err != nil {
			return nil, fmt.Errorf("export: disk %d: %w", i, err)
		}
		size := dev.Size()
		if d.Size > size {
			if err := resize(ctx, path, format, d.Size); err != nil {
				return nil, fmt.Errorf("export: disk %d: %w", i, err)
			}
			size = d.Size
		}
		files = append(files, path)
		formats = append(formats, format)
		m.Disks = append(m.Disks, ManifestDisk{File: name, Format: format, VirtualSize: size, SourceName: d.Name, Snapshot: d.Snapshot, Boot: i == 0})
	}
	if spec.Prepare != nil {
		if err := spec.Prepare(ctx, slices.Clone(files), slices.Clone(formats)); err != nil {
			return nil, fmt.Errorf("export: prepare disks: %w", err)
		}
	}
	for i, f := range files {
		sum, n, err := hashFile(f)
		if err != nil {
			return nil, fmt.Errorf("export: disk %d: %w", i, err)
		}
		m.Disks[i].SHA256, m.Disks[i].FileSize = sum, n
	}
	m.CreatedAt = now().UTC()
	if err := writeJSON(filepath.Join(dir, ManifestName), m); err != nil {
		return nil, err
	}
	if err := writeJSON(t.statePath(id), &state{ID: id, Dir: dir}); err != nil {
		return nil, err
	}
	t.logger().Info("export: written", "id", id, "dir", dir, "format", format, "disks", len(files), "took", time.Since(start))
	return instance(m, dir), nil
}

// ext is the file name extension of a format.
func ext(format string) string {
	if format == "raw" {
		return "img"
	}
	return format
}

// resize grows an image to size bytes with qemu-img resize.
func resize(ctx context.Context, path, format string, size int64) error {
	out, err := exec.CommandContext(ctx, "qemu-img", "resize", "-q", "-f", format, path, fmt.Sprint(size)).CombinedOutput()
	if err != nil {
		return fmt.Errorf("qemu-img resize %s: %w: %s", path, err, strings.TrimSpace(string(out)))
	}
	return nil
}

func hashFile(path string) (string, int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", 0, fmt.Errorf("checksum: %w", err)
	}
	defer f.Close()
	h := sha256.New()
	n, err := io.Copy(h, f)
	if err != nil {
		return "", 0, fmt.Errorf("checksum %s: %w", path, err)
	}
	return hex.EncodeToString(h.Sum(nil)), n, nil
}

func writeJSON(path string, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return fmt.Errorf("export: encode %s: %w", filepath.Base(path), err)
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, append(b, '\n'), 0o600); err != nil {
		return fmt.Errorf("export: write %s: %w", filepath.Base(path), err)
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("export: write %s: %w", filepath.Base(path), err)
	}
	return nil
}

func instance(m *Manifest, dir string) *launch.Instance {
	inst := &launch.Instance{ID: m.ID, Target: "export", Name: m.Name, State: launch.Exported, StartedAt: m.CreatedAt}
	for _, d := range m.Disks {
		inst.Overlays = append(inst.Overlays, filepath.Join(dir, d.File))
	}
	return inst
}

// readState returns an instance's directory.
func (t *Target) readState(id string) (*state, error) {
	if !launch.ValidName(id) {
		return nil, fmt.Errorf("export: instance %q: %w", id, launch.ErrNotFound)
	}
	b, err := os.ReadFile(t.statePath(id))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("export: instance %s: %w", id, launch.ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("export: read state: %w", err)
	}
	var st state
	if err := json.Unmarshal(b, &st); err != nil {
		return nil, fmt.Errorf("export: read state of %s: %w", id, err)
	}
	if st.ID != id || !filepath.IsAbs(st.Dir) {
		return nil, fmt.Errorf("export: state file of %s is not this instance's", id)
	}
	return &st, nil
}

// ReadManifest reads the manifest of an instance.
func (t *Target) ReadManifest(id string) (*Manifest, error) {
	st, err := t.readState(id)
	if err != nil {
		return nil, err
	}
	b, err := os.ReadFile(filepath.Join(st.Dir, ManifestName))
	if err != nil {
		return nil, fmt.Errorf("export: instance %s: %w", id, err)
	}
	var m Manifest
	if err := json.Unmarshal(b, &m); err != nil {
		return nil, fmt.Errorf("export: instance %s: decode manifest: %w", id, err)
	}
	return &m, nil
}

// Status implements [launch.Target].
func (t *Target) Status(ctx context.Context, id string) (*launch.Instance, error) {
	st, err := t.readState(id)
	if err != nil {
		return nil, err
	}
	m, err := t.ReadManifest(id)
	if err != nil {
		return nil, err
	}
	return instance(m, st.Dir), nil
}

// Terminate implements [launch.Target]: it removes the instance's files.
func (t *Target) Terminate(ctx context.Context, id string) error {
	st, err := t.readState(id)
	if errors.Is(err, launch.ErrNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	if err := os.RemoveAll(st.Dir); err != nil {
		return fmt.Errorf("export: terminate %s: remove files: %w", id, err)
	}
	if err := os.Remove(t.statePath(id)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("export: terminate %s: remove state: %w", id, err)
	}
	t.logger().Info("export: removed", "id", id, "dir", st.Dir)
	return nil
}
