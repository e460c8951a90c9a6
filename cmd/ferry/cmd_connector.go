package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path"
	"strings"
	"sync"
	"time"

	"github.com/ferrymigrate/ferry/connector"
	"github.com/spf13/cobra"
)

const defaultConnectorStateDir = "/var/lib/ferry-connector"

// libvirtRediscover is how often 'connector run --libvirt' lists the
// host's domains for new ones.
const libvirtRediscover = 3 * time.Second

func newConnectorCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "connector",
		Short: "Agentless replication of QEMU/KVM VMs from beside the hypervisor",
	}
	cmd.AddCommand(newConnectorRunCmd(), newConnectorVMsCmd(), newConnectorJobsCmd())
	return cmd
}

// connectorRunOptions are the flags of 'ferry connector run'.
type connectorRunOptions struct {
	connector.Options
	QMP         []string
	Libvirt     string
	Domains     []string
	Frequency   time.Duration
	FirstRun    string
	Once        bool
	Keep        int
	Concurrency int
}

func newConnectorRunCmd() *cobra.Command {
	var o connectorRunOptions
	cmd := &cobra.Command{
		Use:   "run",
		Short: "Register each VM as a source server and run its replication job",
		Long: `Run Ferry's connector beside a QEMU/KVM host.

Each --qmp socket is one VM; with --libvirt URI (qemu:///system) each running
QEMU domain of that libvirt host is one VM, reached through libvirtd's
qemu-monitor-command, and domains started later are registered within
seconds (a domain that stops fails its job's runs with the reason, until it
runs again). On first contact the connector registers the VM
with the install token (one token use per VM) as a DISCOVERED source server
with its facts (name, disks, CPUs, memory, NICs), and keeps its key and
certificate under --state-dir/vms/<machine id>/.

A VM is replicated once it has a replication job: 'ferry connector jobs create'
(while this runs, the change is picked up within a second), or --frequency /
--once here for every VM that has none. Each run takes a point in time with
QEMU's image fleecing, reads only the blocks QEMU's persistent dirty bitmap
marks (everything on the first run, zeros skipped), sends them over the data
plane and ends with a snapshot. A FLUSH from the server (test launch, cutover)
starts a run at once. Jobs and runs: 'ferry connector jobs'.`,
		Example: "  ferry connector run --server https://ferry.example:8443 --install-token fyi_… --ca-fingerprint 3f2a… \\\n    --qmp unix:/run/vm1.qmp --qmp unix:/run/vm2.qmp\n  ferry connector jobs create vm1 --frequency 1h --first-run 2026-01-02T03:00:00Z --keep 5",
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runConnector(cmd, o)
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.ServerURL, "server", os.Getenv("FERRY_SERVER"), "control plane URL, https://HOST:8443 [FERRY_SERVER]")
	f.StringVar(&o.InstallToken, "install-token", os.Getenv("FERRY_INSTALL_TOKEN"), "install token for registering new VMs [FERRY_INSTALL_TOKEN]")
	f.StringVar(&o.CAFingerprint, "ca-fingerprint", os.Getenv("FERRY_CA_FINGERPRINT"), "SHA-256 fingerprint of the server CA [FERRY_CA_FINGERPRINT]")
	f.StringVar(&o.StateDir, "state-dir", defaultConnectorStateDir, "state directory")
	f.StringVar(&o.WorkDir, "work-dir", "", "directory for fleecing images and NBD sockets; QEMU must be able to write there (default STATE-DIR/work)")
	f.StringArrayVar(&o.QMP, "qmp", nil, "QMP socket of a VM, unix:PATH (repeatable)")
	f.StringVar(&o.Libvirt, "libvirt", "", "replicate every running QEMU domain of this libvirt host, qemu:///system (the connector runs on that host)")
	f.StringArrayVar(&o.Domains, "domain", nil, "with --libvirt: only domains whose name matches this pattern (shell glob, repeatable; default every domain)")
	f.DurationVar(&o.Frequency, "frequency", 0, "create a recurring job with this frequency for every VM that has none")
	f.StringVar(&o.FirstRun, "first-run", "", "first run of the jobs --frequency or --once create, RFC 3339 (default now)")
	f.BoolVar(&o.Once, "once", false, "create a run-once job for every VM that has none, and exit when every job is finished")
	f.IntVar(&o.Keep, "keep", 0, "recent snapshots to keep per disk for the jobs --frequency or --once create (0: all)")
	f.IntVar(&o.Concurrency, "concurrency", connector.DefaultConcurrency, "runs in flight at once across all VMs")
	return cmd
}

