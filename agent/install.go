package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// UnitPath is where Install writes the agent's systemd unit.
const UnitPath = "/etc/systemd/system/ferry-agent.service"

// UnitFile returns the systemd unit that runs the agent binary bin with
// args (already paired, so no token is needed) at low CPU and IO
// priority, restarting it after any failure.
func UnitFile(bin string, args []string) string {
	quoted := make([]string, 0, len(args)+1)
	for _, a := range append([]string{bin}, args...) {
		if strings.ContainsAny(a, " \t\"\\") {
			a = `"` + strings.NewReplacer(`\`, `\\`, `"`, `\"`).Replace(a) + `"`
		}
		quoted = append(quoted, a)
	}
	return `[Unit]
Description=Ferry replication agent
Documentation=https://github.com/ferrymigrate/ferry
After=network-online.target
Wants=network-online.target

[Service]
Type=simple
ExecStart=` + strings.Join(quoted, " ") + `
Restart=always
RestartSec=5
Nice=10
IOSchedulingClass=idle
CPUSchedulingPolicy=batch
MemoryMax=256M

[Install]
WantedBy=multi-user.target
`
}

// systemdRunning reports whether systemd is the init system.
func systemdRunning() bool {
	_, err := os.Stat("/run/systemd/system")
	return err == nil
}

// Install writes the unit to unitPath and, when systemd is running,
// enables and starts it; otherwise it says so on out and leaves the file.
func Install(ctx context.Context, unitPath, bin string, args []string, out io.Writer) error {
	if err := os.MkdirAll(filepath.Dir(unitPath), 0o755); err != nil {
		return fmt.Errorf("install: %w", err)
	}
	if err := os.WriteFile(unitPath, []byte(UnitFile(bin, args)), 0o644); err != nil {
		return fmt.Errorf("install: write unit: %w", err)
	}
	fmt.Fprintf(out, "Wrote %s\n", unitPath)
	if !systemdRunning() {
		fmt.Fprintln(out, "systemd is not running here: the unit was not enabled. Start the agent another way, or run 'systemctl enable --now ferry-agent' once systemd runs.")
		return nil
	}
	for _, args := range [][]string{{"daemon-reload"}, {"enable", "--now", "ferry-agent.service"}} {
		if b, err := exec.CommandContext(ctx, "systemctl", args...).CombinedOutput(); err != nil {
			return fmt.Errorf("install: systemctl %s: %w: %s", strings.Join(args, " "), err, b)
		}
	}
	fmt.Fprintln(out, "Enabled and started ferry-agent.service")
	return nil
}

// Uninstall stops and disables the unit when systemd is running and
// removes the unit file.
func Uninstall(ctx context.Context, unitPath string, out io.Writer) error {
	if systemdRunning() {
		if b, err := exec.CommandContext(ctx, "systemctl", "disable", "--now", "ferry-agent.service").CombinedOutput(); err != nil {
			fmt.Fprintf(out, "systemctl disable: %v: %s\n", err, b)
		}
	} else {
		fmt.Fprintln(out, "systemd is not running here: skipping systemctl disable.")
	}
	if err := os.Remove(unitPath); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("uninstall: %w", err)
	}
	if systemdRunning() {
		_ = exec.CommandContext(ctx, "systemctl", "daemon-reload").Run()
	}
	fmt.Fprintf(out, "Removed %s\n", unitPath)
	return nil
}
