package agent

import (
	"os"
	"path/filepath"
	"testing"
)

// fakeRoot builds a /sys/block and /etc tree: sda (real disk), sdb
// (removable), loop0 (virtual), vdb (zero size).
func fakeRoot(t *testing.T) Root {
	t.Helper()
	root := t.TempDir()
	write := func(p, s string) {
		t.Helper()
		full := filepath.Join(root, p)
		if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(full, []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	disk := func(name, parent, size, removable, lbs, model string) {
		dev := filepath.Join("sys/devices", parent, name)
		write(filepath.Join(dev, "size"), size+"\n")
		write(filepath.Join(dev, "removable"), removable+"\n")
		write(filepath.Join(dev, "queue/logical_block_size"), lbs+"\n")
		if model != "" {
			write(filepath.Join(dev, "device/model"), model+"\n")
		}
		if err := os.MkdirAll(filepath.Join(root, "sys/block"), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink(filepath.Join(root, dev), filepath.Join(root, "sys/block", name)); err != nil {
			t.Fatal(err)
		}
	}
	disk("sda", "pci0000:00/0000:00:05.0", "41943040", "0", "512", "QEMU HARDDISK")
	disk("sdb", "pci0000:00/usb1", "1000", "1", "512", "")
	disk("loop0", "virtual/block", "2048", "0", "512", "")
	disk("vdb", "pci0000:00/0000:00:06.0", "0", "0", "4096", "")
	write("etc/os-release", "NAME=Debian\nPRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\n")
	write("etc/machine-id", "0123456789abcdef\n")
	write("proc/meminfo", "MemTotal:        2048000 kB\nMemFree: 1 kB\n")
	write("proc/sys/kernel/osrelease", "6.1.0-test\n")
	return Root(root)
}

func TestDisks(t *testing.T) {
	r := fakeRoot(t)
	tests := []struct {
		name    string
		devices []string
		want    []string
		wantErr bool
	}{
		{"default skips removable, virtual and empty", nil, []string{"sda"}, false},
		{"named devices, any kind", []string{"/dev/loop0", "sdb"}, []string{"loop0", "sdb"}, false},
		{"unknown device", []string{"/dev/nope"}, nil, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := r.Disks(tt.devices)
			if (err != nil) != tt.wantErr {
				t.Fatalf("err = %v", err)
			}
			var names []string
			for _, d := range got {
				names = append(names, d.Name)
			}
			if len(names) != len(tt.want) {
				t.Fatalf("disks %v, want %v", names, tt.want)
			}
			for i := range names {
				if names[i] != tt.want[i] {
					t.Fatalf("disks %v, want %v", names, tt.want)
				}
			}
		})
	}
	d, _ := r.Disks([]string{"sda"})
	if d[0].SizeBytes != 41943040*512 || d[0].LogicalBlockSize != 512 || d[0].Model != "QEMU HARDDISK" {
		t.Fatalf("sda = %+v", d[0])
	}
}

func TestGatherFacts(t *testing.T) {
	r := fakeRoot(t)
	f, err := r.GatherFacts(nil, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	if f.MachineID != "0123456789abcdef" || f.OS != "Debian GNU/Linux 12 (bookworm)" || f.Kernel != "6.1.0-test" ||
		f.RAMBytes != 2048000*1024 || f.CPUs < 1 || len(f.Disks) != 1 {
		t.Fatalf("facts %+v", f)
	}
	// No machine id on the host: one is made and kept.
	os.Remove(filepath.Join(string(r), "etc/machine-id"))
	state := t.TempDir()
	f1, err := r.GatherFacts(nil, state)
	if err != nil {
		t.Fatal(err)
	}
	f2, _ := r.GatherFacts(nil, state)
	if f1.MachineID == "" || f1.MachineID != f2.MachineID {
		t.Fatalf("generated machine ids %q, %q", f1.MachineID, f2.MachineID)
	}
}
