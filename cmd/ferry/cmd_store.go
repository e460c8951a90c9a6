package main

import (
	"errors"
	"strings"

	"github.com/ferrymigrate/ferry/cli"
	"github.com/ferrymigrate/ferry/nbd"
	"github.com/spf13/cobra"
)

func storeFlags(cmd *cobra.Command, o *cli.StoreOptions) {
	cmd.Flags().StringVar(&o.DataDir, "data", "", "the server's data directory (the server must be stopped)")
	outputFlag(cmd, &o.Output)
	_ = cmd.MarkFlagRequired("data")
}

func newStoreCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "store", Short: "Check and maintain a replica store offline (verify, usage, gc)"}
	var vo, uo, gco cli.StoreOptions
	verify := &cobra.Command{
		Use:   "verify",
		Short: "Scrub every object: decrypts, hashes right, every map's chunks exist; problems named by object",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return cli.RunStoreVerify(cmd.Context(), vo, cmd.OutOrStdout())
		},
	}
	storeFlags(verify, &vo)
	usage := &cobra.Command{
		Use: "usage", Short: "Logical and stored bytes per disk", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return cli.RunStoreUsage(cmd.Context(), uo, cmd.OutOrStdout())
		},
	}
	storeFlags(usage, &uo)
	gc := &cobra.Command{
		Use: "gc", Short: "Remove chunks no block map or snapshot references", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return cli.RunStoreGC(cmd.Context(), gco, cmd.OutOrStdout())
		},
	}
	storeFlags(gc, &gco)
	cmd.AddCommand(verify, usage, gc)
	return cmd
}

func newSnapshotsCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "snapshots", Short: "List and export point-in-time snapshots of replicated disks"}
	var lo cli.StoreOptions
	var disk, server string
	list := &cobra.Command{
		Use: "list", Short: "List snapshots: of one server through the running server's API (--server), or offline (--data)", Args: cobra.NoArgs,
		Example: "  ferry snapshots list --server s-0123456789abcdef0\n  ferry snapshots list --data /var/lib/ferry --disk s-0123456789abcdef0.sda",
		RunE: func(cmd *cobra.Command, _ []string) error {
			switch {
			case server != "" && lo.DataDir != "":
				return errors.New("give --server (the running server's API) or --data (offline), not both")
			case server != "":
				return cli.RunSnapshotsListOnline(cmd.Context(), server, disk, lo.Output, cmd.OutOrStdout())
			case lo.DataDir == "":
				return errors.New("give --server SERVER_ID (through the running server's API) or --data DIR (offline, the server stopped)")
			}
			return cli.RunSnapshotsList(cmd.Context(), lo, disk, cmd.OutOrStdout())
		},
	}
	list.Flags().StringVar(&lo.DataDir, "data", "", "list offline from this data directory (the server must be stopped)")
	outputFlag(list, &lo.Output)
	list.Flags().StringVar(&server, "server", "", "list this source server's snapshots through the API")
	list.Flags().StringVar(&disk, "disk", "", "only this disk (with --server: the disk's name, e.g. sda; offline: its replica id)")
	var eo cli.ExportOptions
	export := &cobra.Command{
		Use:     "export",
		Short:   "Write a snapshot as a sparse raw, qcow2 or vmdk image",
		Example: "  ferry snapshots export --data ./ferry-data --disk s-0123.sda --snapshot 0000000000000042 --format qcow2 --output-file sda.qcow2",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return cli.RunSnapshotsExport(cmd.Context(), eo, cmd.OutOrStdout())
		},
	}
	storeFlags(export, &eo.StoreOptions)
	export.Flags().StringVar(&eo.Disk, "disk", "", "disk id")
	export.Flags().StringVar(&eo.Snapshot, "snapshot", "", "snapshot id")
	export.Flags().StringVar(&eo.Format, "format", "qcow2", "image format: "+strings.Join(nbd.ExportFormats(), ", "))
	export.Flags().StringVar(&eo.OutputFile, "output-file", "", "image file to write")
	cmd.AddCommand(list, export)
	return cmd
}
