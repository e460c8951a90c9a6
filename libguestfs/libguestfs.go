package libguestfs

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// DefaultEnv is the environment Converter adds when Env is nil: the direct
// backend with TCG, which works where KVM cannot run the appliance.
var DefaultEnv = []string{"LIBGUESTFS_BACKEND=direct", "LIBGUESTFS_BACKEND_SETTINGS=force_tcg"}

// ErrUnavailable is wrapped by errors that mean libguestfs is not
// installed or cannot start its appliance here.
var ErrUnavailable = errors.New("libguestfs unavailable")

// ErrNoOS is wrapped by Convert's error when no disk holds a Linux root
// file system.
var ErrNoOS = errors.New("no Linux root file system found")

// Converter runs conversions. Its zero value is ready for use.
type Converter struct {
	// Guestfish is the program; default "guestfish" on PATH.
	Guestfish string
	// Env is added to the environment of guestfish; nil means DefaultEnv.
	Env []string
	// Logger receives each change as it is made; nil discards.
	Logger *slog.Logger
}

// Options are per-conversion choices.
type Options struct {
	// CloudInit, when set, is written as a NoCloud seed if the guest has
	// cloud-init.
	CloudInit *CloudInit
}

// CloudInit is a cloud-init NoCloud seed.
type CloudInit struct {
	UserData string // #cloud-config …
	MetaData string // instance-id: …; a default is written when empty
}

// Change is what one conversion step did.
type Change struct {
	Step    string // "fstab", "persistent-net", "network", "initramfs", "cloud-init"
	Applied bool   // false: nothing needed or possible, Detail says why
	Detail  string
}

// String is the change as a job log line.
func (c Change) String() string {
	if c.Applied {
		return c.Step + ": " + c.Detail
	}
	return c.Step + ": no change: " + c.Detail
}

// Available reports whether guestfish is installed, wrapping
// ErrUnavailable when not.
func (c *Converter) Available() error {
	if _, err := exec.LookPath(c.bin()); err != nil {
		return fmt.Errorf("libguestfs: %w: %v (install libguestfs-tools: scripts/setup.sh)", ErrUnavailable, err)
	}
	return nil
}

func (c *Converter) bin() string {
	if c.Guestfish != "" {
		return c.Guestfish
	}
	return "guestfish"
}

func (c *Converter) logger() *slog.Logger {
	if c.Logger == nil {
		return slog.New(slog.DiscardHandler)
	}
	return c.Logger
}

// Convert converts the guest on disks (paths of the instance's own images,
// in boot order) whose formats are given ("qcow2", "raw", "vmdk"). It
// returns the changes made, including the steps that changed nothing and
// why; on error, the changes made before it. Errors wrap ErrUnavailable or
// ErrNoOS where they apply.
func (c *Converter) Convert(ctx context.Context, disks, formats []string, o Options) ([]Change, error) {
	if err := c.Available(); err != nil {
		return nil, err
	}
	if len(disks) == 0 || len(disks) != len(formats) {
		return nil, fmt.Errorf("libguestfs: %d disks with %d formats", len(disks), len(formats))
	}
	args := []string{"--listen", "--rw"}
	for i, d := range disks {
		if !filepath.IsAbs(d) {
			return nil, fmt.Errorf("libguestfs: disk %q: want an absolute path", d)
		}
		switch formats[i] {
		case "raw", "qcow2", "vmdk":
		default:
			return nil, fmt.Errorf("libguestfs: disk %s: unknown format %q", d, formats[i])
		}
		args = append(args, "--format="+formats[i], "-a", d)
	}
	s, err := c.start(ctx, args)
	if err != nil {
		return nil, err
	}
	defer s.close()
	if _, err := s.do(ctx, "run"); err != nil {
		return nil, fmt.Errorf("libguestfs: %w: start the appliance: %v", ErrUnavailable, err)
	}
	if err := s.mountRoot(ctx); err != nil {
		return nil, err
	}
	var changes []Change
	add := func(ch Change, err error) error {
		if err != nil {
			return fmt.Errorf("libguestfs: %s: %w", ch.Step, err)
		}
		changes = append(changes, ch)
		c.logger().Info("libguestfs: "+ch.String(), "disk", disks[0])
		return nil
	}
	steps := []func(context.Context) (Change, error){
		s.fstab,
		s.persistentNet,
		s.network,
		s.initramfs,
		func(ctx context.Context) (Change, error) { return s.cloudInit(ctx, o.CloudInit) },
	}
	for _, step := range steps {
		if err := add(step(ctx)); err != nil {
			return changes, err
		}
	}
	if _, err := s.do(ctx, "sync"); err != nil {
		return changes, fmt.Errorf("libguestfs: sync: %w", err)
	}
	if _, err := s.do(ctx, "umount-all"); err != nil {
		return changes, fmt.Errorf("libguestfs: unmount: %w", err)
	}
	if err := s.shutdown(ctx); err != nil {
		return changes, err
	}
	return changes, nil
}

