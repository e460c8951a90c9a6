package main

import (
	"github.com/ferrymigrate/ferry/bench/connbench"
	"github.com/spf13/cobra"
)

// newBenchConnectorCmd is `ferry bench connector`.
func newBenchConnectorCmd() *cobra.Command {
	var o connbench.Options
	cmd := &cobra.Command{
		Use:   "connector",
		Short: "Agentless connector: full copy vs incremental at 1 % and 10 % changed, and many QEMU VMs at once",
		Args:  cobra.NoArgs,
	}
	writeJSON := jsonFlag(cmd)
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		o.Logf = stderrLogf(cmd)
		res, err := connbench.Run(cmd.Context(), o, cmd.OutOrStdout())
		if err != nil {
			return err
		}
		return writeJSON(res)
	}
	f := cmd.Flags()
	f.StringVar(&o.Dir, "dir", "", "working directory (default: a temporary directory)")
	f.Int64Var(&o.DiskBytes, "disk-bytes", 0, "the single VM's disk, random data (default 256 MiB)")
	f.IntVar(&o.VMs, "vms", 0, "QEMU VMs replicated at once (default 8)")
	f.Int64Var(&o.VMDiskBytes, "vm-disk-bytes", 0, "each of those VMs' disk (default 32 MiB)")
	f.IntVar(&o.Concurrency, "concurrency", 0, "the connector's bound on runs in flight (default: --vms)")
	return cmd
}
