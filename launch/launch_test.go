package launch

import (
	"errors"
	"strings"
	"testing"
)

func TestSpecValidate(t *testing.T) {
	good := func() Spec {
		return Spec{
			Name:      "web-01.test_1",
			Disks:     []DiskSource{{NBDURL: "nbd+unix:///snap?socket=/run/ferry/nbd.sock"}, {NBDURL: "nbd://127.0.0.1:10809/snap2", Size: 1 << 30}},
			CPUs:      2,
			MemoryMiB: 1024,
			Forwards:  []Forward{{GuestPort: 22}, {GuestPort: 80, HostPort: 8080}},
		}
	}
	if s := good(); s.Validate() != nil {
		t.Fatalf("good spec: %v", s.Validate())
	}
	bridged := good()
	bridged.Forwards, bridged.Network = nil, Network{Mode: NetBridge, Bridge: "ferrybr0"}
	if err := bridged.Validate(); err != nil {
		t.Fatalf("bridged spec: %v", err)
	}
	tests := []struct {
		name string
		edit func(*Spec)
	}{
		{"empty name", func(s *Spec) { s.Name = "" }},
		{"path escape", func(s *Spec) { s.Name = "../x" }},
		{"slash", func(s *Spec) { s.Name = "a/b" }},
		{"leading dot", func(s *Spec) { s.Name = ".x" }},
		{"long name", func(s *Spec) { s.Name = strings.Repeat("a", 64) }},
		{"no disks", func(s *Spec) { s.Disks = nil }},
		{"local file", func(s *Spec) { s.Disks[0].NBDURL = "/etc/shadow" }},
		{"json pseudo-protocol", func(s *Spec) { s.Disks[0].NBDURL = `json:{"file.filename":"/etc/shadow"}` }},
		{"unix without socket", func(s *Spec) { s.Disks[0].NBDURL = "nbd+unix:///snap" }},
		{"tcp without host", func(s *Spec) { s.Disks[0].NBDURL = "nbd:///snap" }},
		{"negative size", func(s *Spec) { s.Disks[1].Size = -1 }},
		{"zero CPUs", func(s *Spec) { s.CPUs = 0 }},
		{"tiny memory", func(s *Spec) { s.MemoryMiB = 8 }},
		{"boot mode", func(s *Spec) { s.BootMode = "OPENFIRMWARE" }},
		{"guest port 0", func(s *Spec) { s.Forwards[0].GuestPort = 0 }},
		{"host port too big", func(s *Spec) { s.Forwards[1].HostPort = 70000 }},
		{"host port twice", func(s *Spec) { s.Forwards[0].HostPort = 8080 }},
		{"guest port twice", func(s *Spec) { s.Forwards[1].GuestPort = 22 }},
		{"network mode", func(s *Spec) { s.Network.Mode = "macvtap" }},
		{"bridge in user mode", func(s *Spec) { s.Network.Bridge = "br0" }},
		{"bridge mode without bridge", func(s *Spec) { s.Network = Network{Mode: NetBridge}; s.Forwards = nil }},
		{"bridge name too long", func(s *Spec) { s.Network = Network{Mode: NetBridge, Bridge: strings.Repeat("b", 16)}; s.Forwards = nil }},
		{"bridge name escapes", func(s *Spec) { s.Network = Network{Mode: NetBridge, Bridge: "../br"}; s.Forwards = nil }},
		{"forwards in bridge mode", func(s *Spec) { s.Network = Network{Mode: NetBridge, Bridge: "br0"} }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := good()
			tt.edit(&s)
			if err := s.Validate(); !errors.Is(err, ErrInvalidSpec) {
				t.Errorf("Validate = %v, want ErrInvalidSpec", err)
			}
		})
	}
}