// session is a guestfish server (guestfish --listen) driven with
// guestfish --remote, one argv per command.
type session struct {
	bin   string
	env   []string
	pid   int
	tmp   string // local directory for uploads
	done  bool
	disks []string // appliance devices, in -a order
}

var pidRE = regexp.MustCompile(`GUESTFISH_PID=(\d+)`)

func (c *Converter) start(ctx context.Context, args []string) (*session, error) {
	env := c.Env
	if env == nil {
		env = DefaultEnv
	}
	s := &session{bin: c.bin(), env: append(os.Environ(), env...)}
	var err error
	if s.tmp, err = os.MkdirTemp("", "ferry-guestfs-"); err != nil {
		return nil, fmt.Errorf("libguestfs: %w", err)
	}
	// The server daemonizes and keeps the stderr it inherits: a file, so
	// that waiting for the parent does not wait for the server too.
	errFile, err := os.Create(filepath.Join(s.tmp, "listen.err"))
	if err != nil {
		s.close()
		return nil, fmt.Errorf("libguestfs: %w", err)
	}
	defer errFile.Close()
	cmd := exec.CommandContext(ctx, s.bin, args...)
	cmd.Env = s.env
	cmd.Stderr = errFile
	out, err := cmd.Output()
	if err != nil {
		msg, _ := os.ReadFile(errFile.Name())
		s.close()
		return nil, fmt.Errorf("libguestfs: %w: guestfish --listen: %v: %s", ErrUnavailable, err, bytes.TrimSpace(msg))
	}
	m := pidRE.FindSubmatch(out)
	if m == nil {
		s.close()
		return nil, fmt.Errorf("libguestfs: guestfish --listen printed no GUESTFISH_PID: %q", out)
	}
	s.pid, _ = strconv.Atoi(string(m[1]))
	return s, nil
}

// do runs one guestfish command. Its arguments are passed as argv, never
// parsed by a shell; an argument that is exactly ":" (guestfish's command
// separator) is refused.
func (s *session) do(ctx context.Context, args ...string) (string, error) {
	for _, a := range args {
		if a == ":" || strings.ContainsAny(a, "\x00\n") {
			return "", fmt.Errorf("refusing guestfish argument %q", a)
		}
	}
	cmd := exec.CommandContext(ctx, s.bin, append([]string{"--remote=" + strconv.Itoa(s.pid), "--"}, args...)...)
	cmd.Env = s.env
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		msg := bytes.TrimSpace(stderr.Bytes())
		if bytes.Contains(msg, []byte("server is not running")) {
			// The server exits on a failed command: its own stderr says why.
			if b, rerr := os.ReadFile(filepath.Join(s.tmp, "listen.err")); rerr == nil {
				msg = append(msg, fmt.Sprintf(" (server log: %s)", bytes.TrimSpace(b[max(0, len(b)-2048):]))...)
			}
		}
		return "", fmt.Errorf("guestfish %s: %v: %s", args[0], err, msg)
	}
	return string(out), nil
}

// lines runs a command and splits its output into non-empty lines.
func (s *session) lines(ctx context.Context, args ...string) ([]string, error) {
	out, err := s.do(ctx, args...)
	if err != nil {
		return nil, err
	}
	var ls []string
	for _, l := range strings.Split(out, "\n") {
		if l = strings.TrimSpace(l); l != "" {
			ls = append(ls, l)
		}
	}
	return ls, nil
}

// validGuestPath accepts clean absolute guest paths of printable
// characters.
func validGuestPath(p string) bool {
	if !path.IsAbs(p) || path.Clean(p) != p || len(p) > 4096 {
		return false
	}
	for _, r := range p {
		if r < 0x20 || r == 0x7f {
			return false
		}
	}
	return true
}

func guestPath(p string) (string, error) {
	if !validGuestPath(p) {
		return "", fmt.Errorf("invalid guest path %q", p)
	}
	return p, nil
}

// test runs a guestfish predicate (exists, is-file, is-dir) on a guest
// path.
func (s *session) test(ctx context.Context, pred, p string) (bool, error) {
	p, err := guestPath(p)
	if err != nil {
		return false, err
	}
	out, err := s.do(ctx, pred, p)
	if err != nil {
		return false, err
	}
	return strings.TrimSpace(out) == "true", nil
}

