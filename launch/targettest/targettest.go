// Package targettest is the conformance suite for [launch.Target]
// implementations: every real target runs it from its own tests.
package targettest

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ferrymigrate/ferry/launch"
	"github.com/ferrymigrate/ferry/nbd"
	"github.com/ferrymigrate/ferry/postlaunch"
)

// Image is a bootable raw disk image the suite serves over NBD and boots.
type Image struct {
	Path       string // raw disk image; the suite never writes to it
	BootMarker string // a line the guest prints on its serial console once up
	HTTPPort   int    // guest port serving HTTP
	HTTPBody   string // text the HTTP answer at "/" contains
}

// Options tune the suite.
type Options struct {
	// BootTimeout bounds the wait for the boot marker. Default 90s.
	BootTimeout time.Duration
	// MemoryMiB for the test instance. Default 256.
	MemoryMiB int
	// Files says the target's instances are image files to import
	// elsewhere (the export target), not machines that run here. The
	// suite then launches without port forwards and expects a forward to
	// be refused with launch.ErrNotSupported, skips (saying so) the
	// memory check, and instead of booting checks that Launch returns an
	// instance in state launch.Exported whose files exist, are its own and
	// are removed by Terminate; CheckFiles, when set, checks their content.
	Files bool
	// CheckFiles checks an instance of a Files target against the image
	// it was launched from.
	CheckFiles func(t *testing.T, inst *launch.Instance, img Image)
	// Interrupt, when set, rewrites instance id's recorded state as a
	// server killed inside Launch leaves it (the state written before
	// the VM started). The suite then checks that Terminate still stops
	// the VM, without the graceful shutdown's wait.
	Interrupt func(tg launch.Target, id string) error
}

// NewTarget returns the target under test, keeping all its state under dir.
// The suite calls it more than once with the same dir to check that a
// target created later (after a server restart) finds earlier instances.
type NewTarget func(t *testing.T, dir string) launch.Target

