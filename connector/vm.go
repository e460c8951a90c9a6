package connector

import (
	"context"
	"fmt"
	"regexp"
	"strings"

	"github.com/ferrymigrate/ferry"
)

// Facts is what the connector learns of a VM over QMP.
type Facts struct {
	// Name is the VM's -name, or "" when it has none.
	Name string
	// UUID is the VM's -uuid; all zeros when it has none.
	UUID        string
	CPUs        int
	MemoryBytes int64
	NICs        []ferry.NIC
	Disks       []Disk
}

// Disk is one of a VM's disks: a root format node of its block graph.
type Disk struct {
	// Name is the disk's name in Ferry (replica disk "<server>.<name>").
	Name string
	// Node is the block node the connector fleeces and tracks.
	Node string
	// Size is the virtual size in bytes.
	Size int64
	// Format is the node's driver (qcow2 keeps persistent bitmaps).
	Format string
}

const zeroUUID = "00000000-0000-0000-0000-000000000000"

// MachineID is the source server's machine id at pairing: stable for the
// VM across restarts (its UUID, else its name, else the QMP socket path).
func (f *Facts) MachineID(socket string) string {
	switch {
	case f.UUID != "" && f.UUID != zeroUUID:
		return "qemu-" + f.UUID
	case f.Name != "":
		return "qemu-name-" + sanitize(f.Name)
	}
	return "qemu-socket-" + sanitize(strings.Trim(socket, "/"))
}

// Hostname is what the server shows as the source server's name.
func (f *Facts) Hostname(socket string) string {
	if f.Name != "" {
		return f.Name
	}
	return f.MachineID(socket)
}

var unsafeName = regexp.MustCompile(`[^A-Za-z0-9._-]+`)

func sanitize(s string) string {
	s = strings.Trim(unsafeName.ReplaceAllString(s, "-"), "-.")
	if len(s) > 100 {
		s = s[len(s)-100:]
	}
	return s
}

// fleecePrefix names everything the connector adds to a VM's block graph.
const fleecePrefix = "ferry-"

// Discover reads a VM's facts over QMP.
func Discover(ctx context.Context, c Monitor) (*Facts, error) {
	f := &Facts{}
	var name struct {
		Name string `json:"name"`
	}
	if err := c.Execute(ctx, "query-name", nil, &name); err != nil {
		return nil, fmt.Errorf("discover: %w", err)
	}
	f.Name = name.Name
	var uuid struct {
		UUID string `json:"UUID"`
	}
	if err := c.Execute(ctx, "query-uuid", nil, &uuid); err != nil {
		return nil, fmt.Errorf("discover: %w", err)
	}
	f.UUID = uuid.UUID
	var cpus []struct{}
	if err := c.Execute(ctx, "query-cpus-fast", nil, &cpus); err != nil {
		return nil, fmt.Errorf("discover: %w", err)
	}
	f.CPUs = len(cpus)
	var mem struct {
		Base    int64 `json:"base-memory"`
		Plugged int64 `json:"plugged-memory"`
	}
	if err := c.Execute(ctx, "query-memory-size-summary", nil, &mem); err != nil {
		return nil, fmt.Errorf("discover: %w", err)
	}
	f.MemoryBytes = mem.Base + mem.Plugged
	var filters []struct {
		Name string `json:"name"`
		MAC  string `json:"main-mac"`
	}
	// query-rx-filter lists the guest's NICs; a VM without any may refuse.
	if err := c.Execute(ctx, "query-rx-filter", nil, &filters); err == nil {
		for _, n := range filters {
			f.NICs = append(f.NICs, ferry.NIC{Name: n.Name, MAC: n.MAC})
		}
	}
	disks, err := discoverDisks(ctx, c)
	if err != nil {
		return nil, fmt.Errorf("discover: %w", err)
	}
	if n, ok := c.(DiskNamer); ok {
		names, err := n.DiskNames(ctx)
		if err != nil {
			return nil, fmt.Errorf("discover: %w", err)
		}
		disks = renameDisks(disks, names)
	}
	f.Disks = disks
	return f, nil
}

