package qemu_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/ferrymigrate/ferry/internal/testimage"
	"github.com/ferrymigrate/ferry/launch"
	"github.com/ferrymigrate/ferry/launch/targettest"
	"github.com/ferrymigrate/ferry/postlaunch"
	"github.com/ferrymigrate/ferry/qemu"
)

// TestBridgeNetwork launches the test image in network mode bridge on a
// bridge the test creates on the host (and removes): the target's tap
// device is a port of the bridge while the instance runs, the guest
// (static 10.0.2.15) answers HTTP over the bridge from the host
// (10.0.2.2 on the bridge), and Terminate removes the tap.
func TestBridgeNetwork(t *testing.T) {
	if testing.Short() {
		t.Skip("boots a guest; skipped with -short")
	}
	requireQEMU(t)
	if os.Geteuid() != 0 {
		msg := "SKIP: creating a bridge and tap devices needs root"
		if os.Getenv("FERRY_TEST_REQUIRE_ALL") == "1" {
			t.Fatal(msg + "; FERRY_TEST_REQUIRE_ALL=1 forbids skips")
		}
		t.Skip(msg)
	}
	_, guestNet, _ := net.ParseCIDR(testimage.GuestAddr + "/24")
	routes, err := netlink.RouteGet(net.ParseIP(testimage.GuestAddr))
	if err == nil && len(routes) > 0 && routes[0].Gw == nil {
		t.Skipf("SKIP: the host already has a route to %s (%v): the test's bridge address would clash", guestNet, routes[0])
	}
	img := testimage.ForTest(t)

	var rnd [3]byte
	rand.Read(rnd[:])
	brName := "ferrybr" + hex.EncodeToString(rnd[:])
	br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: brName}}
	if err := netlink.LinkAdd(br); err != nil {
		t.Fatalf("create bridge %s: %v", brName, err)
	}
	t.Cleanup(func() {
		if err := netlink.LinkDel(br); err != nil {
			t.Errorf("remove bridge %s: %v", brName, err)
		}
	})
	addr, _ := netlink.ParseAddr("10.0.2.2/24")
	if err := netlink.AddrAdd(br, addr); err != nil {
		t.Fatal(err)
	}
	if err := netlink.LinkSetUp(br); err != nil {
		t.Fatal(err)
	}

	ctx := context.Background()
	dir := t.TempDir()
	tg := &qemu.Target{Dir: dir, ShutdownTimeout: 20 * time.Second}
	spec := launch.Spec{
		Name: "bridged", Disks: []launch.DiskSource{{NBDURL: targettest.ServeImage(t, img.Path)}},
		CPUs: 1, MemoryMiB: 256, Network: launch.Network{Mode: launch.NetBridge, Bridge: brName},
	}

	// A bridge that does not exist fails before anything is made.
	bad := spec
	bad.Network.Bridge = "nosuchbr0"
	if _, err := tg.Launch(ctx, bad); !errors.Is(err, launch.ErrUnavailable) || !strings.Contains(err.Error(), "nosuchbr0") {
		t.Fatalf("Launch on a missing bridge = %v, want ErrUnavailable naming it", err)
	}
	targettest.CheckNothingLeft(t, dir)

	start := time.Now()
	inst, err := tg.Launch(ctx, spec)
	if err != nil {
		t.Fatal(err)
	}
	defer tg.Terminate(ctx, inst.ID)
	if inst.Tap == "" || len(inst.Forwards) != 0 {
		t.Fatalf("bridged instance: tap %q, forwards %v", inst.Tap, inst.Forwards)
	}
	tap, err := netlink.LinkByName(inst.Tap)
	if err != nil {
		t.Fatalf("tap %s: %v", inst.Tap, err)
	}
	if tap.Attrs().MasterIndex != br.Attrs().Index {
		t.Fatalf("tap %s is not a port of %s (master index %d, bridge %d)", inst.Tap, brName, tap.Attrs().MasterIndex, br.Attrs().Index)
	}

	bctx, cancel := context.WithTimeout(ctx, 90*time.Second)
	defer cancel()
	if r := postlaunch.WaitConsole(bctx, inst.ConsoleLog, regexp.MustCompile(testimage.BootMarker)); r.Status != postlaunch.Success {
		console, _ := os.ReadFile(inst.ConsoleLog)
		t.Fatalf("boot marker: %s; console:\n%s", r.Output, console)
	}
	booted := time.Since(start)
	r := postlaunch.HTTPCheck(bctx, "http://"+testimage.GuestAddr+"/", http.StatusOK, strings.TrimSpace(testimage.HTTPBody))
	if r.Status != postlaunch.Success {
		t.Fatalf("HTTP to the guest over the bridge: %s", r.Output)
	}
	// The guest's address was learnt on the tap port: its frames crossed
	// the bridge.
	neigh, _ := netlink.NeighList(br.Attrs().Index, netlink.FAMILY_V4)
	var mac string
	for _, n := range neigh {
		if n.IP.Equal(net.ParseIP(testimage.GuestAddr)) {
			mac = n.HardwareAddr.String()
		}
	}
	if !strings.HasPrefix(mac, "52:54:00:") {
		t.Errorf("guest's MAC on the bridge %q, want one in QEMU's 52:54:00 range", mac)
	}
	t.Logf("bridged guest: boot marker %.1fs after Launch, HTTP over %s from the host, guest MAC %s", booted.Seconds(), brName, mac)

	if err := tg.Terminate(ctx, inst.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := netlink.LinkByName(inst.Tap); err == nil {
		t.Errorf("tap %s outlived Terminate", inst.Tap)
	}
	if _, err := os.Stat(filepath.Join(dir, inst.ID+".json")); !os.IsNotExist(err) {
		t.Errorf("state file outlived Terminate: %v", err)
	}
	targettest.CheckNothingLeft(t, dir)
}
