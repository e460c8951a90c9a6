package main

import (
	"fmt"
	"strconv"

	"github.com/ferrymigrate/ferry/cli"
	"github.com/spf13/cobra"
)

// actionCmd is a verb that posts one server action.
func actionCmd(use, short, action string) *cobra.Command {
	var out string
	cmd := &cobra.Command{
		Use: use + " SERVER_ID", Short: short, Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return cli.RunServerAction(cmd.Context(), args[0], action, out, cmd.OutOrStdout())
		},
	}
	outputFlag(cmd, &out)
	return cmd
}

func newReplicationCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "replication", Short: "Control a server's data replication (operator)"}
	cmd.AddCommand(
		actionCmd("pause", "Pause replication; the agent keeps tracking changes", "replication/pause"),
		actionCmd("resume", "Resume paused replication", "replication/resume"),
		actionCmd("stop", "Stop replication", "replication/stop"),
		actionCmd("start", "Start stopped replication", "replication/start"),
		actionCmd("retry", "Clear the replication error and retry", "replication/retry"),
		&cobra.Command{
			Use: "throttle SERVER_ID BYTES_PER_SEC", Short: "Limit replication bandwidth (0: no limit); applied live",
			Args: cobra.ExactArgs(2),
			RunE: func(cmd *cobra.Command, args []string) error {
				n, err := strconv.ParseInt(args[1], 10, 64)
				if err != nil {
					return fmt.Errorf("BYTES_PER_SEC %q: want a whole number", args[1])
				}
				return cli.RunThrottle(cmd.Context(), args[0], n, cmd.OutOrStdout())
			},
		},
	)
	return cmd
}