// anyExists returns the first of the guest paths that exists, or "".
func (s *session) anyExists(ctx context.Context, paths ...string) (string, error) {
	for _, p := range paths {
		ok, err := s.test(ctx, "exists", p)
		if err != nil {
			return "", err
		}
		if ok {
			return p, nil
		}
	}
	return "", nil
}

// read returns a guest file's content.
func (s *session) read(ctx context.Context, p string) (string, error) {
	p, err := guestPath(p)
	if err != nil {
		return "", err
	}
	return s.do(ctx, "cat", p)
}

// write replaces a guest file with content, uploaded from a local file.
func (s *session) write(ctx context.Context, p, content string) error {
	p, err := guestPath(p)
	if err != nil {
		return err
	}
	local := filepath.Join(s.tmp, "upload")
	if err := os.WriteFile(local, []byte(content), 0o600); err != nil {
		return err
	}
	defer os.Remove(local)
	_, err = s.do(ctx, "upload", local, p)
	return err
}

// mountRoot mounts the guest's file systems: as inspection finds them, or,
// for a guest inspection does not recognise (a minimal busybox system),
// the first file system holding /etc and /sbin, alone.
func (s *session) mountRoot(ctx context.Context) error {
	devs, err := s.lines(ctx, "list-devices")
	if err != nil {
		return fmt.Errorf("libguestfs: %w", err)
	}
	s.disks = devs
	roots, err := s.lines(ctx, "inspect-os")
	if err != nil {
		return fmt.Errorf("libguestfs: inspect: %w", err)
	}
	if len(roots) > 0 {
		mps, err := s.lines(ctx, "inspect-get-mountpoints", roots[0])
		if err != nil {
			return fmt.Errorf("libguestfs: inspect: %w", err)
		}
		type mp struct{ dir, dev string }
		var all []mp
		for _, l := range mps {
			dir, dev, ok := strings.Cut(l, ": ")
			if ok && validGuestPath(dir) {
				all = append(all, mp{dir, dev})
			}
		}
		slices.SortFunc(all, func(a, b mp) int { return len(a.dir) - len(b.dir) })
		for _, m := range all {
			if m.dir != "/" {
				// guestfish exits on a failed command: check first.
				if ok, err := s.test(ctx, "is-dir", m.dir); err != nil {
					return fmt.Errorf("libguestfs: %w", err)
				} else if !ok {
					continue // the guest's fstab names a mount point it lacks
				}
			}
			if _, err := s.do(ctx, "mount", m.dev, m.dir); err != nil {
				return fmt.Errorf("libguestfs: mount %s on %s: %w", m.dev, m.dir, err)
			}
		}
		return nil
	}
	fss, err := s.lines(ctx, "list-filesystems")
	if err != nil {
		return fmt.Errorf("libguestfs: %w", err)
	}
	for _, l := range fss {
		dev, typ, _ := strings.Cut(l, ": ")
		if typ == "swap" || typ == "unknown" || typ == "vfat" || typ == "" {
			continue
		}
		if _, err := s.do(ctx, "mount-ro", dev, "/"); err != nil {
			continue
		}
		etc, err1 := s.test(ctx, "is-dir", "/etc")
		sbin, err2 := s.test(ctx, "is-dir", "/sbin")
		if _, err := s.do(ctx, "umount", "/"); err != nil {
			return fmt.Errorf("libguestfs: %w", err)
		}
		if err1 == nil && err2 == nil && etc && sbin {
			if _, err := s.do(ctx, "mount", dev, "/"); err != nil {
				return fmt.Errorf("libguestfs: mount root %s: %w", dev, err)
			}
			return nil
		}
	}
	return fmt.Errorf("libguestfs: %w (file systems: %s)", ErrNoOS, strings.Join(fss, ", "))
}

// shutdown ends the guestfish server.
func (s *session) shutdown(ctx context.Context) error {
	if s.done {
		return nil
	}
	if _, err := s.do(ctx, "exit"); err != nil {
		return fmt.Errorf("libguestfs: exit: %w", err)
	}
	s.done = true
	return nil
}

// close ends the server if it still runs (after an error) and removes the
// upload directory.
func (s *session) close() {
	if !s.done && s.pid > 0 {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		if s.shutdown(ctx) != nil {
			syscall.Kill(s.pid, syscall.SIGKILL)
		}
		cancel()
		// The server's appliance (qemu) exits with it; give it a moment.
		for i := 0; i < 100 && syscall.Kill(s.pid, 0) == nil; i++ {
			time.Sleep(50 * time.Millisecond)
		}
	}
	if s.tmp != "" {
		os.RemoveAll(s.tmp)
	}
}
