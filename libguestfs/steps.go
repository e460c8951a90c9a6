package libguestfs

import (
	"context"
	"fmt"
	"regexp"
	"strconv"
	"strings"
)

// Guest files the steps change.
const (
	fstabPath          = "/etc/fstab"
	persistentNetRules = "/etc/udev/rules.d/70-persistent-net.rules"
	netplanFile        = "/etc/netplan/90-ferry-dhcp.yaml"
	networkdFile       = "/etc/systemd/network/90-ferry-dhcp.network"
	ifupdownFile       = "/etc/network/interfaces.d/90-ferry-dhcp"
	initramfsModules   = "/etc/initramfs-tools/modules"
	dracutConf         = "/etc/dracut.conf.d/90-ferry-virtio.conf"
	cloudSeedDir       = "/var/lib/cloud/seed/nocloud"
)

// virtioModules are the drivers a guest needs in its initramfs to find its
// root disk and network on QEMU/KVM.
var virtioModules = []string{"virtio_pci", "virtio_blk", "virtio_scsi", "virtio_net"}

var (
	scsiLikeRE = regexp.MustCompile(`^/dev/(?:[shv]|xv)d([a-z]+)([0-9]*)$`)
	nvmeRE     = regexp.MustCompile(`^/dev/nvme([0-9]+)n1(?:p([0-9]+))?$`)
)

// diskIndex returns the index of a guest disk named by letters ("a" → 0,
// "aa" → 26).
func diskIndex(letters string) int {
	n := 0
	for _, r := range letters {
		n = n*26 + int(r-'a'+1)
	}
	return n - 1
}

// applianceDevice maps a guest device name (/dev/vda2, /dev/sdb,
// /dev/nvme0n1p1) to the appliance's device for the same disk and
// partition, assuming the guest names disks in the order they are
// attached. ok is false for names it cannot map.
func (s *session) applianceDevice(guest string) (string, bool) {
	var idx int
	var part string
	if m := scsiLikeRE.FindStringSubmatch(guest); m != nil {
		idx, part = diskIndex(m[1]), m[2]
	} else if m := nvmeRE.FindStringSubmatch(guest); m != nil {
		idx, _ = strconv.Atoi(m[1])
		part = m[2]
	} else {
		return "", false
	}
	if idx < 0 || idx >= len(s.disks) {
		return "", false
	}
	return s.disks[idx] + part, true
}

// rewriteFstab returns fstab with each device-named entry replaced by
// UUID=…, as uuid finds them, and a description of each replacement.
func rewriteFstab(fstab string, uuid func(dev string) string) (string, []string) {
	var out strings.Builder
	var done []string
	for _, line := range strings.SplitAfter(fstab, "\n") {
		fields := strings.Fields(line)
		if len(fields) >= 2 && !strings.HasPrefix(fields[0], "#") && strings.HasPrefix(fields[0], "/dev/") {
			if u := uuid(fields[0]); u != "" {
				i := strings.Index(line, fields[0])
				line = line[:i] + "UUID=" + u + line[i+len(fields[0]):]
				done = append(done, fmt.Sprintf("%s → UUID=%s (%s)", fields[0], u, fields[1]))
			}
		}
		out.WriteString(line)
	}
	return out.String(), done
}

// fstab rewrites device-named fstab entries to UUIDs.
func (s *session) fstab(ctx context.Context) (Change, error) {
	ch := Change{Step: "fstab"}
	ok, err := s.test(ctx, "is-file", fstabPath)
	if err != nil {
		return ch, err
	}
	if !ok {
		ch.Detail = "the guest has no " + fstabPath
		return ch, nil
	}
	old, err := s.read(ctx, fstabPath)
	if err != nil {
		return ch, err
	}
	var lookupErr error
	updated, done := rewriteFstab(old, func(dev string) string {
		adev, ok := s.applianceDevice(dev)
		if !ok || lookupErr != nil {
			return ""
		}
		u, err := s.do(ctx, "vfs-uuid", adev)
		if err != nil {
			lookupErr = err
			return ""
		}
		return strings.TrimSpace(u)
	})
	if lookupErr != nil {
		return ch, lookupErr
	}
	if len(done) == 0 {
		ch.Detail = "every entry already names a UUID, label or non-disk device"
		return ch, nil
	}
	if err := s.write(ctx, fstabPath, updated); err != nil {
		return ch, err
	}
	ch.Applied, ch.Detail = true, "mounted by UUID: "+strings.Join(done, "; ")
	return ch, nil
}

