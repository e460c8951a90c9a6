package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/ferrymigrate/ferry/connector"
	"github.com/spf13/cobra"
)

func newConnectorCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "connector",
		Short: "Agentless replication of QEMU/KVM VMs from beside the hypervisor",
	}
	cmd.AddCommand(newConnectorRunCmd(), newConnectorJobsCmd())
	return cmd
}

// connectorRunOptions are the flags of 'ferry connector run'.
type connectorRunOptions struct {
	connector.Options
	QMP         []string
	Frequency   time.Duration
	FirstRun    string
	Once        bool
	Concurrency int
}

func newConnectorRunCmd() *cobra.Command {
	var o connectorRunOptions
	cmd := &cobra.Command{
		Use:   "run",
		Short: "Pair each VM as a source server and replicate it on a schedule",
		Long: `Run Ferry's connector beside a QEMU/KVM host.

Each --qmp socket is one VM. On first contact the connector pairs the VM as its
own source server with the install token (one token use per VM) and keeps its
key and certificate under --state-dir/vms/<machine id>/. Each run takes a point
in time with QEMU's image fleecing, reads only the blocks QEMU's persistent
dirty bitmap marks (everything on the first run, zeros skipped), sends them over
the data plane and ends with a snapshot. Job and run states are kept in
--state-dir/jobs.json ('ferry connector jobs').`,
		Example: "  ferry connector run --server https://ferry.example:8443 --install-token fyi_… --ca-fingerprint 3f2a… \\\n    --qmp unix:/run/vm1.qmp --qmp unix:/run/vm2.qmp --frequency 1h",
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runConnector(cmd, o)
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.ServerURL, "server", os.Getenv("FERRY_SERVER"), "control plane URL, https://HOST:8443 [FERRY_SERVER]")
	f.StringVar(&o.InstallToken, "install-token", os.Getenv("FERRY_INSTALL_TOKEN"), "install token for pairing new VMs [FERRY_INSTALL_TOKEN]")
	f.StringVar(&o.CAFingerprint, "ca-fingerprint", os.Getenv("FERRY_CA_FINGERPRINT"), "SHA-256 fingerprint of the server CA [FERRY_CA_FINGERPRINT]")
	f.StringVar(&o.StateDir, "state-dir", "/var/lib/ferry-connector", "state directory")
	f.StringVar(&o.WorkDir, "work-dir", "", "directory for fleecing images and NBD sockets; QEMU must be able to write there (default STATE-DIR/work)")
	f.StringArrayVar(&o.QMP, "qmp", nil, "QMP socket of a VM, unix:PATH (repeatable)")
	f.DurationVar(&o.Frequency, "frequency", 12*time.Hour, "time between runs")
	f.StringVar(&o.FirstRun, "first-run", "", "time of the first run, RFC 3339 (default now)")
	f.BoolVar(&o.Once, "once", false, "make one run per VM, then exit")
	f.IntVar(&o.Concurrency, "concurrency", connector.DefaultConcurrency, "runs in flight at once across all VMs")
	return cmd
}

func runConnector(cmd *cobra.Command, o connectorRunOptions) error {
	if len(o.QMP) == 0 {
		return errors.New("no VM to replicate\nTry: ferry connector run --qmp unix:/path/to/vm.qmp …")
	}
	spec := connector.JobSpec{Frequency: o.Frequency, RunOnce: o.Once}
	if o.Once {
		spec.Frequency = 0
	}
	if o.FirstRun != "" {
		t, err := time.Parse(time.RFC3339, o.FirstRun)
		if err != nil {
			return fmt.Errorf("--first-run: %w\nTry: --first-run 2026-01-02T03:00:00Z", err)
		}
		spec.FirstRun = t
	}
	ctx := cmd.Context()
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	o.Logger = log
	if err := os.MkdirAll(o.StateDir, 0o700); err != nil {
		return fmt.Errorf("create state directory: %w", err)
	}
	sched := &connector.Scheduler{StateDir: o.StateDir, Concurrency: o.Concurrency, Logger: log}
	var wg sync.WaitGroup
	errs := make(chan error, len(o.QMP))
	for _, sock := range o.QMP {
		if !strings.HasPrefix(sock, "unix:") && !strings.HasPrefix(sock, "/") {
			return fmt.Errorf("--qmp %s: want unix:PATH", sock)
		}
		src, err := connector.Open(ctx, o.Options, sock)
		if err != nil {
			return err
		}
		defer src.Close()
		fmt.Fprintf(cmd.OutOrStdout(), "VM %s is source server %s\n", sock, src.ServerID)
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := sched.Run(ctx, src, sock, spec); err != nil {
				errs <- fmt.Errorf("VM %s: %w", sock, err)
			}
		}()
	}
	wg.Wait()
	close(errs)
	var all []error
	for err := range errs {
		all = append(all, err)
	}
	if o.Once {
		for _, j := range sched.Jobs() {
			fmt.Fprintf(cmd.OutOrStdout(), "%s %s %s\n", j.ServerID, j.VM, j.State)
		}
	}
	return errors.Join(all...)
}

func newConnectorJobsCmd() *cobra.Command {
	var stateDir, output string
	cmd := &cobra.Command{
		Use:   "jobs",
		Short: "Show the connector's replication jobs and their recent runs",
		RunE: func(cmd *cobra.Command, _ []string) error {
			sched := &connector.Scheduler{StateDir: stateDir}
			if err := sched.Load(); err != nil {
				return err
			}
			jobs := sched.Jobs()
			if output == "json" {
				e := json.NewEncoder(cmd.OutOrStdout())
				e.SetIndent("", "  ")
				return e.Encode(jobs)
			}
			for _, j := range jobs {
				last := "-"
				if n := len(j.Runs); n > 0 {
					r := j.Runs[n-1]
					last = string(r.State)
					if r.Reason != "" {
						last += " (" + r.Reason + ")"
					}
				}
				fmt.Fprintf(cmd.OutOrStdout(), "%-22s %-18s next %-25s last run %s  %s\n", j.ServerID, j.State, j.NextRun.Format(time.RFC3339), last, j.VM)
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&stateDir, "state-dir", "/var/lib/ferry-connector", "state directory")
	cmd.Flags().StringVarP(&output, "output", "o", "text", "text or json")
	return cmd
}
