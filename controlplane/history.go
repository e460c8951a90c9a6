package controlplane

import (
	"context"
	"fmt"
	"net/http"
	"sync"
	"time"

	"github.com/ferrymigrate/ferry"
	"github.com/ferrymigrate/ferry/api"
)

// History defaults: a sample every 10 s, two hours kept per server (about
// 40 bytes a sample, so 3,000 servers hold about 90 MB).
const (
	DefaultHistoryInterval = 10 * time.Second
	DefaultHistorySamples  = 720
)

// Traffic is what the replication server has seen of one server's agent
// since it started.
type Traffic struct {
	ReceivedBytes int64
	// StagingBusy is the time spent writing the agent's data to the
	// staging store and waiting for it to be durable.
	StagingBusy time.Duration
	Connected   bool
	// Agent is where the agent's sender spent its time since the agent
	// started, from its latest STATS; nil when the agent does not say.
	Agent *AgentTiming
}

// AgentTiming is the agent sender's cumulative time by activity (see
// protocol.AgentTiming).
type AgentTiming struct {
	Read, Network, Throttle, Idle time.Duration
}

func (a AgentTiming) total() time.Duration { return a.Read + a.Network + a.Throttle + a.Idle }

// DataPlane reports the replication server's live figures; package server
// adapts *dataplane.Server to it.
type DataPlane interface {
	// Traffic returns a server's counters since the process started.
	Traffic(serverID string) Traffic
	// Sessions returns the number of agents connected now.
	Sessions() int
}

// sample is one history point, kept compact.
type sample struct {
	unixNano   int64
	backlog    int64
	lag        float32
	throughput float32
	busy       float32
	state      ferry.ReplicationState
	// The agent's shares of the interval; hasAgent says they are known.
	hasAgent                        bool
	read, network, throttle, idleSh float32
}

// ring is a bounded history of one server; the oldest samples go first.
type ring struct {
	buf  []sample // grows to size, then wraps
	size int
	next int  // where the next sample goes once full
	full bool // buf has wrapped
	// The raw counters of the previous sample, for rates.
	prevAt       time.Time
	prevReceived int64
	prevBusy     time.Duration
	prevProgress int64
	prevAgent    *AgentTiming
}

func (r *ring) add(s sample) {
	// The buffer grows to its size as samples come (a server with 10,000
	// agents would otherwise hold 2 h of empty slots for each from the
	// start, about 350 MB).
	if len(r.buf) < r.size {
		if len(r.buf) == cap(r.buf) {
			nb := make([]sample, len(r.buf), min(max(2*cap(r.buf), 8), r.size))
			copy(nb, r.buf)
			r.buf = nb
		}
		r.buf = append(r.buf, s)
		return
	}
	r.buf[r.next] = s
	r.next = (r.next + 1) % len(r.buf)
	r.full = true
}

// samples returns the samples, oldest first.
func (r *ring) samples() []sample {
	if !r.full {
		return append([]sample(nil), r.buf...)
	}
	return append(append([]sample(nil), r.buf[r.next:]...), r.buf[:r.next]...)
}

// historyBook holds every server's ring.
type historyBook struct {
	mu    sync.Mutex
	rings map[string]*ring // guarded by mu
}

func (s *Server) historyInterval() time.Duration {
	if s.HistoryInterval > 0 {
		return s.HistoryInterval
	}
	return DefaultHistoryInterval
}