func runConnector(cmd *cobra.Command, o connectorRunOptions) error {
	if len(o.QMP) == 0 && o.Libvirt == "" {
		return errors.New("no VM to replicate\nTry: ferry connector run --qmp unix:/path/to/vm.qmp … or --libvirt qemu:///system")
	}
	if o.Libvirt != "" {
		if _, _, err := connector.ParseLibvirtURI(o.Libvirt); err != nil {
			return fmt.Errorf("--libvirt: %w", err)
		}
	}
	if len(o.Domains) > 0 && o.Libvirt == "" {
		return errors.New("--domain filters the domains of a libvirt host\nTry: ferry connector run --libvirt qemu:///system --domain 'web-*'")
	}
	for _, p := range o.Domains {
		if _, err := path.Match(p, ""); err != nil {
			return fmt.Errorf("--domain %q: %w\nTry: a shell pattern such as 'web-*' or an exact domain name", p, err)
		}
	}
	if o.Concurrency <= 0 {
		return fmt.Errorf("--concurrency %d: want at least 1", o.Concurrency)
	}
	var spec *connector.JobSpec
	if o.Once || o.Frequency != 0 {
		if o.Once && o.Frequency != 0 {
			return errors.New("--once and --frequency: choose one")
		}
		spec = &connector.JobSpec{Frequency: o.Frequency, RunOnce: o.Once, Keep: o.Keep}
		if o.FirstRun != "" {
			t, err := time.Parse(time.RFC3339, o.FirstRun)
			if err != nil {
				return fmt.Errorf("--first-run: %w\nTry: --first-run 2026-01-02T03:00:00Z", err)
			}
			spec.FirstRun = t
		}
		if err := spec.Check(); err != nil {
			return fmt.Errorf("job: %w", err)
		}
	} else if o.FirstRun != "" || o.Keep != 0 {
		return errors.New("--first-run and --keep describe the jobs --frequency or --once create\nTry: ferry connector jobs create VM --frequency 1h --first-run … --keep …")
	}
	for _, sock := range o.QMP {
		if !strings.HasPrefix(sock, "unix:") && !strings.HasPrefix(sock, "/") {
			return fmt.Errorf("--qmp %s: want unix:PATH", sock)
		}
	}
	ctx := cmd.Context()
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	o.Logger = log
	if err := os.MkdirAll(o.StateDir, 0o700); err != nil {
		return fmt.Errorf("create state directory: %w", err)
	}
	sched := &connector.Scheduler{StateDir: o.StateDir, Concurrency: o.Concurrency}
	var until func(*connector.Job) bool
	if o.Once {
		until = connector.Finished
	}
	var (
		mu   sync.Mutex
		srcs []*connector.Source
		all  []error
		wg   sync.WaitGroup
	)
	defer func() {
		for _, s := range srcs {
			s.Close()
		}
	}()
	// serve registers src, gives it the job the flags ask for and runs it.
	serve := func(src *connector.Source, where string) error {
		if err := sched.Register(src); err != nil {
			src.Close()
			return err
		}
		mu.Lock()
		srcs = append(srcs, src)
		mu.Unlock()
		fmt.Fprintf(cmd.OutOrStdout(), "VM %s (%s) is source server %s\n", src.Name, where, src.ServerID)
		if spec != nil {
			_, err := sched.Book().Create(src.ServerID, *spec, time.Now())
			if err != nil && !strings.Contains(err.Error(), "already has a replication job") {
				return err
			}
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := sched.Serve(ctx, src, until); err != nil {
				mu.Lock()
				all = append(all, fmt.Errorf("VM %s: %w", src.Name, err))
				mu.Unlock()
			}
		}()
		return nil
	}
	for _, sock := range o.QMP {
		src, err := connector.Open(ctx, o.Options, sock)
		if err != nil {
			return err
		}
		if err := serve(src, sock); err != nil {
			return err
		}
	}
	if o.Libvirt != "" {
		h, err := connector.DialLibvirt(ctx, o.Libvirt)
		if err != nil {
			return err
		}
		defer h.Close()
		seen := map[string]bool{} // domain UUIDs with a source
		discover := func() error {
			doms, err := h.Domains(ctx)
			if err != nil {
				return err
			}
			for _, d := range doms {
				if seen[d.UUID] || !domainWanted(o.Domains, d.Name) {
					continue
				}
				src, err := connector.OpenLibvirt(ctx, o.Options, h, d)
				if err != nil {
					// Tried again at the next look.
					log.Warn("libvirt domain not registered", "domain", d.Name, "err", err)
					continue
				}
				seen[d.UUID] = true
				if err := serve(src, h.Address(d)); err != nil {
					return err
				}
			}
			return nil
		}
		if err := discover(); err != nil {
			return err
		}
		if !o.Once {
			// New domains are registered as they start; a domain that
			// stops keeps its source, whose runs fail saying so.
			wg.Add(1)
			go func() {
				defer wg.Done()
				for {
					select {
					case <-ctx.Done():
						return
					case <-time.After(libvirtRediscover):
					}
					if err := discover(); err != nil {
						log.Warn("list libvirt domains", "uri", o.Libvirt, "err", err)
					}
				}
			}()
		}
	}
	wg.Wait()
	if o.Once {
		jobs, err := sched.Book().List()
		if err != nil {
			all = append(all, err)
		}
		printJobs(cmd.OutOrStdout(), jobs)
	}
	return errors.Join(all...)
}

