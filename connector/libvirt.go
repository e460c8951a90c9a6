package connector

import (
	"context"
	"encoding/json"
	"encoding/xml"
	"errors"
	"fmt"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	golibvirt "github.com/digitalocean/go-libvirt"
	"github.com/digitalocean/go-libvirt/socket/dialers"

	"github.com/ferrymigrate/ferry/qmp"
)

// DefaultLibvirtSocket is libvirtd's unix socket for qemu:///system.
const DefaultLibvirtSocket = "/var/run/libvirt/libvirt-sock"

// libvirtDialTimeout bounds a connection to libvirtd.
const libvirtDialTimeout = 5 * time.Second

// LibvirtHost is a libvirt host whose running QEMU domains the connector
// replicates, each one VM: libvirtd owns the domains' QMP monitors, so
// commands go through its qemu-monitor-command API (libvirt marks such a
// domain "tainted: custom-monitor" in its log, which is harmless). The
// connector must run on the host itself: it reads QEMU's NBD export over
// a local unix socket and creates the fleecing images in a local
// directory. Its methods may be called concurrently.
type LibvirtHost struct {
	// URI is the libvirt URI as given; Socket the unix socket it names.
	URI, Socket string
	driver      string // the URI libvirtd opens, without the socket parameter

	mu sync.Mutex
	l  *golibvirt.Libvirt // nil or disconnected: dial again
}

// LibvirtDomain is one running QEMU domain of a LibvirtHost.
type LibvirtDomain struct {
	Name string
	// UUID is the domain's UUID (QEMU's -uuid, so query-uuid gives the
	// same machine id as a QMP source of the same VM).
	UUID string
	dom  golibvirt.Domain
}

// ParseLibvirtURI checks a libvirt URI the connector can use: a local
// QEMU driver, qemu:///system (or qemu+unix:///system), with an optional
// ?socket=PATH. It returns the driver URI to open and the socket.
func ParseLibvirtURI(uri string) (driver, socket string, err error) {
	u, err := url.Parse(uri)
	if err != nil {
		return "", "", fmt.Errorf("libvirt URI %q: %w", uri, err)
	}
	if u.Host != "" || (strings.HasPrefix(u.Scheme, "qemu+") && u.Scheme != "qemu+unix") {
		return "", "", fmt.Errorf("libvirt URI %q: a remote host or transport: run the connector on the libvirt host itself and use qemu:///system (it reads QEMU's NBD export over a local socket)", uri)
	}
	if u.Scheme != "qemu" && u.Scheme != "qemu+unix" {
		return "", "", fmt.Errorf("libvirt URI %q: want qemu:///system (the connector replicates QEMU domains, driver %q is not QEMU's)", uri, u.Scheme)
	}
	if u.Path != "/system" {
		return "", "", fmt.Errorf("libvirt URI %q: want qemu:///system (path %q is not supported: the session daemon's QEMU runs without root's access)", uri, u.Path)
	}
	socket = DefaultLibvirtSocket
	for k, v := range u.Query() {
		switch k {
		case "socket":
			socket = v[0]
		default:
			return "", "", fmt.Errorf("libvirt URI %q: unknown parameter %q (only socket=PATH)", uri, k)
		}
	}
	return "qemu:///system", socket, nil
}

// DialLibvirt connects to libvirtd at uri (see ParseLibvirtURI).
func DialLibvirt(ctx context.Context, uri string) (*LibvirtHost, error) {
	driver, socket, err := ParseLibvirtURI(uri)
	if err != nil {
		return nil, err
	}
	h := &LibvirtHost{URI: uri, Socket: socket, driver: driver}
	if _, err := h.conn(ctx); err != nil {
		return nil, err
	}
	return h, nil
}

