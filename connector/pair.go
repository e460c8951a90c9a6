package connector

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"

	"github.com/ferrymigrate/ferry/agent"
	"github.com/ferrymigrate/ferry/api"
)

// Options say how to reach the server and where to keep identities.
type Options struct {
	// ServerURL, InstallToken and CAFingerprint are as for the agent; the
	// token is needed only for VMs not paired yet (one use per VM).
	ServerURL, InstallToken, CAFingerprint string
	// StateDir keeps one directory per VM (vms/<machine id>/) with its
	// key, certificate and replication state, and the jobs file.
	StateDir string
	// WorkDir holds fleecing images and NBD sockets during runs; ""
	// means StateDir/work.
	WorkDir string
	// Logger receives progress; nil means slog.Default().
	Logger *slog.Logger
}

// Open connects to the QEMU process at socket, discovers it and pairs it
// as its own source server unless it paired before: a new VM is
// registered DISCOVERED (the server catalog) and moves to NOT_READY when
// a job's first run opens its data-plane session. The VM's machine id
// (from its UUID or name) picks its identity directory, so a VM keeps its
// source server across connector restarts and QMP socket moves.
func Open(ctx context.Context, o Options, socket string) (*Source, error) {
	return open(ctx, o, &Source{Socket: socket})
}

// open discovers and pairs s, whose Socket (and DialMonitor) are set.
func open(ctx context.Context, o Options, s *Source) (*Source, error) {
	socket := s.Socket
	s.Logger = o.Logger
	f, err := s.Facts(ctx)
	if err != nil {
		return nil, err
	}
	id := f.MachineID(socket)
	dir := filepath.Join(o.StateDir, "vms", id)
	st, err := agent.LoadState(dir)
	if errors.Is(err, os.ErrNotExist) {
		st, err = agent.PairFacts(ctx, agent.PairOptions{ServerURL: o.ServerURL, InstallToken: o.InstallToken, CAFingerprint: o.CAFingerprint,
			StateDir: dir, Discovered: true}, f.agentFacts(socket))
		if err == nil {
			s.log().Info("VM registered as a DISCOVERED source server", "vm", f.Hostname(socket), "server", st.SourceServerID)
		}
	}
	if err != nil {
		s.Close()
		return nil, fmt.Errorf("VM %s: %w", f.Hostname(socket), err)
	}
	work := o.WorkDir
	if work == "" {
		work = filepath.Join(o.StateDir, "work")
	}
	s.StateDir, s.ServerID, s.WorkDir = dir, st.SourceServerID, filepath.Join(work, st.SourceServerID)
	s.roots = []string{o.StateDir, work}
	s.Name, s.MachineID = f.Hostname(socket), id
	s.Dial = func(ctx context.Context) (net.Conn, error) { return agent.Connect(ctx, dir) }
	s.Renew = agent.NewRenewer(dir)
	return s, nil
}

// agentFacts are the pairing facts of a VM.
func (f *Facts) agentFacts(socket string) *agent.Facts {
	af := &agent.Facts{MachineID: f.MachineID(socket), Hostname: f.Hostname(socket), OS: "QEMU/KVM virtual machine (agentless)",
		CPUs: f.CPUs, RAMBytes: f.MemoryBytes, NICs: f.NICs}
	for _, d := range f.Disks {
		af.Disks = append(af.Disks, api.PairDisk{Name: d.Name, SizeBytes: d.Size, LogicalBlockSize: 512, Model: "qemu " + d.Format})
	}
	return af
}
