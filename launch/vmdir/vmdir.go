package vmdir

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/ferrymigrate/ferry/launch"
)

// MaxSocketPath is the size of sun_path in struct sockaddr_un on Linux:
// a unix socket's path must be shorter.
const MaxSocketPath = 108

// States is the directory of a target's state files, one JSON file per
// instance (DIR/ID.json). Target names the target in error messages.
type States struct {
	Dir    string
	Target string
}

// Path returns the state file of instance id.
func (s States) Path(id string) string { return filepath.Join(s.Dir, id+".json") }

// Read decodes the state file of instance id into v, which must encode
// the instance id as the JSON field "id"; a file naming another instance
// is an error. An unknown or invalid id gives an error wrapping
// launch.ErrNotFound.
func (s States) Read(id string, v any) error {
	if !launch.ValidName(id) {
		return fmt.Errorf("%s: instance %q: %w", s.Target, id, launch.ErrNotFound)
	}
	b, err := os.ReadFile(s.Path(id))
	if errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("%s: instance %s: %w", s.Target, id, launch.ErrNotFound)
	}
	if err != nil {
		return fmt.Errorf("%s: read state: %w", s.Target, err)
	}
	var named struct {
		ID string `json:"id"`
	}
	if err := json.Unmarshal(b, &named); err != nil {
		return fmt.Errorf("%s: read state of %s: %w", s.Target, id, err)
	}
	if named.ID != id {
		return fmt.Errorf("%s: state file of %s names instance %q", s.Target, id, named.ID)
	}
	if err := json.Unmarshal(b, v); err != nil {
		return fmt.Errorf("%s: read state of %s: %w", s.Target, id, err)
	}
	return nil
}

// Write stores v as the state file of instance id: written beside it and
// renamed, so a reader never sees half a file.
func (s States) Write(id string, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return fmt.Errorf("%s: encode state: %w", s.Target, err)
	}
	path := s.Path(id)
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, append(b, '\n'), 0o600); err != nil {
		return fmt.Errorf("%s: write state: %w", s.Target, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("%s: write state: %w", s.Target, err)
	}
	return nil
}

// Remove deletes the state file of instance id; a missing one is not an
// error.
func (s States) Remove(id string) error {
	if err := os.Remove(s.Path(id)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("%s: remove state of %s: %w", s.Target, id, err)
	}
	return nil
}

// IDs lists the instances that have a state file.
func (s States) IDs() ([]string, error) {
	files, err := filepath.Glob(filepath.Join(s.Dir, "*.json"))
	if err != nil {
		return nil, fmt.Errorf("%s: list: %w", s.Target, err)
	}
	ids := make([]string, 0, len(files))
	for _, f := range files {
		if id := strings.TrimSuffix(filepath.Base(f), ".json"); launch.ValidName(id) {
			ids = append(ids, id)
		}
	}
	return ids, nil
}

// InstanceID returns the ID a launch of spec gets: the caller's
// spec.ID, or a new one from its name.
func InstanceID(spec launch.Spec) string {
	if spec.ID != "" {
		return spec.ID
	}
	return NewID(spec.Name)
}

// NewID returns a new instance id: the spec's name and 8 random hex
// digits, at most 63 bytes, so it is a valid name too.
func NewID(name string) string {
	var rnd [4]byte
	rand.Read(rnd[:])
	if len(name) > 54 {
		name = name[:54]
	}
	return name + "-" + hex.EncodeToString(rnd[:])
}

