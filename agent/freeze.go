package agent

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// The fsfreeze ioctls of linux/fs.h, _IOWR('X', 119, int) and
// _IOWR('X', 120, int); golang.org/x/sys/unix does not define them.
const (
	ioctlFIFREEZE = 0xc0045877
	ioctlFITHAW   = 0xc0045878
)

// MaxFreeze is the longest the agent keeps file systems frozen for an
// app-consistent point: a timer thaws them even if sending stalls.
const MaxFreeze = 2 * time.Second

// devNums returns the "major:minor" numbers of a block device, its
// partitions and, recursively, the devices stacked on them (device mapper,
// MD): every device whose file systems live on this disk.
func devNums(devPath string) (map[string]bool, error) {
	name, err := blockName(devPath)
	if err != nil {
		return nil, err
	}
	out := map[string]bool{}
	seen := map[string]bool{}
	var walk func(name string)
	walk = func(name string) {
		if seen[name] {
			return
		}
		seen[name] = true
		sys := "/sys/class/block/" + name
		if b, err := os.ReadFile(sys + "/dev"); err == nil {
			out[strings.TrimSpace(string(b))] = true
		}
		// Partitions are subdirectories with a "partition" file.
		if ents, err := os.ReadDir(sys); err == nil {
			for _, e := range ents {
				if _, err := os.Stat(filepath.Join(sys, e.Name(), "partition")); err == nil {
					walk(e.Name())
				}
			}
		}
		if ents, err := os.ReadDir(sys + "/holders"); err == nil {
			for _, e := range ents {
				walk(e.Name())
			}
		}
	}
	walk(name)
	if len(out) == 0 {
		return nil, fmt.Errorf("find device numbers of %s: not in /sys/class/block", devPath)
	}
	return out, nil
}

// blockName returns the kernel name of a block device path (following
// symbolic links such as /dev/disk/by-id/…).
func blockName(devPath string) (string, error) {
	p, err := filepath.EvalSymlinks(devPath)
	if err != nil {
		return "", fmt.Errorf("resolve %s: %w", devPath, err)
	}
	return filepath.Base(p), nil
}

// mountsOn returns one mount point per file system mounted from a device
// in nums (bind mounts of the same file system are listed once), read
// from mountinfo (normally /proc/self/mountinfo).
func mountsOn(mountinfo string, nums map[string]bool) ([]string, error) {
	f, err := os.Open(mountinfo)
	if err != nil {
		return nil, fmt.Errorf("read mounts: %w", err)
	}
	defer f.Close()
	var out []string
	done := map[string]bool{}
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		// id parent major:minor root mountpoint options ... - fstype source super
		fields := strings.Fields(sc.Text())
		if len(fields) < 5 {
			continue
		}
		mm := fields[2]
		if !nums[mm] || done[mm] {
			continue
		}
		done[mm] = true
		out = append(out, unescapeMount(fields[4]))
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read mounts: %w", err)
	}
	return out, nil
}

// unescapeMount undoes mountinfo's octal escapes (\040 for a space).
func unescapeMount(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if v, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// freezer holds file systems frozen with FIFREEZE until Thaw or until
// MaxFreeze has passed, whichever comes first.
type freezer struct {
	mu     sync.Mutex
	files  []*os.File // frozen mount points; guarded by mu
	thawed bool       // guarded by mu
	timer  *time.Timer
	start  time.Time
	// took is how long the file systems stayed frozen; set by thaw.
	took time.Duration
	errs []error // thaw errors; guarded by mu
}

// freezeMounts syncs and then freezes each mount point. It thaws whatever
// it froze when one fails. The returned freezer thaws by itself after
// limit; the caller tests Frozen while holding Lock to decide whether a
// point is still app-consistent.
func freezeMounts(mounts []string, limit time.Duration) (*freezer, error) {
	var files []*os.File
	for _, m := range mounts {
		f, err := os.Open(m)
		if err != nil {
			closeAll(files)
			return nil, fmt.Errorf("open mount point %s: %w", m, err)
		}
		// Flushing before the freeze keeps the frozen window short.
		_ = unix.Syncfs(int(f.Fd()))
		files = append(files, f)
	}
	fz := &freezer{start: time.Now()}
	fz.mu.Lock()
	defer fz.mu.Unlock()
	fz.timer = time.AfterFunc(limit, func() { fz.Thaw() })
	for i, f := range files {
		if err := unix.IoctlSetInt(int(f.Fd()), ioctlFIFREEZE, 0); err != nil {
			fz.timer.Stop()
			for _, g := range files[:i] {
				_ = unix.IoctlSetInt(int(g.Fd()), ioctlFITHAW, 0)
			}
			closeAll(files)
			fz.thawed = true
			return nil, fmt.Errorf("freeze %s: %w", mounts[i], err)
		}
		fz.files = append(fz.files, f)
	}
	closeAll(files[len(fz.files):])
	return fz, nil
}

func closeAll(files []*os.File) {
	for _, f := range files {
		f.Close()
	}
}

// Lock holds off the thaw timer while the caller decides whether a point
// is app-consistent; Unlock lets it run.
func (fz *freezer) Lock()   { fz.mu.Lock() }
func (fz *freezer) Unlock() { fz.mu.Unlock() }

// FrozenLocked reports whether the file systems are still frozen; the
// caller holds Lock.
func (fz *freezer) FrozenLocked() bool { return !fz.thawed }

// Thaw thaws every frozen file system once and returns the errors of
// FITHAW, if any. It is safe to call more than once and from the timer.
func (fz *freezer) Thaw() error {
	fz.mu.Lock()
	defer fz.mu.Unlock()
	if fz.thawed {
		return errors.Join(fz.errs...)
	}
	fz.thawed = true
	fz.timer.Stop()
	for _, f := range fz.files {
		if err := unix.IoctlSetInt(int(f.Fd()), ioctlFITHAW, 0); err != nil {
			fz.errs = append(fz.errs, fmt.Errorf("thaw %s: %w", f.Name(), err))
		}
		f.Close()
	}
	fz.took = time.Since(fz.start)
	return errors.Join(fz.errs...)
}

// Took returns how long the file systems stayed frozen (0 before Thaw).
func (fz *freezer) Took() time.Duration {
	fz.mu.Lock()
	defer fz.mu.Unlock()
	return fz.took
}
