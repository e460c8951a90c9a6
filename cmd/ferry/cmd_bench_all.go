package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/ferrymigrate/ferry/bench/scale"
	"github.com/ferrymigrate/ferry/bench/suite"
	"github.com/spf13/cobra"
)

// defaultReference is the committed reference run, read when it exists
// (from the repository root, as `make bench` runs).
const defaultReference = "bench/reference.json"

// newBenchAllCmd is `ferry bench all`.
func newBenchAllCmd() *cobra.Command {
	var (
		o            suite.Options
		jsonOut      string
		svgOut       string
		refPath      string
		failOnReg    bool
		tolerance    float64
		agentProfile string
	)
	cmd := &cobra.Command{
		Use:   "all",
		Short: "Every benchmark in one run: limits, initial and incremental sync, RPO, agent footprint, dedup, scale, launch, connector; one table, JSON, SVG, regressions (root)",
		Long: `Runs every section and prints one table: each figure with its unit, its ratio
to its ceiling or peer, its goal and whether this run met it, and its change
against the reference run (bench/reference.json by default). A figure more than
--tolerance worse than the reference is flagged; with --fail-on-regression
that makes the command exit non-zero. --quick scales everything down (under
3 minutes). Sections needing root or tools that are missing are skipped and
listed.`,
		Example: "  ferry bench all --quick\n  ferry bench all --json bench/reference.json --svg docs/benchmarks.svg",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if tolerance <= 0 || tolerance >= 1 {
				return fmt.Errorf("--tolerance %v: want a fraction between 0 and 1, e.g. 0.1", tolerance)
			}
			var ref *suite.Report
			if refPath != "" {
				var err error
				if ref, err = suite.ReadReport(refPath); err != nil {
					if !(errors.Is(err, os.ErrNotExist) && !cmd.Flags().Changed("reference")) {
						return fmt.Errorf("reference %s: %w\nTry: --reference '' to run without one", refPath, err)
					}
					ref = nil
				}
			}
			exe, err := os.Executable()
			if err != nil {
				return fmt.Errorf("find this ferry binary for the agent, server and CLI processes: %w", err)
			}
			o.AgentCommand = []string{exe, "agent"}
			if agentProfile != "" {
				o.AgentCommand = append(o.AgentCommand, "--cpuprofile", agentProfile)
			}
			o.Logf = stderrLogf(cmd)
			o.Scale = benchScaleSection
			o.Launch = benchLaunchSection(exe)
			o.Connector = benchConnectorSection
			rep, runErr := suite.Run(cmd.Context(), o)
			if rep == nil {
				return runErr
			}
			regs := suite.Compare(ref, rep, tolerance)
			if err := suite.PrintTable(cmd.OutOrStdout(), rep, ref, regs); err != nil {
				return err
			}
			if ref == nil {
				fmt.Fprintln(cmd.OutOrStdout(), "no reference run to compare with")
			} else if ref.Profile != rep.Profile {
				fmt.Fprintf(cmd.OutOrStdout(), "reference profile differs (%s): size-dependent figures not compared\n", ref.Profile)
			}
			if jsonOut != "" {
				if err := rep.WriteFile(jsonOut); err != nil {
					return err
				}
			}
			if svgOut != "" {
				f, err := os.Create(svgOut)
				if err != nil {
					return fmt.Errorf("svg: %w", err)
				}
				err = suite.WriteSVG(f, rep, regs)
				if cerr := f.Close(); err == nil && cerr != nil {
					err = fmt.Errorf("svg: %w", cerr)
				}
				if err != nil {
					return err
				}
			}
			if runErr != nil {
				return runErr
			}
			if len(regs) > 0 {
				fmt.Fprintf(cmd.OutOrStdout(), "%d figures more than %.0f %% worse than the reference\n", len(regs), tolerance*100)
				if failOnReg {
					return fmt.Errorf("%w: %d figures", suite.ErrRegression, len(regs))
				}
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&agentProfile, "agent-cpuprofile", "", "write a CPU profile of the RPO section's agent process to `FILE` (go tool pprof)")
	f.StringVar(&o.Dir, "dir", "", "directory on the data disk for images and stores (default: a temporary directory)")
	f.BoolVar(&o.Quick, "quick", false, "scale everything down: a run in under 3 minutes")
	f.StringSliceVar(&o.Only, "only", nil, "run only these sections (limits, replication, rpo, dedup, scale, launch, connector)")
	f.Int64Var(&o.ImageBytes, "image-bytes", 0, "initial-sync image size (default 4 GiB; quick 512 MiB)")
	f.IntVar(&o.SyncPairs, "sync-pairs", 1, "initial syncs beside rsync -W; above 1 the time goal is judged on the median ratio")
	f.DurationVar(&o.RPODuration, "rpo-duration", 0, "how long each write rate runs (default 60s; quick 15s)")
	f.Int64Var(&o.RPODiskBytes, "rpo-disk-bytes", 0, "continuous-replication source disk size (default 1 GiB; quick 256 MiB)")
	f.Int64Var(&o.DedupImageBytes, "dedup-image-bytes", 0, "image the dedup clones share (default 256 MiB; quick 64 MiB)")
	f.IntVar(&o.Clones, "clones", 0, "dedup clones (default 20)")
	f.Int64Var(&o.DiskTestBytes, "disk-test-bytes", 0, "sequential disk test size (default 1 GiB; quick 256 MiB)")
	f.DurationVar(&o.LimitDuration, "limit-duration", 0, "length of each CPU and network limit test (default 2s; quick 0.5s)")
	f.StringVar(&jsonOut, "json", "", "write the run as JSON to this file (commit it as bench/reference.json to make it the reference)")
	f.StringVar(&svgOut, "svg", "", "write a bar chart of the ratios as SVG to this file")
	f.StringVar(&refPath, "reference", defaultReference, "reference run to compare with ('' for none)")
	f.BoolVar(&failOnReg, "fail-on-regression", false, "exit non-zero when a figure is more than --tolerance worse than the reference")
	f.Float64Var(&tolerance, "tolerance", suite.DefaultTolerance, "how much worse than the reference a figure may get before it is flagged")
	return cmd
}

// benchScaleSection runs bench/scale for the suite: 1,000 and 3,000
// simulated agents (200 and 1,000 with --quick) against one server.
func benchScaleSection(ctx context.Context, env suite.Env) ([]suite.Figure, error) {
	o := scale.Options{Quick: env.Quick, Dir: env.Dir, Agents: []int{1000, 3000}}
	if env.Quick {
		o.Agents = nil
	}
	res, err := scale.Run(ctx, o, io.Discard)
	if res == nil {
		return nil, err
	}
	var out []suite.Figure
	for _, f := range res.Figures() {
		b := suite.None
		switch {
		case strings.Contains(f.Unit, "/s"):
			b = suite.Higher
		case f.Unit == "s" || f.Unit == "ms" || f.Unit == "MiB" || f.Unit == "% of a core" || f.Unit == "errors" || f.Unit == "threads" || f.Unit == "fds":
			b = suite.Lower
		}
		out = append(out, suite.Figure{Section: suite.SectionScale, Name: f.Name, Value: f.Value, Unit: f.Unit, Better: b})
	}
	return out, err
}
