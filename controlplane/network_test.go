package controlplane

import (
	"strings"
	"testing"

	"github.com/ferrymigrate/ferry"
)

func TestCheckNetwork(t *testing.T) {
	for _, tc := range []struct {
		name string
		n    ferry.NetworkSettings
		want string // "" when valid
	}{
		{name: "default", n: ferry.NetworkSettings{}},
		{name: "user with forwards", n: ferry.NetworkSettings{Mode: ferry.NetworkUser, Forwards: []ferry.PortForward{{GuestPort: 22}, {HostPort: 8080, GuestPort: 80}}}},
		{name: "bridge", n: ferry.NetworkSettings{Mode: ferry.NetworkBridge, Bridge: "br0"}},
		{name: "unknown mode", n: ferry.NetworkSettings{Mode: "macvtap"}, want: "network.mode"},
		{name: "bridge without name", n: ferry.NetworkSettings{Mode: ferry.NetworkBridge}, want: "network.bridge"},
		{name: "bridge name too long", n: ferry.NetworkSettings{Mode: ferry.NetworkBridge, Bridge: strings.Repeat("b", 16)}, want: "network.bridge"},
		{name: "bridge name escapes", n: ferry.NetworkSettings{Mode: ferry.NetworkBridge, Bridge: "../x"}, want: "network.bridge"},
		{name: "bridge in user mode", n: ferry.NetworkSettings{Bridge: "br0"}, want: "for mode bridge only"},
		{name: "forwards in bridge mode", n: ferry.NetworkSettings{Mode: ferry.NetworkBridge, Bridge: "br0", Forwards: []ferry.PortForward{{GuestPort: 22}}}, want: "for mode user only"},
		{name: "guest port 0", n: ferry.NetworkSettings{Forwards: []ferry.PortForward{{GuestPort: 0}}}, want: "forwards[0]"},
		{name: "host port out of range", n: ferry.NetworkSettings{Forwards: []ferry.PortForward{{GuestPort: 22, HostPort: 70000}}}, want: "forwards[0]"},
		{name: "guest port twice", n: ferry.NetworkSettings{Forwards: []ferry.PortForward{{GuestPort: 22}, {GuestPort: 22}}}, want: "forwarded twice"},
		{name: "host port twice", n: ferry.NetworkSettings{Forwards: []ferry.PortForward{{GuestPort: 22, HostPort: 2222}, {GuestPort: 23, HostPort: 2222}}}, want: "forwarded twice"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := checkNetwork(&tc.n)
			if tc.want == "" {
				if err != nil {
					t.Fatalf("checkNetwork = %v, want nil", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("checkNetwork = %v, want an error containing %q", err, tc.want)
			}
		})
	}
}
