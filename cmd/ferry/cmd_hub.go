package main

import (
	"fmt"
	"strings"

	"github.com/ferrymigrate/ferry/cli"
	"github.com/spf13/cobra"
)

// newGroupsCmd is `ferry applications` or `ferry waves`.
func newGroupsCmd(kind, short string) *cobra.Command {
	one := strings.TrimSuffix(kind, "s")
	cmd := &cobra.Command{Use: kind, Short: short}
	var listOut string
	list := &cobra.Command{
		Use: "list", Short: "List " + kind + " with their health and progress", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return cli.RunGroupsList(cmd.Context(), kind, listOut, cmd.OutOrStdout())
		},
	}
	outputFlag(list, &listOut)
	var co cli.GroupCreateOptions
	create := &cobra.Command{
		Use: "create", Short: "Create " + article(one) + " (operator)", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return cli.RunGroupsCreate(cmd.Context(), kind, co, cmd.OutOrStdout())
		},
	}
	create.Flags().StringVar(&co.Name, "name", "", "name (required, unique)")
	create.Flags().StringVar(&co.Description, "description", "", "description")
	create.Flags().StringSliceVar(&co.Tags, "tag", nil, "tag key=value (repeatable)")
	if kind == cli.KindApplications {
		create.Flags().StringVar(&co.Wave, "wave", "", "wave id to put it in")
	}
	outputFlag(create, &co.Output)
	_ = create.MarkFlagRequired("name")
	var showOut string
	show := &cobra.Command{
		Use: "show " + strings.ToUpper(one) + "_ID", Short: "Show " + article(one) + " with its health and progress", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return cli.RunGroupsShow(cmd.Context(), kind, args[0], showOut, cmd.OutOrStdout())
		},
	}
	outputFlag(show, &showOut)
	del := &cobra.Command{
		Use: "delete " + strings.ToUpper(one) + "_ID", Short: "Delete " + article(one) + " that has no members (operator)", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return cli.RunGroupsDelete(cmd.Context(), kind, args[0], cmd.OutOrStdout())
		},
	}
	cmd.AddCommand(list, create, show, del)
	for _, k := range []string{"test", "cutover"} {
		o := cli.GroupLaunchOptions{Kind: k}
		short := "Start a test launch of every server of " + article(one) + ", one job per server (operator)"
		if k == "cutover" {
			short = "Start a cutover of every server of " + article(one) + ", one job per server (operator)"
		}
		c := &cobra.Command{
			Use: k + " " + strings.ToUpper(one) + "_ID", Short: short, Args: cobra.ExactArgs(1),
			RunE: func(cmd *cobra.Command, args []string) error {
				return cli.RunGroupsLaunch(cmd.Context(), kind, args[0], o, cmd.OutOrStdout())
			},
		}
		c.Flags().BoolVar(&o.UseLatest, "use-latest-snapshot", false, "launch from the newest existing snapshot instead of taking one")
		c.Flags().BoolVar(&o.SkipDrain, "skip-drain", false, "do not wait for the backlog to drain (cutover: the operator's override)")
		outputFlag(c, &o.Output)
		cmd.AddCommand(c)
	}
	return cmd
}

func article(noun string) string {
	if strings.ContainsRune("aeiou", rune(noun[0])) {
		return "an " + noun
	}
	return "a " + noun
}

func newImportCmd() *cobra.Command {
	var o cli.ImportOptions
	cmd := &cobra.Command{
		Use:   "import FILE.csv",
		Short: "Set servers' application, wave, tags and settings from a CSV (all or nothing; operator)",
		Long: `Import reads an inventory CSV: a header row, then one row per server.
Columns: source_server_id or hostname, application, wave (names; created when
missing), tags (k=v;k=v), cpus, memory_mib, target, boot_mode,
launch_disposition, right_sizing, bandwidth_bytes_per_sec, replication_server.
Empty cells leave values as they are. Every row is checked first; if any has a
problem, each is listed by row and column and nothing is changed.
'ferry export' writes a file in the same format.`,
		Example: "  ferry export > inventory.csv\n  # edit it\n  ferry import --dry-run inventory.csv\n  ferry import inventory.csv",
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			o.File = args[0]
			o.Progress = cmd.ErrOrStderr()
			return cli.RunImport(cmd.Context(), o, cmd.OutOrStdout())
		},
	}
	cmd.Flags().BoolVar(&o.DryRun, "dry-run", false, "check the file; change nothing")
	outputFlag(cmd, &o.Output)
	var listOut string
	list := &cobra.Command{
		Use: "list", Short: "List recent imports (kept in memory: the last 100)", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return cli.RunImportsList(cmd.Context(), listOut, cmd.OutOrStdout())
		},
	}
	outputFlag(list, &listOut)
	cmd.AddCommand(list)
	return cmd
}

func newExportCmd() *cobra.Command {
	var format string
	cmd := &cobra.Command{
		Use:     "export",
		Short:   "Write every live server as an inventory CSV to standard output",
		Example: "  ferry export > inventory.csv",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if format != "csv" {
				return fmt.Errorf("export format %q: only csv", format)
			}
			return cli.RunExport(cmd.Context(), cli.InventoryExportOptions{Progress: cmd.ErrOrStderr()}, cmd.OutOrStdout())
		},
	}
	cmd.Flags().StringVarP(&format, "output", "o", "csv", "output format: csv")
	return cmd
}

func newUsageCmd() *cobra.Command {
	var o cli.UsageOptions
	cmd := &cobra.Command{
		Use:   "usage",
		Short: "Usage per server: logical and stored staging bytes, snapshots, days replicated, bytes sent",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return cli.RunUsage(cmd.Context(), o, cmd.OutOrStdout())
		},
	}
	cmd.Flags().StringVarP(&o.Output, "output", "o", cli.FormatTable, "output format: table, json, yaml or csv")
	return cmd
}