// persistentNet removes udev's stale persistent network rules, which pin
// interface names to the source's MAC addresses.
func (s *session) persistentNet(ctx context.Context) (Change, error) {
	ch := Change{Step: "persistent-net"}
	ok, err := s.test(ctx, "is-file", persistentNetRules)
	if err != nil {
		return ch, err
	}
	if !ok {
		ch.Detail = "no " + persistentNetRules
		return ch, nil
	}
	if _, err := s.do(ctx, "rm", persistentNetRules); err != nil {
		return ch, err
	}
	ch.Applied, ch.Detail = true, "removed "+persistentNetRules
	return ch, nil
}

// ifupdownNames are the names the first NIC gets on QEMU/KVM guests:
// classic, and systemd's predictable names for the PCI slots QEMU uses.
var ifupdownNames = []string{"eth0", "ens3", "ens4", "ens5", "enp0s3", "enp0s4", "enp0s5", "enp1s0"}

// network configures DHCP on the first NIC with each network configuration
// system the guest has.
func (s *session) network(ctx context.Context) (Change, error) {
	ch := Change{Step: "network"}
	var done []string
	netplan, err := s.anyExists(ctx, "/usr/sbin/netplan", "/usr/bin/netplan")
	if err != nil {
		return ch, err
	}
	if netplan != "" {
		const yaml = "# Written by Ferry: DHCP on the first NIC of the migrated instance.\n" +
			"network:\n  version: 2\n  ethernets:\n    ferry-nic0:\n      match:\n        name: \"e*\"\n      dhcp4: true\n"
		if err := s.ensureDir(ctx, "/etc/netplan"); err != nil {
			return ch, err
		}
		if err := s.write(ctx, netplanFile, yaml); err != nil {
			return ch, err
		}
		done = append(done, "netplan: "+netplanFile)
	}
	networkd, err := s.anyExists(ctx, "/usr/lib/systemd/systemd-networkd", "/lib/systemd/systemd-networkd")
	if err != nil {
		return ch, err
	}
	if networkd != "" {
		const unit = "# Written by Ferry: DHCP on the first NIC of the migrated instance.\n" +
			"[Match]\nName=en* eth*\n\n[Network]\nDHCP=yes\n"
		if err := s.ensureDir(ctx, "/etc/systemd/network"); err != nil {
			return ch, err
		}
		if err := s.write(ctx, networkdFile, unit); err != nil {
			return ch, err
		}
		done = append(done, "systemd-networkd: "+networkdFile)
	}
	ifup, err := s.anyExists(ctx, "/sbin/ifup", "/usr/sbin/ifup")
	if err != nil {
		return ch, err
	}
	hasInterfaces, err := s.test(ctx, "is-file", "/etc/network/interfaces")
	if err != nil {
		return ch, err
	}
	if ifup != "" && hasInterfaces {
		d, err := s.ifupdown(ctx)
		if err != nil {
			return ch, err
		}
		done = append(done, d)
	}
	if len(done) == 0 {
		ch.Detail = "the guest has no netplan, systemd-networkd or ifupdown (/etc/network/interfaces): DHCP not configured"
		return ch, nil
	}
	ch.Applied, ch.Detail = true, "DHCP on the first NIC: "+strings.Join(done, "; ")
	return ch, nil
}

// ifupdown adds DHCP stanzas for the first NIC's likely names, except those
// the guest's interfaces file already configures.
func (s *session) ifupdown(ctx context.Context) (string, error) {
	ifaces, err := s.read(ctx, "/etc/network/interfaces")
	if err != nil {
		return "", err
	}
	declared := map[string]bool{}
	for _, l := range strings.Split(ifaces, "\n") {
		if f := strings.Fields(l); len(f) >= 2 && f[0] == "iface" {
			declared[f[1]] = true
		}
	}
	var stanzas strings.Builder
	stanzas.WriteString("# Written by Ferry: DHCP on the first NIC of the migrated instance.\n")
	var names, kept []string
	for _, n := range ifupdownNames {
		if declared[n] {
			kept = append(kept, n)
			continue
		}
		fmt.Fprintf(&stanzas, "allow-hotplug %s\niface %s inet dhcp\n", n, n)
		names = append(names, n)
	}
	target := ifupdownFile
	content := stanzas.String()
	if !strings.Contains(ifaces, "source /etc/network/interfaces.d/*") && !strings.Contains(ifaces, "source-directory /etc/network/interfaces.d") {
		target = "/etc/network/interfaces"
		content = strings.TrimRight(ifaces, "\n") + "\n\n" + content
	} else if err := s.ensureDir(ctx, "/etc/network/interfaces.d"); err != nil {
		return "", err
	}
	if err := s.write(ctx, target, content); err != nil {
		return "", err
	}
	d := fmt.Sprintf("ifupdown: %s (%s)", target, strings.Join(names, ", "))
	if len(kept) > 0 {
		d += fmt.Sprintf("; left the guest's own configuration of %s alone", strings.Join(kept, ", "))
	}
	return d, nil
}

