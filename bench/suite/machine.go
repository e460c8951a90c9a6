package suite

import (
	"bufio"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// DescribeMachine reports the CPU model, cores, RAM, kernel and the disk
// holding dir. Parts it cannot read are left as "unknown".
func DescribeMachine(dir string) Machine {
	m := Machine{CPU: "unknown", Cores: runtime.NumCPU(), Kernel: "unknown", Disk: "unknown", GoVersion: runtime.Version()}
	if v := procField("/proc/cpuinfo", "model name"); v != "" {
		m.CPU = v
	}
	if v := procField("/proc/meminfo", "MemTotal"); v != "" {
		if kb, err := strconv.ParseInt(strings.Fields(v)[0], 10, 64); err == nil {
			m.RAMBytes = kb << 10
		}
	}
	var u unix.Utsname
	if unix.Uname(&u) == nil {
		m.Kernel = unix.ByteSliceToString(u.Release[:])
	}
	if d := diskOf(dir); d != "" {
		m.Disk = d
	}
	return m
}

// procField returns the value of the first "key : value" line of path.
func procField(path, key string) string {
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if ok && strings.TrimSpace(k) == key {
			return strings.TrimSpace(v)
		}
	}
	return ""
}

// diskOf describes the file system holding dir and the block device
// under it: "/dev/vda (ext4 on /, virtio, non-rotational)".
func diskOf(dir string) string {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return ""
	}
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return ""
	}
	defer f.Close()
	var best, fstype, source string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		// id parent major:minor root mountpoint opts ... - fstype source superopts
		pre, post, ok := strings.Cut(sc.Text(), " - ")
		fp, fq := strings.Fields(pre), strings.Fields(post)
		if !ok || len(fp) < 5 || len(fq) < 2 {
			continue
		}
		mp := fp[4]
		if (abs == mp || strings.HasPrefix(abs, strings.TrimSuffix(mp, "/")+"/") || mp == "/") && len(mp) >= len(best) {
			best, fstype, source = mp, fq[0], fq[1]
		}
	}
	if best == "" {
		return ""
	}
	desc := source + " (" + fstype + " on " + best
	name := filepath.Base(source)
	sys := filepath.Join("/sys/class/block", name)
	if _, err := os.Stat(sys); err == nil {
		// A partition's queue is its parent's.
		if _, err := os.Stat(filepath.Join(sys, "partition")); err == nil {
			if p, err := filepath.EvalSymlinks(filepath.Join(sys, "..")); err == nil {
				sys = p
			}
		}
		if b, err := os.ReadFile(filepath.Join(sys, "device", "model")); err == nil && strings.TrimSpace(string(b)) != "" {
			desc += ", " + strings.TrimSpace(string(b))
		}
		if b, err := os.ReadFile(filepath.Join(sys, "queue", "rotational")); err == nil {
			if strings.TrimSpace(string(b)) == "0" {
				desc += ", non-rotational"
			} else {
				desc += ", rotational"
			}
		}
	}
	return desc + ")"
}