// conn returns the connection to libvirtd, dialling again when it was
// lost (libvirtd restarted).
func (h *LibvirtHost) conn(ctx context.Context) (*golibvirt.Libvirt, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.l != nil && h.l.IsConnected() {
		return h.l, nil
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	l := golibvirt.NewWithDialer(dialers.NewLocal(dialers.WithSocket(h.Socket), dialers.WithLocalTimeout(libvirtDialTimeout)))
	if err := l.ConnectToURI(golibvirt.ConnectURI(h.driver)); err != nil {
		return nil, fmt.Errorf("libvirt %s: connect to libvirtd on %s: %v (is libvirtd running? start it, e.g. systemctl start libvirtd, and run the connector as root)", h.URI, h.Socket, err)
	}
	h.l = l
	return l, nil
}

// Close ends the connection to libvirtd.
func (h *LibvirtHost) Close() error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.l == nil {
		return nil
	}
	err := h.l.Disconnect()
	h.l = nil
	return err
}

// Domains lists the host's running domains, by name.
func (h *LibvirtHost) Domains(ctx context.Context) ([]LibvirtDomain, error) {
	l, err := h.conn(ctx)
	if err != nil {
		return nil, err
	}
	doms, _, err := l.ConnectListAllDomains(1, golibvirt.ConnectListDomainsActive)
	if err != nil {
		return nil, fmt.Errorf("libvirt %s: list domains: %w", h.URI, err)
	}
	var out []LibvirtDomain
	for _, d := range doms {
		out = append(out, LibvirtDomain{Name: d.Name, UUID: formatUUID(d.UUID), dom: d})
	}
	return out, nil
}

func formatUUID(u golibvirt.UUID) string {
	return fmt.Sprintf("%x-%x-%x-%x-%x", u[0:4], u[4:6], u[6:8], u[8:10], u[10:16])
}

// Address is how the catalog shows a domain: the URI and its name.
func (h *LibvirtHost) Address(d LibvirtDomain) string { return h.URI + "#" + d.Name }

// Monitor is d's QEMU monitor through libvirtd. The domain is looked up
// by UUID on every command, so a domain that stopped makes commands fail
// with an error that says so, and one started again (same UUID) is
// reached again.
func (h *LibvirtHost) Monitor(d LibvirtDomain) Monitor {
	return &libvirtMonitor{h: h, d: d}
}

// OpenLibvirt discovers the running domain d of h and pairs it as its own
// source server, as Open does for a QMP socket.
func OpenLibvirt(ctx context.Context, o Options, h *LibvirtHost, d LibvirtDomain) (*Source, error) {
	m := h.Monitor(d)
	return open(ctx, o, &Source{Socket: h.Address(d), DialMonitor: func(context.Context) (Monitor, error) { return m, nil }})
}

// libvirtMonitor runs QMP commands on one domain with
// virDomainQemuMonitorCommand (flags 0: QMP JSON in and out).
type libvirtMonitor struct {
	h *LibvirtHost
	d LibvirtDomain
}

var (
	_ Monitor      = (*libvirtMonitor)(nil)
	_ DiskNamer    = (*libvirtMonitor)(nil)
	_ ProcessOwner = (*libvirtMonitor)(nil)
)

// domainError says plainly that the domain is gone or stopped.
func (m *libvirtMonitor) domainError(op string, err error) error {
	var le golibvirt.Error
	if errors.As(err, &le) {
		switch golibvirt.ErrorNumber(le.Code) {
		case golibvirt.ErrNoDomain:
			return fmt.Errorf("libvirt domain %s (%s) no longer exists on %s: %s: %w", m.d.Name, m.d.UUID, m.h.URI, op, err)
		case golibvirt.ErrOperationInvalid:
			return fmt.Errorf("libvirt domain %s (%s) is not running on %s: %s: %w", m.d.Name, m.d.UUID, m.h.URI, op, err)
		}
	}
	return fmt.Errorf("libvirt domain %s on %s: %s: %w", m.d.Name, m.h.URI, op, err)
}