func newConnectorVMsCmd() *cobra.Command {
	var stateDir, output string
	cmd := &cobra.Command{
		Use:   "vms",
		Short: "List the VMs the connector registered (its server catalog)",
		RunE: func(cmd *cobra.Command, _ []string) error {
			bk, err := (&connector.Jobs{Dir: stateDir}).Read()
			if err != nil {
				return err
			}
			if output == "json" {
				return writeJSONOut(cmd.OutOrStdout(), bk.VMs)
			}
			for _, v := range bk.VMs {
				job := "no job"
				if j := bk.Jobs[v.ServerID]; j != nil {
					job = "job " + string(j.State)
				}
				fmt.Fprintf(cmd.OutOrStdout(), "%-22s %-20s %-10s %s\n", v.ServerID, v.Name, job, v.Socket)
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&stateDir, "state-dir", defaultConnectorStateDir, "state directory")
	cmd.Flags().StringVarP(&output, "output", "o", "text", "text or json")
	return cmd
}

func writeJSONOut(w io.Writer, v any) error {
	e := json.NewEncoder(w)
	e.SetIndent("", "  ")
	return e.Encode(v)
}

func printJobs(w io.Writer, jobs []*connector.Job) {
	for _, j := range jobs {
		last := "-"
		if n := len(j.Runs); n > 0 {
			r := j.Runs[n-1]
			last = string(r.State)
			if r.Reason != "" {
				last += " (" + r.Reason + ")"
			}
		}
		state := string(j.State)
		if j.Stopped {
			state += " (stopped)"
		}
		next := "-"
		if !j.NextRun.IsZero() && !j.Stopped && j.State != connector.JobCompleted && j.State != connector.JobDeleted && j.State != connector.JobPausedOnFailure {
			next = j.NextRun.Format(time.RFC3339)
		}
		fmt.Fprintf(w, "%-22s %-20s %-28s next %-25s last run %s\n", j.ServerID, j.VM, state, next, last)
	}
}

func newConnectorJobsCmd() *cobra.Command {
	var stateDir, output string
	cmd := &cobra.Command{
		Use:   "jobs",
		Short: "Show the connector's replication jobs and their recent runs; create, start, stop, delete them",
		Long: `Replication jobs, as in AWS SMS: one per VM, with a frequency (or run once),
a first-run time and the number of recent snapshots to keep. Job states:
PENDING, ACTIVE, FAILED, PAUSED_ON_FAILURE, COMPLETED, DELETED; run states:
PENDING, ACTIVE, COMPLETED, FAILED, MISSED, each with its reason (-o json).
A running 'ferry connector run' on the same --state-dir picks up changes within
a second.`,
		RunE: func(cmd *cobra.Command, _ []string) error {
			jobs, err := (&connector.Jobs{Dir: stateDir}).List()
			if err != nil {
				return err
			}
			if output == "json" {
				return writeJSONOut(cmd.OutOrStdout(), jobs)
			}
			printJobs(cmd.OutOrStdout(), jobs)
			return nil
		},
	}
	cmd.PersistentFlags().StringVar(&stateDir, "state-dir", defaultConnectorStateDir, "state directory")
	cmd.Flags().StringVarP(&output, "output", "o", "text", "text or json")

	var spec connector.JobSpec
	var firstRun string
	create := &cobra.Command{
		Use:     "create VM",
		Short:   "Create a VM's replication job (VM: source server id, name or machine id; see 'ferry connector vms')",
		Example: "  ferry connector jobs create vm1 --frequency 12h --first-run 2026-01-02T03:00:00Z --keep 5\n  ferry connector jobs create s-4f2a… --once",
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			s := spec
			if firstRun != "" {
				t, err := time.Parse(time.RFC3339, firstRun)
				if err != nil {
					return fmt.Errorf("--first-run: %w\nTry: --first-run 2026-01-02T03:00:00Z", err)
				}
				s.FirstRun = t
			}
			j, err := (&connector.Jobs{Dir: stateDir}).Create(args[0], s, time.Now())
			if err != nil {
				if !s.RunOnce && s.Frequency == 0 {
					return fmt.Errorf("%w\nTry: --frequency 1h, or --once", err)
				}
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "job for %s (%s) created: %s, first run %s\n", j.VM, j.ServerID, j.State, j.NextRun.Format(time.RFC3339))
			return nil
		},
	}
	create.Flags().DurationVar(&spec.Frequency, "frequency", 0, "time between runs (recurring job)")
	create.Flags().BoolVar(&spec.RunOnce, "once", false, "run once, then COMPLETED")
	create.Flags().StringVar(&firstRun, "first-run", "", "time of the first run, RFC 3339 (default now)")
	create.Flags().IntVar(&spec.Keep, "keep", 0, "recent snapshots to keep per disk; older ones are deleted from the replica store (0: all)")

	verb := func(use, short string, f func(*connector.Jobs, string) error) *cobra.Command {
		return &cobra.Command{
			Use:   use + " VM",
			Short: short,
			Args:  cobra.ExactArgs(1),
			RunE: func(cmd *cobra.Command, args []string) error {
				if err := f(&connector.Jobs{Dir: stateDir}, args[0]); err != nil {
					return err
				}
				fmt.Fprintf(cmd.OutOrStdout(), "%s: %s\n", args[0], use)
				return nil
			},
		}
	}
	cmd.AddCommand(create,
		verb("start", "Run the job now and resume it if it was stopped or paused on failure", (*connector.Jobs).Start),
		verb("stop", "Stop scheduling the job's runs (a FLUSH from the server still gets a run)", (*connector.Jobs).Stop),
		verb("delete", "Delete the job: no more runs; the VM's dirty bitmaps are removed", (*connector.Jobs).Delete))
	return cmd
}

// domainWanted reports whether a libvirt domain's name matches one of the
// --domain patterns (no pattern: every domain). The patterns were checked
// when the command started.
func domainWanted(patterns []string, name string) bool {
	if len(patterns) == 0 {
		return true
	}
	for _, p := range patterns {
		if ok, _ := path.Match(p, name); ok {
			return true
		}
	}
	return false
}
