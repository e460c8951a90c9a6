package main

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/ferrymigrate/ferry/agent"
	"github.com/ferrymigrate/ferry/ebpf"
	"github.com/ferrymigrate/ferry/track"
	"github.com/spf13/cobra"
)

func newAgentCmd() *cobra.Command {
	var (
		o       agent.PairOptions
		once    bool
		tracker string
		codec   string
	)
	cmd := &cobra.Command{
		Use:   "agent",
		Short: "Run the agent on a source server: pair, then replicate",
		Long: `Run Ferry's agent on a source server.

On first run it pairs with the server using an install token; the CA fingerprint
pins the server on that first contact. The key and certificate are kept in the
state directory (0600). Later runs reuse them and need no token.`,
		Example: "  ferry agent --server https://ferry.example:8443 --install-token fyi_… --ca-fingerprint 3f2a…",
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			log := slog.New(slog.NewTextHandler(os.Stderr, nil))
			st, err := agent.LoadState(o.StateDir)
			if o.InstallToken != "" || errors.Is(err, os.ErrNotExist) {
				if st, err = agent.Pair(ctx, o); err != nil {
					return err
				}
				fmt.Fprintf(cmd.OutOrStdout(), "Paired as source server %s; data plane %s\n", st.SourceServerID, st.DataPlaneAddress)
			} else if err != nil {
				return err
			}
			if once {
				c, err := agent.Connect(ctx, o.StateDir)
				if err != nil {
					return err
				}
				c.Close()
				fmt.Fprintf(cmd.OutOrStdout(), "Data plane %s accepted this agent\n", st.DataPlaneAddress)
				return nil
			}
			agent.LimitMemory()
			if !agent.UnderSystemd() {
				// The systemd unit sets these itself.
				if err := agent.LowerPriority(); err != nil {
					log.Warn("lower the agent's CPU and IO priority", "err", err)
				}
			}
			syncCodec, err := agent.ParseSyncCodec(codec)
			if err != nil {
				return err
			}
			devices, err := agentDevices(o.Devices)
			if err != nil {
				return err
			}
			tr, err := openTracker(tracker, devices, log)
			if err != nil {
				return err
			}
			if tr != nil {
				defer tr.Close()
			}
			err = agent.Replicate(ctx, agent.Options{StateDir: o.StateDir, Devices: devices, Tracker: tr, Logger: log, SyncCodec: syncCodec})
			if errors.Is(err, agent.ErrDisconnected) {
				if _, serr := os.Stat(o.StateDir); serr == nil {
					return fmt.Errorf("this agent was disconnected from the service, but its state directory %s could not be removed (%w): remove it by hand, then run 'ferry agent uninstall'", o.StateDir, err)
				}
				fmt.Fprintln(cmd.OutOrStdout(), "This agent was disconnected from the service; its state was removed. Run 'ferry agent uninstall' to remove the service.")
				return nil
			}
			return err
		},
	}
	cmd.AddCommand(newAgentInstallCmd(), newAgentUninstallCmd())
	f := cmd.Flags()
	f.StringVar(&o.ServerURL, "server", os.Getenv("FERRY_SERVER"), "control plane URL, https://HOST:8443 [FERRY_SERVER]")
	f.StringVar(&o.InstallToken, "install-token", os.Getenv("FERRY_INSTALL_TOKEN"), "install token for pairing [FERRY_INSTALL_TOKEN]")
	f.StringVar(&o.CAFingerprint, "ca-fingerprint", os.Getenv("FERRY_CA_FINGERPRINT"), "SHA-256 fingerprint of the server CA [FERRY_CA_FINGERPRINT]")
	f.StringVar(&o.StateDir, "state-dir", "/var/lib/ferry-agent", "state directory")
	f.StringSliceVar(&o.Devices, "disk", nil, "block device to replicate (repeatable; default all real disks)")
	f.StringVar(&o.MachineID, "machine-id", "", "override the host's machine id")
	f.BoolVar(&once, "once", false, "pair and check the data-plane connection, then exit")
	f.StringVar(&tracker, "tracker", "auto", "change tracking: ebpf, rescan or auto")
	f.StringVar(&codec, "sync-compression", "auto", syncCompressionUsage)
	return cmd
}

