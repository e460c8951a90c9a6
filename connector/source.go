package connector

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync"
	"time"

	"github.com/ferrymigrate/ferry/agent"
	"github.com/ferrymigrate/ferry/protocol"
	"github.com/ferrymigrate/ferry/qmp"
)

// Version is the connector's version, sent in HELLO.
var Version = "dev"

// Source is one QEMU process the connector replicates as one source
// server. Its methods may be called concurrently; runs are serialised.
type Source struct {
	// Socket is the QEMU process's QMP socket ("unix:" prefix allowed),
	// or, with DialMonitor set, where the VM is reached (a libvirt
	// domain: "URI#NAME"), shown in the catalog.
	Socket string
	// DialMonitor, when set, reaches the VM's monitor instead of dialing
	// Socket (a libvirt domain's monitor).
	DialMonitor func(ctx context.Context) (Monitor, error)
	// StateDir is the VM's paired identity (see package agent) and its
	// connector state (connector.json).
	StateDir string
	// ServerID is the source server id the VM's certificate names.
	ServerID string
	// Name is the VM's name (its -name, else its machine id) and
	// MachineID its stable identity at pairing; set by Open.
	Name, MachineID string
	// WorkDir holds the temporary fleecing images and QEMU's NBD socket
	// during a run; QEMU must be able to create files in it. The socket
	// path must fit in 108 bytes.
	WorkDir string
	// Dial opens the VM's data-plane connection (mutual TLS with its
	// certificate).
	Dial func(ctx context.Context) (net.Conn, error)
	// Renew, when set, renews the certificate Dial uses before it ends
	// (Open sets it for the identity in StateDir).
	Renew *agent.Renewer
	// Logger receives progress; nil means slog.Default().
	Logger *slog.Logger
	// ChunkSize is the largest extent in one WRITE; 0 means 1 MiB.
	ChunkSize int
	// QemuImg is the qemu-img binary that creates fleecing images; ""
	// means "qemu-img" on PATH.
	QemuImg string

	// roots are the connector's state and work roots: directories it may
	// let QEMU's user search (see prepareWorkDir).
	roots []string

	mu    sync.Mutex // serialises runs; guards the fields below
	mon   Monitor
	facts *Facts
	st    *vmState
	link  *link
	next  []uint64 // per disk: next seq on the current link
	disks []Disk   // the disks of the current link, in HELLO order

	smu      sync.Mutex // guards the figures below
	progress map[string]*diskFigures
	pointAt  time.Time // the last acknowledged point in time

	fmu     sync.Mutex        // guards the fields below
	flushes []*protocol.Flush // FLUSHes no run has answered yet
	flushCh chan struct{}     // signalled when a FLUSH arrives
}

// FlushRequested is signalled when the server asked for a drained point
// (FLUSH: a test launch or a cutover's final sync). The next run answers
// every FLUSH that arrived before its point in time, so a scheduler
// should start one now.
func (s *Source) FlushRequested() <-chan struct{} {
	s.fmu.Lock()
	defer s.fmu.Unlock()
	if s.flushCh == nil {
		s.flushCh = make(chan struct{}, 1)
	}
	return s.flushCh
}

// PendingFlushes is how many FLUSHes wait for a run.
func (s *Source) PendingFlushes() int {
	s.fmu.Lock()
	defer s.fmu.Unlock()
	return len(s.flushes)
}

func (s *Source) noteFlush(f *protocol.Flush) {
	s.fmu.Lock()
	defer s.fmu.Unlock()
	s.flushes = append(s.flushes, f)
	if s.flushCh == nil {
		s.flushCh = make(chan struct{}, 1)
	}
	select {
	case s.flushCh <- struct{}{}:
	default:
	}
	s.log().Info("the server asked for a drained point (FLUSH); the next run answers it", "server", s.ServerID, "flush", f.ID)
}

// takeFlushes hands the pending FLUSHes to a run about to take its point
// in time.
func (s *Source) takeFlushes() []*protocol.Flush {
	s.fmu.Lock()
	defer s.fmu.Unlock()
	f := s.flushes
	s.flushes = nil
	return f
}

// giveBackFlushes returns FLUSHes a failed run could not answer (a later
// run answers them, unless the link they came on is gone).
func (s *Source) giveBackFlushes(f []*protocol.Flush) {
	if len(f) == 0 {
		return
	}
	s.fmu.Lock()
	defer s.fmu.Unlock()
	s.flushes = append(f, s.flushes...)
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
	if s.mon == nil {
		m, err := s.dialMonitor(ctx)
		if err != nil {
			return nil, err
		}
		s.mon = m
	}
	f, err := Discover(ctx, s.mon)
	if errors.Is(err, qmp.ErrClosed) {
		// QEMU closed the QMP socket (restarted): dial it again.
		s.closeMonitorLocked()
		return s.discoverLocked(ctx)
	}
	if err != nil {
		return nil, err
	}
	s.facts = f
	return f, nil
}

// DropTracking removes the connector's dirty bitmaps from the VM and ends
// its data-plane session (its job was deleted). The replica stays; a
// later job's first run compares it by hash (RESCAN) rather than copying
// everything again.
func (s *Source) DropTracking(ctx context.Context) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.link != nil {
		s.link.close()
		s.link = nil
	}
	if _, err := s.discoverLocked(ctx); err != nil {
		s.log().Warn("remove dirty bitmaps of a deleted job", "server", s.ServerID, "err", err)
		return
	}
	nodes, err := namedNodes(ctx, s.mon)
	if err != nil {
		s.log().Warn("remove dirty bitmaps of a deleted job", "server", s.ServerID, "err", err)
		return
	}
	for _, d := range s.facts.Disks {
		for _, b := range nodes[d.Node].Bitmaps {
			if !strings.HasPrefix(b.Name, fleecePrefix) {
				continue
			}
			if err := s.mon.Execute(ctx, "block-dirty-bitmap-remove", map[string]any{"node": d.Node, "name": b.Name}, nil); err != nil {
				s.log().Warn("remove dirty bitmap of a deleted job", "server", s.ServerID, "disk", d.Name, "bitmap", b.Name, "err", err)
			}
		}
	}
	if s.st == nil {
		st, err := loadVMState(s.StateDir)
		if err != nil {
			s.log().Warn("connector state", "err", err)
			return
		}
		s.st = st
	}
	for _, ds := range s.st.Disks {
		ds.Bitmap, ds.Next = "", ""
		if ds.Synced {
			ds.NeedRescan = true
		}
	}
	if err := s.st.save(s.StateDir); err != nil {
		s.log().Warn("save connector state", "err", err)
	}
}

// Close ends the data-plane and QMP connections.
func (s *Source) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.link != nil {
		s.link.close()
		s.link = nil
	}
	s.closeMonitorLocked()
	return nil
}

func (s *Source) dialMonitor(ctx context.Context) (Monitor, error) {
	if s.DialMonitor != nil {
		return s.DialMonitor(ctx)
	}
	c, err := qmp.Dial(ctx, s.Socket)
	if err != nil {
		return nil, err
	}
	return c, nil
}

func (s *Source) closeMonitorLocked() {
	if c, ok := s.mon.(io.Closer); ok {
		c.Close()
	}
	s.mon = nil
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
	// FLUSHes of an earlier session are not answered on this one: the
	// server forgot them with that session.
	s.takeFlushes()
	l, err := openLink(ctx, s.Dial, hello, s.stats, s.noteFlush, s.Renew, s.log().With("server", s.ServerID))
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
