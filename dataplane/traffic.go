package dataplane

import (
	"sync/atomic"
	"time"
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
}

// serverTraffic is the live counters behind Traffic.
type serverTraffic struct {
	received    atomic.Int64
	stagingNano atomic.Int64
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
	return Traffic{ReceivedBytes: t.received.Load(), StagingBusy: time.Duration(t.stagingNano.Load()), Connected: connected}
}

// Sessions returns the number of agents connected now.
func (s *Server) Sessions() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.sessions)
}
