package dataplane

import (
	"sync"
	"sync/atomic"
	"time"

	"github.com/ferrymigrate/ferry/protocol"
)

// Traffic is what the replication server has seen of one server's agent
// since the process started (it is not kept across restarts).
type Traffic struct {
	// ReceivedBytes is the data of WRITEs received, uncompressed.
	ReceivedBytes int64
	// StagingBusy is the time spent appending received writes to the
	// replica journal and waiting for them to be durable: when it grows
	// about as fast as the clock, the staging write is the bottleneck.
	StagingBusy time.Duration
	// Connected says whether the agent has a session now.
	Connected bool
	// Agent is where the agent's sender spent its time, cumulative since
	// the agent started, from its latest STATS; nil when the agent does not
	// report it (before protocol revision 2, or no STATS yet).
	Agent *protocol.AgentTiming
}

// serverTraffic is the live counters behind Traffic.
type serverTraffic struct {
	received    atomic.Int64
	stagingNano atomic.Int64

	mu    sync.Mutex
	agent *protocol.AgentTiming // guarded by mu
}

func (t *serverTraffic) setAgentTiming(a protocol.AgentTiming) {
	t.mu.Lock()
	t.agent = &a
	t.mu.Unlock()
}

// trafficOf returns the counters of server id, creating them.
func (s *Server) trafficOf(id string) *serverTraffic {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.traffic == nil {
		s.traffic = map[string]*serverTraffic{}
	}
	t := s.traffic[id]
	if t == nil {
		t = &serverTraffic{}
		s.traffic[id] = t
	}
	return t
}

// Traffic reports server id's traffic since the process started.
func (s *Server) Traffic(id string) Traffic {
	s.mu.Lock()
	t := s.traffic[id]
	_, connected := s.sessions[id]
	s.mu.Unlock()
	if t == nil {
		return Traffic{Connected: connected}
	}
	tr := Traffic{ReceivedBytes: t.received.Load(), StagingBusy: time.Duration(t.stagingNano.Load()), Connected: connected}
	t.mu.Lock()
	if t.agent != nil {
		a := *t.agent
		tr.Agent = &a
	}
	t.mu.Unlock()
	return tr
}

// Sessions returns the number of agents connected now.
func (s *Server) Sessions() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.sessions)
}