// namedNode is the part of query-named-block-nodes the connector reads.
type namedNode struct {
	NodeName string `json:"node-name"`
	Driver   string `json:"drv"`
	Image    struct {
		VirtualSize int64 `json:"virtual-size"`
	} `json:"image"`
	Bitmaps []bitmapInfo `json:"dirty-bitmaps"`
}

// bitmapInfo is a dirty bitmap as QEMU reports it.
type bitmapInfo struct {
	Name         string `json:"name"`
	Recording    bool   `json:"recording"`
	Persistent   bool   `json:"persistent"`
	Inconsistent bool   `json:"inconsistent"`
	Count        int64  `json:"count"`
	Granularity  int64  `json:"granularity"`
}

func namedNodes(ctx context.Context, c Monitor) (map[string]namedNode, error) {
	var nodes []namedNode
	if err := c.Execute(ctx, "query-named-block-nodes", map[string]any{"flat": true}, &nodes); err != nil {
		return nil, err
	}
	out := map[string]namedNode{}
	for _, n := range nodes {
		out[n.NodeName] = n
	}
	return out, nil
}

// discoverDisks finds the root format nodes: those a guest device uses
// (query-block) and those nothing uses (a -machine none process that only
// holds images), skipping the connector's own nodes.
func discoverDisks(ctx context.Context, c Monitor) ([]Disk, error) {
	nodes, err := namedNodes(ctx, c)
	if err != nil {
		return nil, err
	}
	var graph struct {
		Nodes []struct {
			ID   int    `json:"id"`
			Type string `json:"type"`
			Name string `json:"name"`
		} `json:"nodes"`
		Edges []struct {
			Parent int `json:"parent"`
			Child  int `json:"child"`
		} `json:"edges"`
	}
	if err := c.Execute(ctx, "x-debug-query-block-graph", nil, &graph); err != nil {
		return nil, err
	}
	kind := map[int]string{}
	name := map[int]string{}
	for _, n := range graph.Nodes {
		kind[n.ID], name[n.ID] = n.Type, n.Name
	}
	// backend[node] is the name of the block backend (device) using it.
	hasDriverParent := map[int]bool{}
	backend := map[int]string{}
	for _, e := range graph.Edges {
		switch kind[e.Parent] {
		case "block-driver", "block-job":
			hasDriverParent[e.Child] = true
		case "block-backend":
			backend[e.Child] = name[e.Parent]
		}
	}
	var disks []Disk
	seen := map[string]bool{}
	for _, n := range graph.Nodes {
		if n.Type != "block-driver" || hasDriverParent[n.ID] || strings.HasPrefix(n.Name, fleecePrefix) {
			continue
		}
		nn, ok := nodes[n.Name]
		if !ok {
			continue
		}
		dname := n.Name
		if strings.HasPrefix(dname, "#") {
			dname = backend[n.ID]
		}
		dname = sanitize(dname)
		if dname == "" || seen[dname] {
			dname = fmt.Sprintf("disk%d", len(disks))
		}
		seen[dname] = true
		disks = append(disks, Disk{Name: dname, Node: n.Name, Size: nn.Image.VirtualSize, Format: nn.Driver})
	}
	return disks, nil
}

// renameDisks gives disks the names a DiskNamer knows and drops those it
// says are not disks; a name taken twice falls back to the node's.
func renameDisks(disks []Disk, names map[string]string) []Disk {
	var out []Disk
	seen := map[string]bool{}
	for _, d := range disks {
		name, ok := names[d.Node]
		if ok && name == "" {
			continue
		}
		if ok {
			if n := sanitize(name); n != "" && !seen[n] {
				d.Name = n
			}
		}
		seen[d.Name] = true
		out = append(out, d)
	}
	return out
}