// Run runs the conformance suite: launch failures that must leave nothing
// behind (including a failing Spec.Prepare), then a real boot of img
// (marker on the console, HTTP through a port forward), a second instance
// of the same snapshot beside the first, status from a fresh target, and
// termination that leaves nothing behind. It logs the time of each phase.
// With Options.Files, the boot is replaced by checks of the files.
func Run(t *testing.T, newTarget NewTarget, img Image, opts Options) {
	if opts.BootTimeout == 0 {
		opts.BootTimeout = 90 * time.Second
	}
	if opts.MemoryMiB == 0 {
		opts.MemoryMiB = 256
	}
	url := ServeImage(t, img.Path)
	spec := func(name string) launch.Spec {
		s := launch.Spec{
			Name:      name,
			Disks:     []launch.DiskSource{{NBDURL: url}},
			CPUs:      1,
			MemoryMiB: opts.MemoryMiB,
			Forwards:  []launch.Forward{{GuestPort: img.HTTPPort}},
		}
		if opts.Files {
			s.Forwards = nil
		}
		return s
	}
	t.Run("Failures", func(t *testing.T) {
		dir := t.TempDir()
		tg := newTarget(t, dir)
		ctx := context.Background()
		taken, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer taken.Close()
		takenPort := taken.Addr().(*net.TCPAddr).Port
		errPrepare := errors.New("prepare refused by the test")
		// A target of files refuses forwards and needs no memory.
		portErr, memSkip := launch.ErrPortInUse, ""
		if opts.Files {
			portErr = launch.ErrNotSupported
			memSkip = "Options.Files: the target runs nothing, so it needs no memory for the instance"
		}
		cases := []struct {
			name string
			edit func(*launch.Spec)
			want error // nil: any error
			skip string
		}{
			{"bad name", func(s *launch.Spec) { s.Name = "../escape" }, launch.ErrInvalidSpec, ""},
			{"bad id", func(s *launch.Spec) { s.ID = "../escape" }, launch.ErrInvalidSpec, ""},
			{"no disks", func(s *launch.Spec) { s.Disks = nil }, launch.ErrInvalidSpec, ""},
			{"local file as disk", func(s *launch.Spec) { s.Disks[0].NBDURL = img.Path }, launch.ErrInvalidSpec, ""},
			{"zero CPUs", func(s *launch.Spec) { s.CPUs = 0 }, launch.ErrInvalidSpec, ""},
			{"port taken", func(s *launch.Spec) {
				s.Forwards = []launch.Forward{{GuestPort: img.HTTPPort, HostPort: takenPort}}
			}, portErr, ""},
			{"absurd memory", func(s *launch.Spec) { s.MemoryMiB = 1 << 30 }, launch.ErrInsufficientMemory, memSkip},
			{"unreachable export", func(s *launch.Spec) {
				s.Disks[0].NBDURL = "nbd+unix:///missing?socket=" + filepath.Join(dir, "no.sock")
			}, nil, ""},
			{"prepare fails", func(s *launch.Spec) {
				s.Prepare = func(ctx context.Context, disks, formats []string) error { return errPrepare }
			}, errPrepare, ""},
		}
		for _, c := range cases {
			t.Run(c.name, func(t *testing.T) {
				if c.skip != "" {
					t.Skip("not applicable: " + c.skip)
				}
				s := spec("fail")
				c.edit(&s)
				inst, err := tg.Launch(ctx, s)
				if err == nil {
					tg.Terminate(ctx, inst.ID)
					t.Fatalf("Launch succeeded, want an error")
				}
				if c.want != nil && !errors.Is(err, c.want) {
					t.Fatalf("Launch error %v, want one wrapping %v", err, c.want)
				}
				t.Logf("error (as wanted): %v", err)
				CheckNothingLeft(t, dir)
			})
		}
		if c, err := net.Dial("tcp", taken.Addr().String()); err != nil {
			t.Errorf("the taken port's listener no longer answers: %v", err)
		} else {
			c.Close()
		}
		if _, err := tg.Status(ctx, "never-launched"); !errors.Is(err, launch.ErrNotFound) {
			t.Errorf("Status(unknown) = %v, want ErrNotFound", err)
		}
		if _, err := tg.Status(ctx, "../../etc/passwd"); !errors.Is(err, launch.ErrNotFound) {
			t.Errorf("Status(path escape) = %v, want ErrNotFound", err)
		}
		if err := tg.Terminate(ctx, "never-launched"); err != nil {
			t.Errorf("Terminate(unknown) = %v, want nil", err)
		}
	})

	if opts.Files {
		t.Run("FilesTerminate", func(t *testing.T) { runFiles(t, newTarget, img, spec, opts) })
		return
	}
	if opts.Interrupt != nil {
		t.Run("InterruptedLaunch", func(t *testing.T) { runInterrupted(t, newTarget, spec, opts) })
	}
	t.Run("BootServeTerminate", func(t *testing.T) {
		if testing.Short() {
			t.Skip("boots a guest; skipped with -short")
		}
		dir := t.TempDir()
		tg := newTarget(t, dir)
		ctx := context.Background()
		before := fileHash(t, img.Path)

		start := time.Now()
		bootSpec := spec("conformance")
		// The caller's ID, as the server's jobs choose one before Launch.
		bootSpec.ID = "conformance-chosen"
		prep := &prepared{}
		bootSpec.Prepare = prep.record
		inst, err := tg.Launch(ctx, bootSpec)
		if err != nil {
			t.Fatalf("Launch: %v", err)
		}
		launched := time.Since(start)
		prep.check(t, inst)
		terminated := false
		t.Cleanup(func() {
			if !terminated {
				tg.Terminate(context.Background(), inst.ID)
			}
		})
		t.Logf("launch returned after %v: id %s pid %d accel %q addresses %v", launched.Round(time.Millisecond), inst.ID, inst.PID, inst.Accel, inst.Addresses)
		if inst.ID != bootSpec.ID {
			t.Errorf("instance ID %q, want the spec's %q", inst.ID, bootSpec.ID)
		}
		if inst.Target != tg.Name() || inst.State != launch.Running || inst.ConsoleLog == "" || len(inst.Addresses) != 1 || len(inst.Forwards) != 1 || inst.Forwards[0].HostPort == 0 {
			t.Fatalf("Launch returned %+v", inst)
		}

		bootCtx, cancel := context.WithTimeout(ctx, opts.BootTimeout)
		defer cancel()
		first := postlaunch.WaitConsole(bootCtx, inst.ConsoleLog, regexp.MustCompile(`\S`))
		if first.Status != postlaunch.Success {
			t.Fatalf("no console output: %s", first.Output)
		}
		firstLine := time.Since(start)
		marker := postlaunch.WaitConsole(bootCtx, inst.ConsoleLog, regexp.MustCompile(regexp.QuoteMeta(img.BootMarker)))
		if marker.Status != postlaunch.Success {
			t.Fatalf("boot marker: %s", marker.Output)
		}
		booted := time.Since(start)
		tcp := postlaunch.TCPOpen(bootCtx, inst.Addresses[0])
		if tcp.Status != postlaunch.Success {
			t.Fatalf("TCP: %s", tcp.Output)
		}
		httpRes := postlaunch.HTTPCheck(bootCtx, "http://"+inst.Addresses[0]+"/", 200, img.HTTPBody)
		if httpRes.Status != postlaunch.Success {
			t.Fatalf("HTTP: %s", httpRes.Output)
		}
		served := time.Since(start)
		t.Logf("timings from the Launch call: launch returned %v, first console line %v, boot marker %v, HTTP answered %v",
			launched.Round(time.Millisecond), firstLine.Round(time.Millisecond), booted.Round(time.Millisecond), served.Round(time.Millisecond))

		// A second instance from the same snapshot, while the first runs:
		// its own overlays and ports, and it boots too.
		second, err := tg.Launch(ctx, spec("conformance"))
		if err != nil {
			t.Fatalf("second Launch: %v", err)
		}
		defer tg.Terminate(context.Background(), second.ID)
		if second.ID == inst.ID || second.Addresses[0] == inst.Addresses[0] || second.ConsoleLog == inst.ConsoleLog ||
			(len(second.Overlays) > 0 && len(inst.Overlays) > 0 && second.Overlays[0] == inst.Overlays[0]) {
			t.Fatalf("second instance shares files or ports with the first: %+v vs %+v", second, inst)
		}
		if r := postlaunch.HTTPCheck(bootCtx, "http://"+second.Addresses[0]+"/", 200, img.HTTPBody); r.Status != postlaunch.Success {
			t.Fatalf("second instance HTTP: %s", r.Output)
		}
		if err := tg.Terminate(ctx, second.ID); err != nil {
			t.Fatalf("Terminate second: %v", err)
		}
		if r := postlaunch.HTTPCheck(bootCtx, "http://"+inst.Addresses[0]+"/", 200, img.HTTPBody); r.Status != postlaunch.Success {
			t.Fatalf("first instance stopped answering when the second was terminated: %s", r.Output)
		}

		// A target created afresh (a server restart) finds the instance.
		again := newTarget(t, dir)
		st, err := again.Status(ctx, inst.ID)
		if err != nil {
			t.Fatalf("Status from a new target: %v", err)
		}
		if st.State != launch.Running || st.PID != inst.PID || st.ConsoleLog != inst.ConsoleLog || fmt.Sprint(st.Addresses) != fmt.Sprint(inst.Addresses) {
			t.Errorf("Status = %+v, want running %+v", st, inst)
		}

		tstart := time.Now()
		if err := again.Terminate(ctx, inst.ID); err != nil {
			t.Fatalf("Terminate: %v", err)
		}
		terminated = true
		t.Logf("terminate took %v", time.Since(tstart).Round(time.Millisecond))
		if _, err := tg.Status(ctx, inst.ID); !errors.Is(err, launch.ErrNotFound) {
			t.Errorf("Status after Terminate = %v, want ErrNotFound", err)
		}
		if err := tg.Terminate(ctx, inst.ID); err != nil {
			t.Errorf("second Terminate = %v, want nil", err)
		}
		if inst.PID > 0 && processRuns(inst.PID) {
			t.Errorf("process %d still runs after Terminate", inst.PID)
		}
		for _, ov := range inst.Overlays {
			if _, err := os.Stat(ov); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("overlay %s still exists (stat: %v)", ov, err)
			}
		}
		if l, err := net.Listen("tcp", inst.Addresses[0]); err != nil {
			t.Errorf("host port %s not free after Terminate: %v", inst.Addresses[0], err)
		} else {
			l.Close()
		}
		CheckNothingLeft(t, dir)
		if after := fileHash(t, img.Path); after != before {
			t.Errorf("the source image changed during the launch")
		}
	})
}

