package agent

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestUnitFile(t *testing.T) {
	u := UnitFile("/usr/local/bin/ferry", []string{"agent", "--state-dir", "/var/lib/ferry agent", "--disk", "/dev/sdb"})
	for _, want := range []string{
		"ExecStart=/usr/local/bin/ferry agent --state-dir \"/var/lib/ferry agent\" --disk /dev/sdb\n",
		"Restart=always\n", "Nice=10\n", "IOSchedulingClass=idle\n", "WantedBy=multi-user.target\n", "After=network-online.target\n",
	} {
		if !strings.Contains(u, want) {
			t.Errorf("unit lacks %q:\n%s", want, u)
		}
	}
}

func TestInstallUninstallFile(t *testing.T) {
	if systemdRunning() {
		t.Skip("systemd is running: installing would enable a real service")
	}
	p := filepath.Join(t.TempDir(), "ferry-agent.service")
	var out bytes.Buffer
	if err := Install(t.Context(), p, "/bin/ferry", []string{"agent"}, &out); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), "systemd is not running") {
		t.Fatalf("install did not say it skipped systemctl: %s", out.String())
	}
	if b, _ := os.ReadFile(p); !strings.Contains(string(b), "ExecStart=/bin/ferry agent") {
		t.Fatalf("unit %s", b)
	}
	if err := Uninstall(t.Context(), p, &out); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(p); !os.IsNotExist(err) {
		t.Fatalf("unit still there: %v", err)
	}
}