// call runs f with the connection, in a goroutine so that ctx bounds the
// wait (go-libvirt's calls take no context).
func (m *libvirtMonitor) call(ctx context.Context, f func(l *golibvirt.Libvirt) error) error {
	l, err := m.h.conn(ctx)
	if err != nil {
		return err
	}
	done := make(chan error, 1)
	go func() { done <- f(l) }()
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Execute implements Monitor.
func (m *libvirtMonitor) Execute(ctx context.Context, command string, args, out any) error {
	msg := map[string]any{"execute": command}
	if args != nil {
		msg["arguments"] = args
	}
	b, err := json.Marshal(msg)
	if err != nil {
		return fmt.Errorf("qmp: encode %s: %w", command, err)
	}
	var res string
	err = m.call(ctx, func(l *golibvirt.Libvirt) error {
		var err error
		res, err = l.QEMUDomainMonitorCommand(m.d.dom, string(b), 0)
		return err
	})
	if err != nil {
		return m.domainError(command, err)
	}
	var r struct {
		Return json.RawMessage `json:"return"`
		Error  *struct {
			Class string `json:"class"`
			Desc  string `json:"desc"`
		} `json:"error"`
	}
	if err := json.Unmarshal([]byte(res), &r); err != nil {
		return fmt.Errorf("qmp: decode %s reply from libvirt domain %s: %w", command, m.d.Name, err)
	}
	if r.Error != nil {
		return &qmp.Error{Command: command, Class: r.Error.Class, Desc: r.Error.Desc}
	}
	if out != nil {
		if err := json.Unmarshal(r.Return, out); err != nil {
			return fmt.Errorf("qmp: decode %s reply: %w", command, err)
		}
	}
	return nil
}

// domainXML is the part of a live domain's XML the connector reads.
type domainXML struct {
	Disks []struct {
		Device string `xml:"device,attr"`
		Source struct {
			Index int `xml:"index,attr"`
		} `xml:"source"`
		Target struct {
			Dev string `xml:"dev,attr"`
		} `xml:"target"`
		ReadOnly *struct{} `xml:"readonly"`
	} `xml:"devices>disk"`
	SecLabels []struct {
		Model string `xml:"model,attr"`
		Label string `xml:"label"`
	} `xml:"seclabel"`
}

func (m *libvirtMonitor) xml(ctx context.Context) (*domainXML, error) {
	var s string
	err := m.call(ctx, func(l *golibvirt.Libvirt) error {
		var err error
		s, err = l.DomainGetXMLDesc(m.d.dom, 0)
		return err
	})
	if err != nil {
		return nil, m.domainError("read its XML", err)
	}
	var x domainXML
	if err := xml.Unmarshal([]byte(s), &x); err != nil {
		return nil, fmt.Errorf("libvirt domain %s: parse its XML: %w", m.d.Name, err)
	}
	return &x, nil
}

// DiskNames implements DiskNamer: libvirt names a disk's format node
// libvirt-<source index>-format; the disk is called by its target device
// (vda), and CD-ROMs, floppies and read-only disks are not replicated.
func (m *libvirtMonitor) DiskNames(ctx context.Context) (map[string]string, error) {
	x, err := m.xml(ctx)
	if err != nil {
		return nil, err
	}
	names := map[string]string{}
	for _, d := range x.Disks {
		if d.Source.Index == 0 {
			continue
		}
		node := fmt.Sprintf("libvirt-%d-format", d.Source.Index)
		if (d.Device != "" && d.Device != "disk") || d.ReadOnly != nil {
			names[node] = ""
			continue
		}
		names[node] = d.Target.Dev
	}
	return names, nil
}

// ProcessOwner implements ProcessOwner from the domain's DAC label
// ("+64055:+64055"); without one QEMU runs as root.
func (m *libvirtMonitor) ProcessOwner(ctx context.Context) (uid, gid int, err error) {
	x, err := m.xml(ctx)
	if err != nil {
		return 0, 0, err
	}
	for _, l := range x.SecLabels {
		if l.Model != "dac" || l.Label == "" {
			continue
		}
		u, g, ok := strings.Cut(l.Label, ":")
		uid, err1 := strconv.Atoi(strings.TrimPrefix(u, "+"))
		gid, err2 := strconv.Atoi(strings.TrimPrefix(g, "+"))
		if !ok || err1 != nil || err2 != nil {
			return 0, 0, fmt.Errorf("libvirt domain %s: DAC label %q: want +UID:+GID", m.d.Name, l.Label)
		}
		return uid, gid, nil
	}
	return 0, 0, nil
}
