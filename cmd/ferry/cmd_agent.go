package main

import (
	"errors"
	"fmt"
	"log/slog"
	"os"

	"github.com/ferrymigrate/ferry/agent"
	"github.com/spf13/cobra"
)

func newAgentCmd() *cobra.Command {
	var (
		o    agent.PairOptions
		once bool
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
			return agent.Run(ctx, o.StateDir, log)
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.ServerURL, "server", os.Getenv("FERRY_SERVER"), "control plane URL, https://HOST:8443 [FERRY_SERVER]")
	f.StringVar(&o.InstallToken, "install-token", os.Getenv("FERRY_INSTALL_TOKEN"), "install token for pairing [FERRY_INSTALL_TOKEN]")
	f.StringVar(&o.CAFingerprint, "ca-fingerprint", os.Getenv("FERRY_CA_FINGERPRINT"), "SHA-256 fingerprint of the server CA [FERRY_CA_FINGERPRINT]")
	f.StringVar(&o.StateDir, "state-dir", "/var/lib/ferry-agent", "state directory")
	f.StringSliceVar(&o.Devices, "disk", nil, "block device to replicate (repeatable; default all real disks)")
	f.StringVar(&o.MachineID, "machine-id", "", "override the host's machine id")
	f.BoolVar(&once, "once", false, "pair and check the data-plane connection, then exit")
	return cmd
}
