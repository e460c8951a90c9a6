package libvirt

import (
	"encoding/xml"
	"fmt"
	"net"
	"net/url"
	"strings"

	"github.com/ferrymigrate/ferry/launch"
)

// qemuNS is libvirt's namespace for QEMU pass-through arguments.
const qemuNS = "http://libvirt.org/schemas/domain/qemu/1.0"

// domainXML is the subset of libvirt's domain XML the target writes
// (https://libvirt.org/formatdomain.html). It is built with encoding/xml,
// so names and paths are escaped, never spliced into markup.
type domainXML struct {
	XMLName  xml.Name     `xml:"domain"`
	Type     string       `xml:"type,attr"` // "kvm" or "qemu" (TCG)
	QemuNS   string       `xml:"xmlns:qemu,attr"`
	Name     string       `xml:"name"`
	Metadata *metadataXML `xml:"metadata,omitempty"`
	Memory   memoryXML    `xml:"memory"`
	VCPU     int          `xml:"vcpu"`
	OS       osXML        `xml:"os"`
	Features featuresXML  `xml:"features"`
	CPU      cpuXML       `xml:"cpu"`
	OnPower  string       `xml:"on_poweroff"`
	OnReboot string       `xml:"on_reboot"`
	OnCrash  string       `xml:"on_crash"`
	Devices  devicesXML   `xml:"devices"`
	SecLabel secLabelXML  `xml:"seclabel"`
	Cmdline  *cmdlineXML  `xml:"qemu:commandline,omitempty"`
}

type metadataXML struct {
	Ferry ferryMetaXML `xml:"https://ferrymigrate.dev/xmlns/libvirt/1 instance"`
}

// ferryMetaXML marks a domain as a Ferry instance.
type ferryMetaXML struct {
	ID string `xml:"id,attr"`
}

type memoryXML struct {
	Unit  string `xml:"unit,attr"`
	Value int    `xml:",chardata"`
}

type osXML struct {
	Type   osTypeXML  `xml:"type"`
	Loader *loaderXML `xml:"loader,omitempty"`
	NVRAM  *nvramXML  `xml:"nvram,omitempty"`
	Boot   bootXML    `xml:"boot"`
}

type osTypeXML struct {
	Arch    string `xml:"arch,attr"`
	Machine string `xml:"machine,attr"`
	Value   string `xml:",chardata"`
}

type loaderXML struct {
	ReadOnly string `xml:"readonly,attr"`
	Type     string `xml:"type,attr"`
	Path     string `xml:",chardata"`
}

type nvramXML struct {
	Path string `xml:",chardata"`
}

type bootXML struct {
	Dev string `xml:"dev,attr"`
}

type featuresXML struct {
	ACPI *struct{} `xml:"acpi"`
}

type cpuXML struct {
	Mode string `xml:"mode,attr"` // host-passthrough (KVM) or maximum (TCG)
}

type devicesXML struct {
	Emulator   string       `xml:"emulator"`
	Disks      []diskXML    `xml:"disk"`
	Serial     serialXML    `xml:"serial"`
	Channels   []channelXML `xml:"channel"`
	MemBalloon balloonXML   `xml:"memballoon"`
}

type diskXML struct {
	Type    string          `xml:"type,attr"`
	Device  string          `xml:"device,attr"`
	Driver  driverXML       `xml:"driver"`
	Source  fileSourceXML   `xml:"source"`
	Backing backingStoreXML `xml:"backingStore"`
	Target  diskTargetXML   `xml:"target"`
}

type driverXML struct {
	Name    string `xml:"name,attr"`
	Type    string `xml:"type,attr"`
	Discard string `xml:"discard,attr,omitempty"`
}

type fileSourceXML struct {
	File string `xml:"file,attr"`
}

// backingStoreXML is the overlay's backing: the snapshot's NBD export,
// read-only. The empty inner backingStore ends the chain.
type backingStoreXML struct {
	Type   string       `xml:"type,attr"`
	Format formatXML    `xml:"format"`
	Source nbdSourceXML `xml:"source"`
	End    struct{}     `xml:"backingStore"`
}

type formatXML struct {
	Type string `xml:"type,attr"`
}

type nbdSourceXML struct {
	Protocol string  `xml:"protocol,attr"`
	Name     string  `xml:"name,attr,omitempty"`
	Host     hostXML `xml:"host"`
}

type hostXML struct {
	Transport string `xml:"transport,attr,omitempty"`
	Socket    string `xml:"socket,attr,omitempty"`
	Name      string `xml:"name,attr,omitempty"`
	Port      string `xml:"port,attr,omitempty"`
}

type diskTargetXML struct {
	Dev string `xml:"dev,attr"`
	Bus string `xml:"bus,attr"`
}

type serialXML struct {
	Type   string        `xml:"type,attr"`
	Source pathSourceXML `xml:"source"`
	Target portXML       `xml:"target"`
}

type pathSourceXML struct {
	Path string `xml:"path,attr"`
}

type portXML struct {
	Port int `xml:"port,attr"`
}

// channelXML is a virtio-serial channel, used for the QEMU guest agent.
type channelXML struct {
	Type   string           `xml:"type,attr"`
	Source channelSourceXML `xml:"source"`
	Target channelTargetXML `xml:"target"`
}

type channelSourceXML struct {
	Mode string `xml:"mode,attr"`
	Path string `xml:"path,attr"`
}

type channelTargetXML struct {
	Type string `xml:"type,attr"`
	Name string `xml:"name,attr"`
}

type balloonXML struct {
	Model string `xml:"model,attr"`
}

