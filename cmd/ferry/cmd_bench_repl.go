package main

import (
	"github.com/ferrymigrate/ferry/bench/replbench"
	"github.com/spf13/cobra"
)

// newBenchReplicationCmd is `ferry bench replication`.
func newBenchReplicationCmd() *cobra.Command {
	var o replbench.Options
	cmd := &cobra.Command{
		Use:   "replication",
		Short: "Replication: initial sync vs rsync and a TLS pipe, incremental with eBPF vs rescan vs rsync (root)",
		Args:  cobra.NoArgs,
	}
	writeJSON := jsonFlag(cmd)
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		o.Logf = stderrLogf(cmd)
		res, err := replbench.Run(cmd.Context(), o, cmd.OutOrStdout())
		if err != nil {
			return err
		}
		return writeJSON(res)
	}
	f := cmd.Flags()
	f.StringVar(&o.Dir, "dir", "", "working directory (default: a temporary directory)")
	f.Int64Var(&o.ImageBytes, "image-bytes", 0, "image size (default 1 GiB)")
	f.Float64Var(&o.ChangePercent, "change-percent", 0, "share of 4 KiB blocks changed for the incremental runs (default 1)")
	f.DurationVar(&o.RescanTimeout, "rescan-timeout", 0, "longest wait for the rescan (default 10m)")
	f.StringVar(&o.InitialCPUProfile, "initial-cpuprofile", "", "write a CPU profile of Ferry's initial sync alone to `FILE` (go tool pprof)")
	f.IntVar(&o.SyncPairs, "sync-pairs", 1, "run the initial sync beside rsync -W this many times and report the median ratio (this VM's speed swings)")
	f.BoolVar(&o.WarmCache, "warm-cache", false, "keep the page cache between the initial syncs (by default each starts cold: written back and dropped)")
	f.StringVar(&o.RescanCPUProfile, "rescan-cpuprofile", "", "write a CPU profile of Ferry's rescan alone to `FILE` (go tool pprof)")
	return cmd
}