// ServeImage serves the raw image at path read-only over NBD on a unix
// socket until the test ends, and returns the export's URL.
func ServeImage(t testing.TB, path string) string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	fi, err := f.Stat()
	if err != nil {
		t.Fatal(err)
	}
	dev := fileDevice{f, fi.Size()}
	// A short directory: unix socket paths are limited to 108 bytes.
	sockDir, err := os.MkdirTemp("", "ferry-nbd-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(sockDir) })
	sock := filepath.Join(sockDir, "nbd.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := &nbd.Server{Lookup: func(name string) (nbd.Device, error) {
		if name != "snapshot" {
			return nil, fmt.Errorf("%q: %w", name, nbd.ErrUnknownExport)
		}
		return dev, nil
	}}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, l) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("nbd server: %v", err)
		}
	})
	return "nbd+unix:///snapshot?socket=" + sock
}

type fileDevice struct {
	*os.File
	size int64
}

func (d fileDevice) Size() int64 { return d.size }

// CheckNothingLeft fails t if dir holds anything but empty directories, or
// if a process's command line mentions dir.
func CheckNothingLeft(t testing.TB, dir string) {
	t.Helper()
	filepath.Walk(dir, func(p string, fi os.FileInfo, err error) error {
		if err == nil && !fi.IsDir() {
			t.Errorf("left behind: %s", p)
		}
		return nil
	})
	procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, p := range procs {
		b, err := os.ReadFile(p)
		if err != nil {
			continue
		}
		if strings.Contains(string(b), dir) {
			pid, _ := strconv.Atoi(filepath.Base(filepath.Dir(p)))
			t.Errorf("process %d left running: %s", pid, strings.ReplaceAll(string(b), "\x00", " "))
		}
	}
}

