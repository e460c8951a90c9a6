// Package libguestfs converts a launched copy of a Linux guest so that it
// boots on the target, with libguestfs's guestfish (Debian:
// libguestfs-tools), never with hand-written disk surgery.
//
// [Converter.Convert] opens an instance's own writable disks (a
// copy-on-write overlay or an exported image: never a replica or snapshot)
// in one guestfish appliance and, for a Linux guest:
//   - rewrites /etc/fstab entries that name devices (/dev/sda1, /dev/vda2,
//     /dev/nvme0n1p1, …) to UUID=…, so a change of disk bus keeps mounts;
//   - removes stale persistent network rules
//     (/etc/udev/rules.d/70-persistent-net.rules);
//   - configures DHCP on the first NIC for netplan, systemd-networkd and
//     Debian's ifupdown, whichever the guest has;
//   - adds the virtio drivers to the initramfs and rebuilds it when the
//     guest has update-initramfs or dracut;
//   - writes an optional cloud-init NoCloud seed.
//
// Every step reports a [Change]: what it changed, or why it changed
// nothing, for the job log.
//
// Commands are run as argv (guestfish --remote), never as shell strings;
// guest paths are checked before use. On machines whose KVM cannot run the
// appliance, set LIBGUESTFS_BACKEND=direct and
// LIBGUESTFS_BACKEND_SETTINGS=force_tcg ([DefaultEnv]); a conversion then
// takes about 20 s. libguestfs needs a host kernel in /boot (Debian:
// linux-image-amd64) to build its appliance.
package libguestfs