// secLabelXML pins the DAC label: QEMU runs as the Ferry process's user
// and group, and libvirt does not chown the instance's files, which that
// user already owns (as it owns the NBD socket QEMU connects to).
type secLabelXML struct {
	Type    string `xml:"type,attr"`
	Model   string `xml:"model,attr"`
	Relabel string `xml:"relabel,attr"`
	Label   string `xml:"label"`
}

type cmdlineXML struct {
	Args []argXML `xml:"qemu:arg"`
}

type argXML struct {
	Value string `xml:"value,attr"`
}

// nbdSource turns a launch.DiskSource's NBD URL (already checked by
// launch.Spec.Validate) into libvirt's network disk source.
func nbdSource(s string) (nbdSourceXML, error) {
	u, err := url.Parse(s)
	if err != nil {
		return nbdSourceXML{}, fmt.Errorf("%w: disk %q: %v", launch.ErrInvalidSpec, s, err)
	}
	src := nbdSourceXML{Protocol: "nbd", Name: strings.TrimPrefix(u.Path, "/")}
	switch u.Scheme {
	case "nbd+unix":
		src.Host = hostXML{Transport: "unix", Socket: u.Query().Get("socket")}
	case "nbd", "nbd+tcp":
		host, port, err := net.SplitHostPort(u.Host)
		if err != nil {
			host, port = u.Host, "10809"
		}
		src.Host = hostXML{Transport: "tcp", Name: strings.Trim(host, "[]"), Port: port}
	default:
		return nbdSourceXML{}, fmt.Errorf("%w: disk %q is not an NBD URL", launch.ErrInvalidSpec, s)
	}
	return src, nil
}

// domainConfig is what buildDomain needs besides the spec.
type domainConfig struct {
	Name, ID, Accel, Emulator string
	Overlays                  []string
	ConsoleLog, AgentSock     string
	ForwardAddr               string
	Forwards                  []launch.Forward
	UID, GID                  int
	OVMFCode, NVRAM           string // UEFI only
}

// buildDomain returns the XML of the instance's transient domain.
func buildDomain(spec launch.Spec, c domainConfig) ([]byte, error) {
	d := domainXML{
		Type:     "qemu",
		QemuNS:   qemuNS,
		Name:     c.Name,
		Metadata: &metadataXML{Ferry: ferryMetaXML{ID: c.ID}},
		Memory:   memoryXML{Unit: "MiB", Value: spec.MemoryMiB},
		VCPU:     spec.CPUs,
		OS: osXML{
			Type: osTypeXML{Arch: "x86_64", Machine: "pc", Value: "hvm"},
			Boot: bootXML{Dev: "hd"},
		},
		Features: featuresXML{ACPI: &struct{}{}},
		CPU:      cpuXML{Mode: "maximum"},
		OnPower:  "destroy",
		OnReboot: "restart",
		OnCrash:  "destroy",
		Devices: devicesXML{
			Emulator:   c.Emulator,
			Serial:     serialXML{Type: "file", Source: pathSourceXML{Path: c.ConsoleLog}},
			MemBalloon: balloonXML{Model: "none"},
		},
		SecLabel: secLabelXML{Type: "static", Model: "dac", Relabel: "no", Label: fmt.Sprintf("+%d:+%d", c.UID, c.GID)},
	}
	if c.Accel == "kvm" {
		d.Type, d.CPU.Mode = "kvm", "host-passthrough"
	}
	if spec.BootMode == launch.UEFI {
		d.OS.Loader = &loaderXML{ReadOnly: "yes", Type: "pflash", Path: c.OVMFCode}
		d.OS.NVRAM = &nvramXML{Path: c.NVRAM}
	}
	for i, ov := range c.Overlays {
		src, err := nbdSource(spec.Disks[i].NBDURL)
		if err != nil {
			return nil, err
		}
		d.Devices.Disks = append(d.Devices.Disks, diskXML{
			Type: "file", Device: "disk",
			Driver:  driverXML{Name: "qemu", Type: "qcow2", Discard: "unmap"},
			Source:  fileSourceXML{File: ov},
			Backing: backingStoreXML{Type: "network", Format: formatXML{Type: "raw"}, Source: src},
			Target:  diskTargetXML{Dev: diskDev(i), Bus: "virtio"},
		})
	}
	if c.AgentSock != "" {
		d.Devices.Channels = append(d.Devices.Channels, channelXML{
			Type:   "unix",
			Source: channelSourceXML{Mode: "bind", Path: c.AgentSock},
			Target: channelTargetXML{Type: "virtio", Name: "org.qemu.guest_agent.0"},
		})
	}
	// User-mode NAT with host forwards. libvirt 9.0's <interface
	// type='user'> takes <portForward> only with the passt backend, which
	// Debian 12's libvirt does not pair with a passt package by default;
	// QEMU's own slirp hostfwd through <qemu:commandline> works with the
	// stock packages (libvirt marks the domain tainted "custom-argv").
	netdev := "user,id=ferrynet0"
	for _, f := range c.Forwards {
		netdev += fmt.Sprintf(",hostfwd=tcp:%s:%d-:%d", c.ForwardAddr, f.HostPort, f.GuestPort)
	}
	d.Cmdline = &cmdlineXML{Args: []argXML{
		{"-netdev"}, {netdev},
		// The last PCI slot: libvirt assigns its own devices from slot 2
		// up and does not know of this one.
		{"-device"}, {"virtio-net-pci,netdev=ferrynet0,bus=pci.0,addr=0x1f"},
	}}
	b, err := xml.MarshalIndent(d, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("encode domain XML: %w", err)
	}
	return b, nil
}

// diskDev names the i-th virtio disk: vda … vdz, vdaa ….
func diskDev(i int) string {
	name := ""
	for i++; i > 0; i = (i - 1) / 26 {
		name = string(rune('a'+(i-1)%26)) + name
	}
	return "vd" + name
}
