package agent

import (
	"bufio"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"

	"github.com/ferrymigrate/ferry"
	"github.com/ferrymigrate/ferry/api"
)

// Facts is what the agent tells the server about its host.
type Facts struct {
	MachineID string
	Hostname  string
	OS        string
	Kernel    string
	CPUs      int
	RAMBytes  int64
	NICs      []ferry.NIC
	Disks     []api.PairDisk
}

// Root is where the host's /etc, /proc and /sys are found; tests point it
// at a fake tree.
type Root string

func (r Root) path(p string) string { return filepath.Join(string(r), p) }

// GatherFacts reads the host's facts. devices, when not empty, names the
// block devices to replicate (e.g. /dev/sdb or sdb); otherwise every
// non-removable, non-virtual disk is taken. stateDir keeps a generated
// machine id for hosts that have none.
func (r Root) GatherFacts(devices []string, stateDir string) (*Facts, error) {
	f := &Facts{CPUs: runtime.NumCPU()}
	var err error
	if f.MachineID, err = r.machineID(stateDir); err != nil {
		return nil, err
	}
	if f.Hostname, err = os.Hostname(); err != nil {
		return nil, fmt.Errorf("read hostname: %w", err)
	}
	f.OS = r.osName()
	if b, err := os.ReadFile(r.path("/proc/sys/kernel/osrelease")); err == nil {
		f.Kernel = strings.TrimSpace(string(b))
	}
	f.RAMBytes = r.memTotal()
	f.NICs = nics()
	if f.Disks, err = r.Disks(devices); err != nil {
		return nil, err
	}
	return f, nil
}

func (r Root) machineID(stateDir string) (string, error) {
	for _, p := range []string{"/etc/machine-id", "/var/lib/dbus/machine-id"} {
		if b, err := os.ReadFile(r.path(p)); err == nil {
			if id := strings.TrimSpace(string(b)); id != "" {
				return id, nil
			}
		}
	}
	// No machine id: make one and keep it, so re-pairing finds the same
	// server.
	p := filepath.Join(stateDir, "machine-id")
	if b, err := os.ReadFile(p); err == nil {
		return strings.TrimSpace(string(b)), nil
	}
	var b [16]byte
	_, _ = rand.Read(b[:])
	id := hex.EncodeToString(b[:])
	if err := os.WriteFile(p, []byte(id+"\n"), 0o600); err != nil {
		return "", fmt.Errorf("save generated machine id: %w", err)
	}
	return id, nil
}

func (r Root) osName() string {
	f, err := os.Open(r.path("/etc/os-release"))
	if err != nil {
		return runtime.GOOS
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "PRETTY_NAME="); ok {
			return strings.Trim(v, `"'`)
		}
	}
	return runtime.GOOS
}

func (r Root) memTotal() int64 {
	f, err := os.Open(r.path("/proc/meminfo"))
	if err != nil {
		return 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) >= 2 && fields[0] == "MemTotal:" {
			kb, _ := strconv.ParseInt(fields[1], 10, 64)
			return kb * 1024
		}
	}
	return 0
}

func nics() []ferry.NIC {
	ifs, err := net.Interfaces()
	if err != nil {
		return nil
	}
	var out []ferry.NIC
	for _, i := range ifs {
		if i.Flags&net.FlagLoopback != 0 {
			continue
		}
		n := ferry.NIC{Name: i.Name, MAC: i.HardwareAddr.String()}
		if addrs, err := i.Addrs(); err == nil {
			for _, a := range addrs {
				n.IPs = append(n.IPs, a.String())
			}
		}
		out = append(out, n)
	}
	return out
}

// Disks lists block devices from /sys/block: the named ones, or every
// disk that is neither removable nor virtual (loop, ram, dm and the like
// live under /sys/devices/virtual).
func (r Root) Disks(devices []string) ([]api.PairDisk, error) {
	if len(devices) > 0 {
		var out []api.PairDisk
		for _, d := range devices {
			name := filepath.Base(d)
			disk, err := r.disk(name)
			if err != nil {
				return nil, fmt.Errorf("disk %s: %w", d, err)
			}
			out = append(out, disk)
		}
		return out, nil
	}
	entries, err := os.ReadDir(r.path("/sys/block"))
	if err != nil {
		return nil, fmt.Errorf("list block devices: %w", err)
	}
	var out []api.PairDisk
	for _, e := range entries {
		name := e.Name()
		target, err := filepath.EvalSymlinks(r.path("/sys/block/" + name))
		if err != nil || strings.Contains(target, "/devices/virtual/") {
			continue
		}
		if readTrim(r.path("/sys/block/"+name+"/removable")) == "1" {
			continue
		}
		d, err := r.disk(name)
		if err != nil || d.SizeBytes == 0 {
			continue
		}
		out = append(out, d)
	}
	return out, nil
}

func (r Root) disk(name string) (api.PairDisk, error) {
	base := r.path("/sys/block/" + name)
	if _, err := os.Stat(base); err != nil {
		return api.PairDisk{}, fmt.Errorf("not a block device in /sys/block: %w", err)
	}
	sectors, err := strconv.ParseInt(readTrim(base+"/size"), 10, 64)
	if err != nil {
		return api.PairDisk{}, fmt.Errorf("read size: %w", err)
	}
	lbs, err := strconv.Atoi(readTrim(base + "/queue/logical_block_size"))
	if err != nil || lbs == 0 {
		lbs = 512
	}
	// /sys/block/*/size counts 512-byte sectors whatever the block size.
	return api.PairDisk{Name: name, SizeBytes: sectors * 512, LogicalBlockSize: lbs, Model: readTrim(base + "/device/model")}, nil
}

func readTrim(p string) string {
	b, err := os.ReadFile(p)
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(b))
}