// RunHistory samples every live server's replication figures from the
// store (and the data plane's traffic, if set) every HistoryInterval until
// ctx ends. One poller serves every viewer of GET /servers/{id}/history.
func (s *Server) RunHistory(ctx context.Context) {
	t := time.NewTicker(s.historyInterval())
	defer t.Stop()
	for {
		if err := s.SampleHistory(ctx); err != nil && ctx.Err() == nil {
			s.log().Warn("sample replication history", "err", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// SampleHistory takes one history sample of every live server and forgets
// servers that are gone or archived.
func (s *Server) SampleHistory(ctx context.Context) error {
	srvs, err := allServers(ctx, s.Store, ferry.ServerFilter{})
	if err != nil {
		return fmt.Errorf("list servers: %w", err)
	}
	now := s.now()
	n := s.HistorySamples
	if n <= 0 {
		n = DefaultHistorySamples
	}
	s.history.mu.Lock()
	defer s.history.mu.Unlock()
	if s.history.rings == nil {
		s.history.rings = map[string]*ring{}
	}
	live := make(map[string]bool, len(srvs))
	for _, srv := range srvs {
		live[srv.ID] = true
		r := s.history.rings[srv.ID]
		if r == nil {
			r = &ring{size: n}
			s.history.rings[srv.ID] = r
		}
		var backlog, progress int64
		for _, d := range srv.Disks {
			backlog += d.BackloggedBytes
			progress += d.ReplicatedBytes + d.RescannedBytes
		}
		var tr Traffic
		if s.DataPlane != nil {
			tr = s.DataPlane.Traffic(srv.ID)
		}
		sm := sample{unixNano: now.UnixNano(), backlog: backlog, lag: float32(srv.Replication.LagSeconds), state: srv.Replication.State}
		if !r.prevAt.IsZero() {
			if dt := now.Sub(r.prevAt).Seconds(); dt > 0 {
				// Received bytes count continuous writes too; without a data
				// plane, sync and rescan progress is the best measure.
				moved := tr.ReceivedBytes - r.prevReceived
				if s.DataPlane == nil {
					moved = progress - r.prevProgress
				}
				sm.throughput = float32(max(moved, 0)) / float32(dt)
				sm.busy = float32(min(max((tr.StagingBusy-r.prevBusy).Seconds()/dt, 0), 1))
			}
			agentShares(&sm, r.prevAgent, tr.Agent)
		}
		r.prevAt, r.prevReceived, r.prevBusy, r.prevProgress, r.prevAgent = now, tr.ReceivedBytes, tr.StagingBusy, progress, tr.Agent
		r.add(sm)
	}
	for id := range s.history.rings {
		if !live[id] {
			delete(s.history.rings, id)
		}
	}
	return nil
}

// agentShares sets a sample's agent shares from two cumulative timings.
// A restarted agent counts from zero again: its new figures are the
// interval's.
func agentShares(sm *sample, prev, cur *AgentTiming) {
	if cur == nil {
		return
	}
	d := *cur
	if prev != nil && cur.total() >= prev.total() && cur.Read >= prev.Read && cur.Network >= prev.Network &&
		cur.Throttle >= prev.Throttle && cur.Idle >= prev.Idle {
		d = AgentTiming{Read: cur.Read - prev.Read, Network: cur.Network - prev.Network,
			Throttle: cur.Throttle - prev.Throttle, Idle: cur.Idle - prev.Idle}
	}
	tot := d.total().Seconds()
	if tot <= 0 {
		return
	}
	sm.hasAgent = true
	sm.read, sm.network = float32(d.Read.Seconds()/tot), float32(d.Network.Seconds()/tot)
	sm.throttle, sm.idleSh = float32(d.Throttle.Seconds()/tot), float32(d.Idle.Seconds()/tot)
}

// historyOf returns a server's samples, oldest first.
func (s *Server) historyOf(id string) []api.HistorySample {
	s.history.mu.Lock()
	r := s.history.rings[id]
	var raw []sample
	if r != nil {
		raw = r.samples()
	}
	s.history.mu.Unlock()
	out := make([]api.HistorySample, 0, len(raw))
	for _, x := range raw {
		hs := api.HistorySample{
			Time: time.Unix(0, x.unixNano).UTC(), LagSeconds: float64(x.lag), BacklogBytes: x.backlog,
			ThroughputBytesPerSec: float64(x.throughput), StagingBusy: float64(x.busy), State: x.state,
		}
		if x.hasAgent {
			hs.Agent = &api.AgentShares{Read: float64(x.read), Network: float64(x.network), Throttle: float64(x.throttle), Idle: float64(x.idleSh)}
		}
		out = append(out, hs)
	}
	return out
}

func (s *Server) serverHistory(w http.ResponseWriter, r *http.Request, _ *caller) error {
	srv, err := s.Store.Server(r.Context(), r.PathValue("id"))
	if err != nil {
		return err
	}
	samples := s.historyOf(srv.ID)
	writeJSON(w, http.StatusOK, api.ServerHistory{
		IntervalSeconds: s.historyInterval().Seconds(),
		Samples:         samples,
		Diagnosis:       Diagnose(srv, samples, s.now()),
	})
	return nil
}

// DiagnosisWindow is how far back Diagnose looks.
const DiagnosisWindow = 5 * time.Minute

// Diagnose says in plain words whether a server's lag grows and what
// limits it, from its recent history. The rules, in order: replication not
// running; too little history; lag and backlog steady; the bandwidth
// throttle (throughput at the throttle, or the agent mostly held back by
// it); the staging write (the replication server busy writing most of the
// time); then, from the agent's own timing, idle (it learns of writes
// late), the network (waiting for credit, hash replies or the connection;
// credit waits while the staging store is half busy count as staging
// write), or the source read. An agent that does not report its timing
// leaves source read and network together, marked Limited.
func Diagnose(srv *ferry.SourceServer, samples []api.HistorySample, now time.Time) api.Diagnosis {
	var win []api.HistorySample
	for _, x := range samples {
		if now.Sub(x.Time) <= DiagnosisWindow {
			win = append(win, x)
		}
	}
	switch srv.Replication.State {
	case ferry.ReplicationPaused, ferry.ReplicationStopped, ferry.ReplicationDisconnected, ferry.ReplicationStalled:
		return api.Diagnosis{Bottleneck: api.BottleneckNotSending,
			Summary: fmt.Sprintf("Replication is %s: nothing is being sent, so lag grows with every write on the source.", srv.Replication.State)}
	}
	if len(win) < 3 {
		return api.Diagnosis{Bottleneck: api.BottleneckUnknown, Summary: "Not enough history yet: a diagnosis needs about 30 seconds of samples."}
	}
	first, last := win[0], win[len(win)-1]
	lagGrows := last.LagSeconds >= 10 && last.LagSeconds-first.LagSeconds >= 5
	backlogGrows := last.BacklogBytes >= 64<<20 && float64(last.BacklogBytes) > 1.1*float64(first.BacklogBytes)
	if !lagGrows && !backlogGrows {
		return api.Diagnosis{Bottleneck: api.BottleneckNone,
			Summary: fmt.Sprintf("Replication keeps up: lag %.0f s, backlog %s.", last.LagSeconds, humanBytes(last.BacklogBytes))}
	}
	var tput, busy float64
	var ag api.AgentShares
	agentN := 0
	for _, x := range win[1:] {
		tput += x.ThroughputBytesPerSec
		busy += x.StagingBusy
		if a := x.Agent; a != nil {
			ag.Read, ag.Network, ag.Throttle, ag.Idle = ag.Read+a.Read, ag.Network+a.Network, ag.Throttle+a.Throttle, ag.Idle+a.Idle
			agentN++
		}
	}
	tput /= float64(len(win) - 1)
	busy /= float64(len(win) - 1)
	if agentN > 0 {
		n := float64(agentN)
		ag = api.AgentShares{Read: ag.Read / n, Network: ag.Network / n, Throttle: ag.Throttle / n, Idle: ag.Idle / n}
	}
	grow := fmt.Sprintf("Lag grew from %.0f s to %.0f s (backlog %s) over the last %s while %s/s arrived", first.LagSeconds, last.LagSeconds,
		humanBytes(last.BacklogBytes), last.Time.Sub(first.Time).Round(time.Second), humanBytes(int64(tput)))
	if bw := srv.ReplicationSetup.BandwidthBytesPerSec; bw > 0 && (tput >= 0.9*float64(bw) || (agentN > 0 && ag.Throttle >= 0.5)) {
		return api.Diagnosis{Bottleneck: api.BottleneckThrottle,
			Summary: fmt.Sprintf("%s: the bandwidth throttle (%s/s) is the limit. Raise or remove it to catch up.", grow, humanBytes(bw))}
	}
	if busy >= 0.8 {
		return api.Diagnosis{Bottleneck: api.BottleneckStagingWrite,
			Summary: fmt.Sprintf("%s: staging write is the bottleneck; the replication server spent %.0f%% of the time writing to the staging store and waiting for it to be durable. Check the staging disk or object store.", grow, 100*busy)}
	}
	if agentN == 0 {
		return api.Diagnosis{Bottleneck: api.BottleneckSourceOrNetwork, Limited: true,
			Summary: fmt.Sprintf("%s: the replication server waited for data (staging busy only %.0f%% of the time), so the source disk read or the network is the bottleneck. This agent does not report where it waits (it predates protocol revision 2), so Ferry cannot tell the two apart; upgrade the agent.", grow, 100*busy)}
	}
	shares := fmt.Sprintf("the agent spent %.0f%% of its time reading the source, %.0f%% waiting on the network, %.0f%% idle", 100*ag.Read, 100*ag.Network, 100*ag.Idle)
	switch {
	case ag.Idle >= 0.5:
		return api.Diagnosis{Bottleneck: api.BottleneckAgentIdle,
			Summary: fmt.Sprintf("%s: %s. It had nothing to send most of the time, so it learns of writes late: its change tracker is probably the periodic rescan (eBPF did not load) or the backlog map is coarse. Check the agent's log for the tracker it uses.", grow, shares)}
	case ag.Network >= ag.Read && busy >= 0.5:
		return api.Diagnosis{Bottleneck: api.BottleneckStagingWrite,
			Summary: fmt.Sprintf("%s: %s, mostly for credit that the replication server returns as its staging writes become durable (busy %.0f%% of the time): staging write is the bottleneck. Check the staging disk or object store.", grow, shares, 100*busy)}
	case ag.Network >= ag.Read:
		return api.Diagnosis{Bottleneck: api.BottleneckNetwork,
			Summary: fmt.Sprintf("%s: %s, and the replication server's staging writes were busy only %.0f%% of the time: the network is the bottleneck. Check the link's bandwidth, latency and loss between the source and the replication server.", grow, shares, 100*busy)}
	default:
		return api.Diagnosis{Bottleneck: api.BottleneckSourceRead,
			Summary: fmt.Sprintf("%s: %s: reading the source disk is the bottleneck. Check the source disk's load (iostat), or whether the agent is short of CPU for compression.", grow, shares)}
	}
}

// humanBytes prints a byte count in IEC units.
func humanBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}
