// Command ferry is Ferry's one binary: the server, the agent and the CLI.
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"runtime/pprof"
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
	var cpuProfile string
	var stopProfile func()
	root := &cobra.Command{
		Use:           "ferry",
		Short:         "Ferry moves whole servers to a target you run, with continuous block replication",
		SilenceUsage:  true,
		SilenceErrors: true,
		PersistentPreRunE: func(*cobra.Command, []string) error {
			if cpuProfile == "" {
				return nil
			}
			f, err := os.Create(cpuProfile)
			if err != nil {
				return fmt.Errorf("cpu profile: %w", err)
			}
			if err := pprof.StartCPUProfile(f); err != nil {
				f.Close()
				return fmt.Errorf("cpu profile: %w", err)
			}
			stopProfile = func() { pprof.StopCPUProfile(); f.Close() }
			return nil
		},
		PersistentPostRun: func(*cobra.Command, []string) {
			if stopProfile != nil {
				stopProfile()
			}
		},
	}
	// For measuring any command (server, agent, bench) with go tool pprof.
	root.PersistentFlags().StringVar(&cpuProfile, "cpuprofile", "", "write a CPU profile of this command to `FILE`")
	_ = root.PersistentFlags().MarkHidden("cpuprofile")
	root.AddCommand(newServerCmd(), newAgentCmd(), newConnectorCmd(), newLoginCmd(), newServersCmd(), newTokensCmd(), newInstallTokensCmd(), newReplicationCmd(), newLaunchCmd(), newCutoverCmd(), newJobsCmd(),
		newGroupsCmd(cli.KindApplications, "Group servers into applications; see their health and progress"),
		newGroupsCmd(cli.KindWaves, "Group applications and servers into migration waves; see their health and progress"),
		newImportCmd(), newExportCmd(), newUsageCmd(), newStoreCmd(), newSnapshotsCmd(), newBenchCmd(), newDevCmd(), newVersionCmd())
	return root
}
