package main

import (
	"fmt"
	"time"

	"github.com/ferrymigrate/ferry/cli"
	"github.com/ferrymigrate/ferry/server"
	"github.com/spf13/cobra"
)

func newVersionCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print Ferry's version",
		Run: func(cmd *cobra.Command, _ []string) {
			fmt.Fprintln(cmd.OutOrStdout(), "ferry", server.Version)
		},
	}
}

func newLoginCmd() *cobra.Command {
	var o cli.LoginOptions
	cmd := &cobra.Command{
		Use:     "login",
		Short:   "Save the server address, API token and CA pin for the CLI (file mode 0600)",
		Example: "  ferry login --addr https://localhost:8443 --token fyt_… --ca-fingerprint 3f2a…",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return cli.RunLogin(cmd.Context(), o, cmd.OutOrStdout())
		},
	}
	cmd.Flags().StringVar(&o.Addr, "addr", "", "server URL, https://HOST:8443 [FERRY_ADDR]")
	cmd.Flags().StringVar(&o.Token, "token", "", "API token [FERRY_TOKEN]")
	cmd.Flags().StringVar(&o.CAFingerprint, "ca-fingerprint", "", "SHA-256 fingerprint of the server CA [FERRY_CA_FINGERPRINT]")
	return cmd
}

func outputFlag(cmd *cobra.Command, p *string) {
	cmd.Flags().StringVarP(p, "output", "o", cli.FormatTable, "output format: table, json or yaml")
}

func newServersCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "servers", Short: "List and inspect source servers"}
	var lo cli.ServersListOptions
	list := &cobra.Command{
		Use:   "list",
		Short: "List source servers",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return cli.RunServersList(cmd.Context(), lo, cmd.OutOrStdout())
		},
	}
	f := list.Flags()
	f.StringVar(&lo.Lifecycle, "lifecycle", "", "lifecycle states, comma-separated")
	f.StringVar(&lo.Replication, "replication", "", "replication states, comma-separated")
	f.StringVar(&lo.Application, "application", "", "application id")
	f.StringVar(&lo.Wave, "wave", "", "wave id")
	f.StringVar(&lo.Text, "text", "", "text in id or hostname")
	f.StringSliceVar(&lo.Tags, "tag", nil, "tag key=value (repeatable)")
	f.BoolVar(&lo.Archived, "archived", false, "list archived servers")
	f.IntVar(&lo.Limit, "limit", 0, "one page of at most this many (default: all)")
	outputFlag(list, &lo.Output)

	var showOut string
	show := &cobra.Command{
		Use:   "show SERVER_ID",
		Short: "Show one source server",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return cli.RunServersShow(cmd.Context(), args[0], showOut, cmd.OutOrStdout())
		},
	}
	outputFlag(show, &showOut)
	var wo cli.WatchOptions
	watch := &cobra.Command{
		Use:   "watch",
		Short: "Watch servers' replication live: progress bars, lag, backlog, ETA",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return cli.RunServersWatch(cmd.Context(), wo, cmd.OutOrStdout())
		},
	}
	watch.Flags().StringVar(&wo.Application, "application", "", "only this application's servers")
	watch.Flags().StringVar(&wo.Wave, "wave", "", "only this wave's servers")
	watch.Flags().StringVar(&wo.Text, "text", "", "only servers whose id or hostname contains this")
	watch.Flags().DurationVar(&wo.Interval, "interval", 2*time.Second, "time between refreshes")
	watch.Flags().IntVar(&wo.Times, "times", 0, "stop after this many refreshes (0: until Ctrl-C)")
	var yes bool
	del := &cobra.Command{
		Use:   "delete SERVER_ID",
		Short: "Delete a DISCONNECTED or archived server and its replica, snapshots included (admin)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return cli.RunServerDelete(cmd.Context(), args[0], yes, cmd.OutOrStdout())
		},
	}
	del.Flags().BoolVar(&yes, "yes", false, "confirm: the replica and its snapshots cannot be recovered")
	cmd.AddCommand(del)
	cmd.AddCommand(list, show, watch,
		actionCmd("disconnect", "Disconnect from the service: the agent's certificate stops working, replication stops", "disconnect"),
		actionCmd("archive", "Archive a DISCONNECTED or CUTOVER server", "archive"),
		actionCmd("unarchive", "Unarchive a server", "unarchive"))
	return cmd
}

func newTokensCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "tokens", Short: "Manage API tokens (admin)"}
	var co cli.TokenCreateOptions
	create := &cobra.Command{
		Use:   "create",
		Short: "Create an API token; its secret is shown once",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return cli.RunTokensCreate(cmd.Context(), co, cmd.OutOrStdout())
		},
	}
	create.Flags().StringVar(&co.Name, "name", "", "name (required)")
	create.Flags().StringVar(&co.Role, "role", "viewer", "admin, operator or viewer")
	create.Flags().DurationVar(&co.Expires, "expires", 0, "lifetime, e.g. 720h (default: never)")
	outputFlag(create, &co.Output)
	_ = create.MarkFlagRequired("name")

	var listOut string
	list := &cobra.Command{
		Use: "list", Short: "List API tokens", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return cli.RunTokensList(cmd.Context(), listOut, cmd.OutOrStdout())
		},
	}
	outputFlag(list, &listOut)
	revoke := &cobra.Command{
		Use: "revoke TOKEN_ID", Short: "Revoke an API token", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return cli.RunTokensRevoke(cmd.Context(), args[0], cmd.OutOrStdout())
		},
	}
	cmd.AddCommand(create, list, revoke)
	return cmd
}

func newInstallTokensCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "install-tokens", Short: "Manage install tokens that agents pair with (admin)"}
	var co cli.InstallTokenCreateOptions
	create := &cobra.Command{
		Use:   "create",
		Short: "Create an install token; its secret is shown once",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return cli.RunInstallTokensCreate(cmd.Context(), co, cmd.OutOrStdout())
		},
	}
	f := create.Flags()
	f.StringVar(&co.Name, "name", "", "name (required)")
	f.StringVar(&co.Application, "application", "", "put paired servers in this application")
	f.StringVar(&co.Wave, "wave", "", "put paired servers in this wave")
	f.StringSliceVar(&co.Tags, "tag", nil, "tag paired servers key=value (repeatable)")
	f.IntVar(&co.MaxUses, "max-uses", 0, "how many agents may pair with it (0: no limit)")
	f.DurationVar(&co.Expires, "expires", 24*time.Hour, "lifetime (at most 2160h)")
	outputFlag(create, &co.Output)
	_ = create.MarkFlagRequired("name")

	var listOut string
	list := &cobra.Command{
		Use: "list", Short: "List install tokens", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return cli.RunInstallTokensList(cmd.Context(), listOut, cmd.OutOrStdout())
		},
	}
	outputFlag(list, &listOut)
	revoke := &cobra.Command{
		Use: "revoke TOKEN_ID", Short: "Revoke an install token", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return cli.RunInstallTokensRevoke(cmd.Context(), args[0], cmd.OutOrStdout())
		},
	}
	cmd.AddCommand(create, list, revoke)
	return cmd
}