// agentDevices turns --disk values (names or paths) into device paths;
// none means every real disk.
func agentDevices(names []string) ([]string, error) {
	if len(names) == 0 {
		disks, err := agent.Root("/").Disks(nil)
		if err != nil {
			return nil, err
		}
		for _, d := range disks {
			names = append(names, d.Name)
		}
	}
	if len(names) == 0 {
		return nil, errors.New("no disks to replicate were found\nTry: ferry agent --disk /dev/sdX")
	}
	out := make([]string, 0, len(names))
	for _, n := range names {
		if !strings.HasPrefix(n, "/") {
			n = filepath.Join("/dev", n)
		}
		out = append(out, n)
	}
	return out, nil
}

// rescanInterval is how often the rescan tracker compares block hashes.
const rescanInterval = 30 * time.Second

// openTracker starts the change tracker --tracker names: "ebpf", "rescan",
// or "auto" (eBPF, falling back to rescan where it cannot load).
func openTracker(kind string, devices []string, log *slog.Logger) (track.Tracker, error) {
	var (
		tr  track.Tracker
		err error
	)
	switch kind {
	case "auto":
		tr, err = ebpf.Auto(devices, rescanInterval)
	case "ebpf":
		tr, err = ebpf.New(devices)
	case "rescan":
		tr, err = track.NewRescan(devices, rescanInterval)
	default:
		return nil, fmt.Errorf("--tracker %q: want ebpf, rescan or auto", kind)
	}
	if err != nil {
		return nil, fmt.Errorf("start %s change tracker: %w\nTry: --tracker rescan", kind, err)
	}
	log.Info("change tracking", "tracker", tr.Kind())
	return tr, nil
}

// syncCompressionUsage describes --sync-compression.
const syncCompressionUsage = "initial-sync compression: auto (s2 where the server decodes it), s2, or zstd (fewer bytes, more CPU: for links slower than ~250 MB/s)"

func newAgentInstallCmd() *cobra.Command {
	var (
		unit, stateDir, codec string
		disks                 []string
	)
	cmd := &cobra.Command{
		Use:   "install",
		Short: "Install the agent as a systemd service (after pairing)",
		Long: `Write a systemd unit that runs 'ferry agent' with this binary and enable it.
Pair first (run 'ferry agent --once' with an install token); the service
reuses the state directory and needs no token. Where systemd is not
running the unit file is written and enabling it is skipped.`,
		RunE: func(cmd *cobra.Command, _ []string) error {
			bin, err := os.Executable()
			if err != nil {
				return fmt.Errorf("find this binary: %w", err)
			}
			if _, err := agent.LoadState(stateDir); err != nil {
				return fmt.Errorf("%w\nTry: ferry agent --once --state-dir %s --server … --install-token … --ca-fingerprint …", err, stateDir)
			}
			if _, err := agent.ParseSyncCodec(codec); err != nil {
				return err
			}
			args := []string{"agent", "--state-dir", stateDir}
			for _, d := range disks {
				args = append(args, "--disk", d)
			}
			if codec != "auto" {
				args = append(args, "--sync-compression", codec)
			}
			return agent.Install(cmd.Context(), unit, bin, args, cmd.OutOrStdout())
		},
	}
	cmd.Flags().StringVar(&unit, "unit", agent.UnitPath, "unit file to write")
	cmd.Flags().StringVar(&stateDir, "state-dir", "/var/lib/ferry-agent", "state directory")
	cmd.Flags().StringSliceVar(&disks, "disk", nil, "block device to replicate (repeatable; default all real disks)")
	cmd.Flags().StringVar(&codec, "sync-compression", "auto", syncCompressionUsage)
	return cmd
}

func newAgentUninstallCmd() *cobra.Command {
	var unit string
	cmd := &cobra.Command{
		Use:   "uninstall",
		Short: "Stop, disable and remove the agent's systemd service",
		RunE: func(cmd *cobra.Command, _ []string) error {
			return agent.Uninstall(cmd.Context(), unit, cmd.OutOrStdout())
		},
	}
	cmd.Flags().StringVar(&unit, "unit", agent.UnitPath, "unit file to remove")
	return cmd
}
