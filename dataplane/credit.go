package dataplane

import (
	"github.com/ferrymigrate/ferry/protocol"
)

// Write credit. A session's agent may have CreditBytes of WRITE payload
// sent and not yet acknowledged. An acknowledgement waits for the group
// commit that makes the data durable (the staged chunks' fsync, then the
// journal's), so at a fixed commit time the credit bounds a session's
// throughput. While an agent copies whole disks (initial sync, rescan)
// its session gets BulkCreditBytes instead, the extra taken from a pool
// that all sessions share (BulkCreditPool), so a fleet of agents in
// initial sync cannot add more than the pool to what the server holds
// un-acknowledged. The initial sync's whole chunks wait for their commit
// as staged objects in the page cache, not in the server's heap; a
// rescan's smaller writes wait in the journal's queue.
const (
	defaultCreditBytes     = 16 << 20
	defaultBulkCreditBytes = 64 << 20
	defaultBulkCreditPool  = 1 << 30
)

func (s *Server) creditBytes() int64 {
	if s.CreditBytes > 0 {
		return max(s.CreditBytes, protocol.MaxFrame)
	}
	return defaultCreditBytes
}

// bulkExtra is the credit a bulk session gets beyond creditBytes.
func (s *Server) bulkExtra() int64 {
	bulk := s.BulkCreditBytes
	if bulk == 0 {
		bulk = defaultBulkCreditBytes
	}
	return max(bulk-s.creditBytes(), 0)
}

func (s *Server) bulkPool() int64 {
	switch {
	case s.BulkCreditPool > 0:
		return s.BulkCreditPool
	case s.BulkCreditPool < 0:
		return 0
	}
	return defaultBulkCreditPool
}

// reserveBulk takes n bytes of the bulk credit pool, if it has them.
func (s *Server) reserveBulk(n int64) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.bulkUsed+n > s.bulkPool() {
		return false
	}
	s.bulkUsed += n
	return true
}

func (s *Server) releaseBulk(n int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.bulkUsed -= n
}

// BulkCreditPoolBytes returns the bulk credit pool's size: what
// BulkCreditPool asks for, 0 when it is off.
func (s *Server) BulkCreditPoolBytes() int64 {
	return s.bulkPool()
}

// BulkCreditInUse returns the bulk credit the live sessions hold beyond
// CreditBytes (for tests and metrics).
func (s *Server) BulkCreditInUse() int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.bulkUsed
}

// grantCredit sends the agent the credit for whether it copies whole
// disks now (bulk), when that changes: the bulk credit if the pool has
// room for it, else the base. It is called from the session's start and
// its reader only, which own bulkHeld.
func (ss *session) grantCredit(bulk bool, first bool) error {
	base := ss.s.creditBytes()
	switch {
	case bulk && ss.bulkHeld == 0:
		if extra := ss.s.bulkExtra(); extra > 0 && ss.s.reserveBulk(extra) {
			ss.bulkHeld = extra
			return ss.send(&protocol.Credit{Bytes: base + extra})
		}
	case !bulk && ss.bulkHeld > 0:
		ss.s.releaseBulk(ss.bulkHeld)
		ss.bulkHeld = 0
		return ss.send(&protocol.Credit{Bytes: base})
	}
	if first {
		return ss.send(&protocol.Credit{Bytes: base})
	}
	return nil
}

// releaseCredit returns the session's share of the bulk pool; the
// session has ended.
func (ss *session) releaseCredit() {
	if ss.bulkHeld > 0 {
		ss.s.releaseBulk(ss.bulkHeld)
		ss.bulkHeld = 0
	}
}

// bulkPhase reports whether an agent's STATS say it copies whole disks.
func bulkPhase(st *protocol.Stats) bool {
	for _, d := range st.Disks {
		if d.Phase == protocol.PhaseInitialSync || d.Phase == protocol.PhaseRescan {
			return true
		}
	}
	return false
}

// bulkStart reports whether a session starts copying whole disks: a disk
// whose initial sync is not done, or that the server asked to rescan.
func bulkStart(h *protocol.Hello, ack *protocol.HelloAck) bool {
	for i, d := range h.Disks {
		if !d.SyncDone || (i < len(ack.Disks) && ack.Disks[i].Rescan) {
			return true
		}
	}
	return false
}