// runInterrupted launches an instance with a chosen ID, makes its state
// what a server killed inside Launch leaves, and terminates it: the VM
// must stop, well within the target's shutdown timeout.
func runInterrupted(t *testing.T, newTarget NewTarget, spec func(string) launch.Spec, opts Options) {
	dir := t.TempDir()
	tg := newTarget(t, dir)
	ctx := context.Background()
	s := spec("crash")
	s.ID = "crash-chosen"
	s.Forwards = nil
	inst, err := tg.Launch(ctx, s)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tg.Terminate(context.Background(), inst.ID) })
	if inst.ID != s.ID || inst.PID <= 0 {
		t.Fatalf("launched %+v, want ID %s and a process", inst, s.ID)
	}
	if err := opts.Interrupt(tg, inst.ID); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if err := tg.Terminate(ctx, inst.ID); err != nil {
		t.Fatal(err)
	}
	// A launch that never finished has no guest to shut down
	// gracefully: the shutdown timeout is not waited for.
	if took := time.Since(start); took > 10*time.Second {
		t.Errorf("Terminate took %v; a launch that never finished needs no graceful shutdown", took)
	}
	if processRuns(inst.PID) {
		t.Fatalf("the instance's VM (pid %d) still runs after Terminate", inst.PID)
	}
	CheckNothingLeft(t, dir)
}

// processRuns reports whether pid exists and is not a zombie (a daemon's
// exit is reaped by init, perhaps a moment later).
func processRuns(pid int) bool {
	if err := syscall.Kill(pid, 0); errors.Is(err, syscall.ESRCH) {
		return false
	}
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	i := strings.LastIndexByte(string(stat), ')')
	return i < 0 || i+2 >= len(stat) || stat[i+2] != 'Z'
}

func fileHash(t testing.TB, path string) string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf("%x", h.Sum(nil))
}

// prepared records the calls of a Spec.Prepare.
type prepared struct {
	calls   int
	disks   []string
	formats []string
	missing []string // disks that did not exist when Prepare ran
}

