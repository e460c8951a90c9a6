// Command ferry is Ferry's one binary: the server, the agent and the CLI.
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/ferrymigrate/ferry/api"
	"github.com/ferrymigrate/ferry/cli"
	"github.com/spf13/cobra"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	root := newRoot()
	if err := root.ExecuteContext(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "ferry:", describe(err))
		os.Exit(1)
	}
}

// describe turns an API error into a sentence with its status.
func describe(err error) string {
	var ae *api.Error
	if errors.As(err, &ae) {
		return fmt.Sprintf("%s (HTTP %d %s)", ae.Message, ae.Status, ae.Code)
	}
	return err.Error()
}

func newRoot() *cobra.Command {
	root := &cobra.Command{
		Use:           "ferry",
		Short:         "Ferry moves whole servers to a target you run, with continuous block replication",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.AddCommand(newServerCmd(), newAgentCmd(), newConnectorCmd(), newLoginCmd(), newServersCmd(), newTokensCmd(), newInstallTokensCmd(), newReplicationCmd(), newLaunchCmd(), newCutoverCmd(), newJobsCmd(),
		newGroupsCmd(cli.KindApplications, "Group servers into applications; see their health and progress"),
		newGroupsCmd(cli.KindWaves, "Group applications and servers into migration waves; see their health and progress"),
		newImportCmd(), newExportCmd(), newUsageCmd(), newStoreCmd(), newSnapshotsCmd(), newBenchCmd(), newDevCmd(), newVersionCmd())
	return root
}