// Create makes the directory of instance id: WORKDIR/id, or DIR/id when
// workDir is empty, and the state directory. longestSocket is the longest
// unix socket name the target puts in it ("qmp.sock"): a directory too
// long for it is refused with launch.ErrInvalidSpec before anything is
// made. It returns the absolute path of the new, empty directory.
func (s States) Create(workDir, id, longestSocket string) (string, error) {
	if s.Dir == "" {
		return "", fmt.Errorf("%s: Target.Dir is not set", s.Target)
	}
	if workDir == "" {
		workDir = s.Dir
	}
	dir, err := filepath.Abs(filepath.Join(workDir, id))
	if err != nil {
		return "", fmt.Errorf("%s: instance directory: %w", s.Target, err)
	}
	if len(dir)+1+len(longestSocket) >= MaxSocketPath {
		return "", fmt.Errorf("%s: %w: instance directory %s too long for a unix socket path (%d bytes at most): use a shorter Dir or WorkDir", s.Target, launch.ErrInvalidSpec, dir, MaxSocketPath-1)
	}
	if err := os.MkdirAll(s.Dir, 0o700); err != nil {
		return "", fmt.Errorf("%s: create state dir: %w", s.Target, err)
	}
	if err := os.MkdirAll(filepath.Dir(dir), 0o700); err != nil {
		return "", fmt.Errorf("%s: create work dir: %w", s.Target, err)
	}
	if err := os.Mkdir(dir, 0o700); err != nil {
		return "", fmt.Errorf("%s: create instance dir: %w", s.Target, err)
	}
	return dir, nil
}

// Overlays creates one qcow2 overlay per disk in dir (diskN.qcow2), each
// backed by the disk's NBD export, with qemu-img (img); the guest's writes
// go to the overlay and the snapshot is only read. It then calls
// spec.Prepare on them, when set. On error it returns the overlays made so
// far, for the caller's clean-up of dir.
func Overlays(ctx context.Context, img, dir string, spec launch.Spec) ([]string, error) {
	var ovs []string
	for i, d := range spec.Disks {
		ov := filepath.Join(dir, fmt.Sprintf("disk%d.qcow2", i))
		args := []string{"create", "-q", "-f", "qcow2", "-F", "raw", "-b", d.NBDURL, ov}
		if d.Size > 0 {
			args = append(args, strconv.FormatInt(d.Size, 10))
		}
		if out, err := exec.CommandContext(ctx, img, args...).CombinedOutput(); err != nil {
			return ovs, fmt.Errorf("create overlay for disk %d over %s: %w: %s", i, d.NBDURL, err, bytes.TrimSpace(out))
		}
		ovs = append(ovs, ov)
	}
	if spec.Prepare != nil {
		formats := make([]string, len(ovs))
		for i := range formats {
			formats[i] = "qcow2"
		}
		if err := spec.Prepare(ctx, append([]string(nil), ovs...), formats); err != nil {
			return ovs, fmt.Errorf("prepare disks: %w", err)
		}
	}
	return ovs, nil
}

// PickPorts fills in free host ports on addr for the forwards that ask for
// port 0 and checks that the fixed ones are free. The caller binds them
// right after (QEMU's hostfwd); a port taken in between makes that fail,
// which the target reports as launch.ErrPortInUse. Errors wrap
// launch.ErrPortInUse and name the port.
func PickPorts(addr string, fwds []launch.Forward) ([]launch.Forward, error) {
	out := make([]launch.Forward, len(fwds))
	var held []net.Listener
	defer func() {
		for _, l := range held {
			l.Close()
		}
	}()
	for i, f := range fwds {
		l, err := net.Listen("tcp", net.JoinHostPort(addr, strconv.Itoa(f.HostPort)))
		if err != nil {
			return nil, fmt.Errorf("%w: %s:%d (forward to guest port %d): %v", launch.ErrPortInUse, addr, f.HostPort, f.GuestPort, err)
		}
		held = append(held, l)
		out[i] = launch.Forward{GuestPort: f.GuestPort, HostPort: l.Addr().(*net.TCPAddr).Port}
	}
	return out, nil
}

// Addresses returns host:port for each forward, in order.
func Addresses(addr string, fwds []launch.Forward) []string {
	var out []string
	for _, f := range fwds {
		out = append(out, net.JoinHostPort(addr, strconv.Itoa(f.HostPort)))
	}
	return out
}

// CopyFile copies src to dst (mode 0600), for per-instance copies of
// firmware variable stores.
func CopyFile(src, dst string) error {
	b, err := os.ReadFile(src)
	if err != nil {
		return err
	}
	return os.WriteFile(dst, b, 0o600)
}
