package connector

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"time"

	"github.com/ferrymigrate/ferry/protocol"
	"github.com/ferrymigrate/ferry/qmp"
)

// Version is the connector's version, sent in HELLO.
var Version = "dev"

// Source is one QEMU process the connector replicates as one source
// server. Its methods may be called concurrently; runs are serialised.
type Source struct {
	// Socket is the QEMU process's QMP socket ("unix:" prefix allowed).
	Socket string
	// StateDir is the VM's paired identity (see package agent) and its
	// connector state (connector.json).
	StateDir string
	// ServerID is the source server id the VM's certificate names.
	ServerID string
	// WorkDir holds the temporary fleecing images and QEMU's NBD socket
	// during a run; QEMU must be able to create files in it. The socket
	// path must fit in 108 bytes.
	WorkDir string
	// Dial opens the VM's data-plane connection (mutual TLS with its
	// certificate).
	Dial func(ctx context.Context) (net.Conn, error)
	// Logger receives progress; nil means slog.Default().
	Logger *slog.Logger
	// ChunkSize is the largest extent in one WRITE; 0 means 1 MiB.
	ChunkSize int
	// QemuImg is the qemu-img binary that creates fleecing images; ""
	// means "qemu-img" on PATH.
	QemuImg string

	mu    sync.Mutex // serialises runs; guards the fields below
	qmp   *qmp.Client
	facts *Facts
	st    *vmState
	link  *link
	next  []uint64 // per disk: next seq on the current link
	disks []Disk   // the disks of the current link, in HELLO order

	smu      sync.Mutex // guards the figures below
	progress map[string]*diskFigures
	pointAt  time.Time // the last acknowledged point in time
}

// diskFigures are a disk's STATS figures.
type diskFigures struct {
	phase      protocol.Phase
	replicated int64
	rescanned  int64
	backlog    int64
	syncDone   bool
	syncSeq    uint64
}

func (s *Source) log() *slog.Logger {
	if s.Logger == nil {
		return slog.Default()
	}
	return s.Logger
}

// Facts connects to QMP if needed and (re)discovers the VM.
func (s *Source) Facts(ctx context.Context) (*Facts, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.discoverLocked(ctx)
}

func (s *Source) discoverLocked(ctx context.Context) (*Facts, error) {
	if s.qmp == nil {
		c, err := qmp.Dial(ctx, s.Socket)
		if err != nil {
			return nil, err
		}
		s.qmp = c
	}
	f, err := Discover(ctx, s.qmp)
	if errors.Is(err, qmp.ErrClosed) {
		s.qmp.Close()
		s.qmp = nil
		return s.discoverLocked(ctx)
	}
	if err != nil {
		return nil, err
	}
	s.facts = f
	return f, nil
}

// Close ends the data-plane and QMP connections.
func (s *Source) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.link != nil {
		s.link.close()
		s.link = nil
	}
	if s.qmp != nil {
		s.qmp.Close()
		s.qmp = nil
	}
	return nil
}

// stats builds the STATS message from the figures of the last run.
func (s *Source) stats() *protocol.Stats {
	s.smu.Lock()
	defer s.smu.Unlock()
	st := &protocol.Stats{SentAtUnixNano: time.Now().UnixNano()}
	if !s.pointAt.IsZero() {
		// Everything written since the last point in time is unsent.
		st.OldestUnsentUnixNano = s.pointAt.UnixNano()
	}
	for _, d := range s.disks {
		f := s.progress[d.Name]
		if f == nil {
			f = &diskFigures{phase: protocol.PhaseInitialSync}
		}
		st.Disks = append(st.Disks, protocol.DiskStats{Phase: f.phase, ReplicatedBytes: f.replicated,
			RescannedBytes: f.rescanned, BackloggedBytes: f.backlog, SyncDone: f.syncDone, SyncSeq: f.syncSeq})
	}
	return st
}

func (s *Source) figures(name string, set func(*diskFigures)) {
	s.smu.Lock()
	defer s.smu.Unlock()
	if s.progress == nil {
		s.progress = map[string]*diskFigures{}
	}
	f := s.progress[name]
	if f == nil {
		f = &diskFigures{phase: protocol.PhaseInitialSync}
		s.progress[name] = f
	}
	set(f)
}

// ensureLinkLocked opens the data-plane session if there is none.
func (s *Source) ensureLinkLocked(ctx context.Context) error {
	if s.link != nil && s.link.Err() == nil && sameDisks(s.disks, s.facts.Disks) {
		return nil
	}
	if s.link != nil {
		s.link.close()
		s.link = nil
	}
	s.smu.Lock()
	s.disks = append([]Disk(nil), s.facts.Disks...)
	s.smu.Unlock()
	hello := &protocol.Hello{ProtocolVersion: protocol.Version, AgentVersion: "connector/" + Version, ServerID: s.ServerID, Tracker: "qemu-dirty-bitmap"}
	for _, d := range s.disks {
		ds := s.st.disk(d.Name)
		hd := protocol.HelloDisk{Name: d.Name, Size: d.Size, LogicalBlockSize: 512, AckedSeq: ds.AckedSeq, SyncDone: ds.Synced}
		if ds.Synced {
			hd.SyncCursor = d.Size
		}
		hello.Disks = append(hello.Disks, hd)
		s.figures(d.Name, func(f *diskFigures) {
			f.syncDone, f.syncSeq = ds.Synced, ds.SyncSeq
			if ds.Synced {
				f.phase, f.replicated = protocol.PhaseContinuous, d.Size
			}
		})
	}
	l, err := openLink(ctx, s.Dial, hello, s.stats)
	if err != nil {
		return fmt.Errorf("data plane: %w", err)
	}
	s.link = l
	s.next = make([]uint64, len(s.disks))
	for i, d := range s.disks {
		ds := s.st.disk(d.Name)
		a := l.hello.Disks[i]
		s.next[i] = max(a.DurableSeq, ds.AckedSeq) + 1
		if a.Rescan && ds.Synced {
			// The replica lost what we saw acknowledged.
			s.log().Warn("replica is behind what the connector saw acknowledged; rescanning", "server", s.ServerID, "disk", d.Name)
			ds.NeedRescan = true
		}
	}
	return nil
}

func sameDisks(a, b []Disk) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i].Name != b[i].Name || a[i].Size != b[i].Size {
			return false
		}
	}
	return true
}
