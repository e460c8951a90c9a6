package main

import (
	"github.com/ferrymigrate/ferry/cli"
	"github.com/spf13/cobra"
)

func launchVerb(kind, short string, withOptions bool) *cobra.Command {
	o := cli.LaunchOptions{Kind: kind}
	cmd := &cobra.Command{
		Use: kind + " SERVER_ID...", Short: short, Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			o.ServerIDs = args
			return cli.RunLaunch(cmd.Context(), o, cmd.OutOrStdout())
		},
	}
	if withOptions {
		cmd.Flags().BoolVar(&o.UseLatest, "use-latest-snapshot", false, "launch from the newest existing snapshot instead of taking one")
		cmd.Flags().StringVar(&o.Template, "template", "", "launch with this template's launch settings instead of the server's")
		cmd.Flags().StringArrayVar(&o.Snapshots, "snapshot", nil, "launch from this existing snapshot: `ID` (a one-disk server) or DISK=ID, once per disk (ferry snapshots list --server SERVER_ID shows them)")
		cmd.Flags().StringVar(&o.At, "at", "", "launch from each disk's newest snapshot taken at or before `TIME` (RFC 3339, or a duration ago like 15m)")
	}
	if kind == "cutover" {
		cmd.Flags().BoolVar(&o.SkipDrain, "skip-drain", false, "do not wait for the backlog to drain (operator override)")
	}
	cmd.Flags().BoolVar(&o.Wait, "wait", true, "follow the job until it ends")
	outputFlag(cmd, &o.Output)
	return cmd
}

func newLaunchCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "launch", Short: "Launch test or cutover instances, or terminate them (operator)"}
	cmd.AddCommand(
		launchVerb("test", "Test-launch servers from a snapshot taken now; replication never pauses", true),
		launchVerb("cutover", "Cut servers over: drain the backlog, snapshot, launch", true),
		launchVerb("terminate", "Terminate servers' launched instances", false),
	)
	return cmd
}

func newCutoverCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "cutover", Short: "Finish cutovers"}
	cmd.AddCommand(actionCmd("finalize", "Finalize a cutover: CUTOVER, replication stops, the instance is kept", "finalize"))
	return cmd
}

func newJobsCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "jobs", Short: "List, show and follow launch and terminate jobs"}
	var listOut, server string
	list := &cobra.Command{
		Use: "list", Short: "List jobs, newest first", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return cli.RunJobsList(cmd.Context(), server, listOut, cmd.OutOrStdout())
		},
	}
	list.Flags().StringVar(&server, "server", "", "only jobs of this server")
	outputFlag(list, &listOut)
	var showOut string
	show := &cobra.Command{
		Use: "show JOB_ID", Short: "Show a job and its log", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return cli.RunJobsShow(cmd.Context(), args[0], showOut, cmd.OutOrStdout())
		},
	}
	outputFlag(show, &showOut)
	var waitOut string
	wait := &cobra.Command{
		Use: "wait JOB_ID", Short: "Follow a job's log until it ends; fails if a launch failed", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return cli.RunJobsWait(cmd.Context(), args[0], waitOut, cmd.OutOrStdout())
		},
	}
	outputFlag(wait, &waitOut)
	cmd.AddCommand(list, show, wait)
	return cmd
}