func (p *prepared) record(ctx context.Context, disks, formats []string) error {
	p.calls++
	p.disks, p.formats = disks, formats
	for _, d := range disks {
		if fi, err := os.Stat(d); err != nil || !fi.Mode().IsRegular() {
			p.missing = append(p.missing, d)
		}
	}
	return nil
}

// check fails t unless Prepare ran once with the instance's own disks.
func (p *prepared) check(t *testing.T, inst *launch.Instance) {
	t.Helper()
	if p.calls != 1 {
		t.Errorf("Spec.Prepare called %d times, want once", p.calls)
	}
	if len(p.missing) > 0 {
		t.Errorf("Spec.Prepare got disks that are not regular files: %v", p.missing)
	}
	if fmt.Sprint(p.disks) != fmt.Sprint(inst.Overlays) || len(p.formats) != len(p.disks) {
		t.Errorf("Spec.Prepare got disks %v (formats %v), want the instance's own %v", p.disks, p.formats, inst.Overlays)
	}
}

// runFiles is the second half of the suite for targets whose instances are
// files (Options.Files).
func runFiles(t *testing.T, newTarget NewTarget, img Image, spec func(string) launch.Spec, opts Options) {
	dir := t.TempDir()
	tg := newTarget(t, dir)
	ctx := context.Background()
	before := fileHash(t, img.Path)

	start := time.Now()
	s := spec("conformance")
	prep := &prepared{}
	s.Prepare = prep.record
	inst, err := tg.Launch(ctx, s)
	if err != nil {
		t.Fatalf("Launch: %v", err)
	}
	t.Cleanup(func() { tg.Terminate(context.Background(), inst.ID) })
	t.Logf("launch returned after %v: id %s files %v", time.Since(start).Round(time.Millisecond), inst.ID, inst.Overlays)
	if inst.Target != tg.Name() || inst.State != launch.Exported || len(inst.Overlays) != len(s.Disks) || len(inst.Addresses) != 0 {
		t.Fatalf("Launch returned %+v, want state %s, one file per disk, no addresses", inst, launch.Exported)
	}
	prep.check(t, inst)
	for _, f := range inst.Overlays {
		if fi, err := os.Stat(f); err != nil || !fi.Mode().IsRegular() || fi.Size() == 0 {
			t.Fatalf("instance file %s: %v", f, err)
		}
	}
	if opts.CheckFiles != nil {
		opts.CheckFiles(t, inst, img)
	}

	second, err := tg.Launch(ctx, spec("conformance"))
	if err != nil {
		t.Fatalf("second Launch: %v", err)
	}
	defer tg.Terminate(context.Background(), second.ID)
	if second.ID == inst.ID || second.Overlays[0] == inst.Overlays[0] {
		t.Fatalf("second instance shares files with the first: %+v vs %+v", second, inst)
	}
	if err := tg.Terminate(ctx, second.ID); err != nil {
		t.Fatalf("Terminate second: %v", err)
	}
	if _, err := os.Stat(inst.Overlays[0]); err != nil {
		t.Fatalf("first instance's file gone after the second was terminated: %v", err)
	}

	again := newTarget(t, dir)
	st, err := again.Status(ctx, inst.ID)
	if err != nil {
		t.Fatalf("Status from a new target: %v", err)
	}
	if st.State != launch.Exported || fmt.Sprint(st.Overlays) != fmt.Sprint(inst.Overlays) {
		t.Errorf("Status = %+v, want %+v", st, inst)
	}
	if err := again.Terminate(ctx, inst.ID); err != nil {
		t.Fatalf("Terminate: %v", err)
	}
	if _, err := tg.Status(ctx, inst.ID); !errors.Is(err, launch.ErrNotFound) {
		t.Errorf("Status after Terminate = %v, want ErrNotFound", err)
	}
	if err := tg.Terminate(ctx, inst.ID); err != nil {
		t.Errorf("second Terminate = %v, want nil", err)
	}
	CheckNothingLeft(t, dir)
	if after := fileHash(t, img.Path); after != before {
		t.Errorf("the source image changed during the launch")
	}
}
