package qemu

import (
	"crypto/rand"
	"errors"
	"fmt"
	"os"

	"github.com/vishvananda/netlink"

	"github.com/ferrymigrate/ferry/launch"
)

// tapName names the tap device of instance id: "ferry" and the id's
// random suffix, within IFNAMSIZ (15 bytes).
func tapName(id string) string {
	suffix := id
	if len(suffix) > 8 {
		suffix = suffix[len(suffix)-8:]
	}
	return "ferry" + suffix
}

// createTap makes a persistent tap device attached to bridge and up, for
// QEMU to open by name (-netdev tap,ifname=…). Persistent, so that it is
// there before QEMU starts and its removal is ours (deleteTap), not left
// to a script. Needs CAP_NET_ADMIN. Errors wrap launch.ErrUnavailable when
// the bridge is missing or not a bridge, or the process may not create
// devices.
func createTap(name, bridge string) error {
	br, err := netlink.LinkByName(bridge)
	if err != nil {
		return fmt.Errorf("%w: bridge %s: %v (create it, or use network mode user)", launch.ErrUnavailable, bridge, err)
	}
	if br.Type() != "bridge" {
		return fmt.Errorf("%w: %s is a %s device, not a bridge", launch.ErrUnavailable, bridge, br.Type())
	}
	tap := &netlink.Tuntap{
		LinkAttrs: netlink.LinkAttrs{Name: name, MasterIndex: br.Attrs().Index},
		Mode:      netlink.TUNTAP_MODE_TAP,
	}
	if err := netlink.LinkAdd(tap); err != nil {
		if errors.Is(err, os.ErrPermission) {
			return fmt.Errorf("%w: create tap %s on bridge %s: %v (bridged instances need CAP_NET_ADMIN: run the server as root)", launch.ErrUnavailable, name, bridge, err)
		}
		return fmt.Errorf("create tap %s on bridge %s: %w", name, bridge, err)
	}
	if err := netlink.LinkSetUp(tap); err != nil {
		deleteTap(name)
		return fmt.Errorf("set tap %s up: %w", name, err)
	}
	return nil
}

// deleteTap removes a tap device; one that is gone is not an error.
func deleteTap(name string) error {
	l, err := netlink.LinkByName(name)
	var nf netlink.LinkNotFoundError
	if errors.As(err, &nf) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("find tap %s: %w", name, err)
	}
	if err := netlink.LinkDel(l); err != nil {
		return fmt.Errorf("delete tap %s: %w", name, err)
	}
	return nil
}

// randomMAC returns a locally administered unicast MAC address in QEMU's
// 52:54:00 range, so that instances on one bridge do not share QEMU's
// default address.
func randomMAC() string {
	var b [3]byte
	rand.Read(b[:])
	return fmt.Sprintf("52:54:00:%02x:%02x:%02x", b[0], b[1], b[2])
}