// ensureDir creates a guest directory and its parents.
func (s *session) ensureDir(ctx context.Context, dir string) error {
	dir, err := guestPath(dir)
	if err != nil {
		return err
	}
	_, err = s.do(ctx, "mkdir-p", dir)
	return err
}

// initramfs makes sure the virtio drivers are in the initramfs and
// rebuilds it, with the guest's own tool.
func (s *session) initramfs(ctx context.Context) (Change, error) {
	ch := Change{Step: "initramfs"}
	if tool, err := s.anyExists(ctx, "/usr/sbin/update-initramfs", "/sbin/update-initramfs"); err != nil {
		return ch, err
	} else if tool != "" {
		var mods string
		if ok, err := s.test(ctx, "is-file", initramfsModules); err != nil {
			return ch, err
		} else if ok {
			if mods, err = s.read(ctx, initramfsModules); err != nil {
				return ch, err
			}
		}
		have := map[string]bool{}
		for _, l := range strings.Split(mods, "\n") {
			if f := strings.Fields(l); len(f) > 0 {
				have[f[0]] = true
			}
		}
		var added []string
		for _, m := range virtioModules {
			if !have[m] {
				added = append(added, m)
			}
		}
		if len(added) > 0 {
			if mods != "" && !strings.HasSuffix(mods, "\n") {
				mods += "\n"
			}
			if err := s.write(ctx, initramfsModules, mods+strings.Join(added, "\n")+"\n"); err != nil {
				return ch, err
			}
		}
		if _, err := s.do(ctx, "command", "update-initramfs -u -k all"); err != nil {
			return ch, err
		}
		ch.Applied, ch.Detail = true, fmt.Sprintf("added %v to %s; rebuilt with update-initramfs -u -k all", added, initramfsModules)
		return ch, nil
	}
	if tool, err := s.anyExists(ctx, "/usr/bin/dracut", "/usr/sbin/dracut", "/sbin/dracut"); err != nil {
		return ch, err
	} else if tool != "" {
		if err := s.ensureDir(ctx, "/etc/dracut.conf.d"); err != nil {
			return ch, err
		}
		conf := "# Written by Ferry: virtio drivers for QEMU/KVM.\nadd_drivers+=\" " + strings.Join(virtioModules, " ") + " \"\n"
		if err := s.write(ctx, dracutConf, conf); err != nil {
			return ch, err
		}
		if _, err := s.do(ctx, "command", "dracut -f --regenerate-all"); err != nil {
			return ch, err
		}
		ch.Applied, ch.Detail = true, "wrote "+dracutConf+"; rebuilt with dracut -f --regenerate-all"
		return ch, nil
	}
	ch.Detail = "the guest has neither update-initramfs nor dracut: skipped (its initramfs, if any, is used as is)"
	return ch, nil
}

// cloudInit writes a NoCloud seed when asked and the guest has cloud-init.
func (s *session) cloudInit(ctx context.Context, seed *CloudInit) (Change, error) {
	ch := Change{Step: "cloud-init"}
	if seed == nil {
		ch.Detail = "no seed requested"
		return ch, nil
	}
	tool, err := s.anyExists(ctx, "/usr/bin/cloud-init", "/usr/local/bin/cloud-init")
	if err != nil {
		return ch, err
	}
	if tool == "" {
		ch.Detail = "the guest has no cloud-init: seed not written"
		return ch, nil
	}
	meta := seed.MetaData
	if meta == "" {
		meta = "instance-id: ferry-migrated\n"
	}
	if err := s.ensureDir(ctx, cloudSeedDir); err != nil {
		return ch, err
	}
	if err := s.write(ctx, cloudSeedDir+"/meta-data", meta); err != nil {
		return ch, err
	}
	if err := s.write(ctx, cloudSeedDir+"/user-data", seed.UserData); err != nil {
		return ch, err
	}
	ch.Applied, ch.Detail = true, "NoCloud seed written to "+cloudSeedDir
	return ch, nil
}
