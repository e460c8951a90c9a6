package dataplane

import "github.com/ferrymigrate/ferry/protocol"

// TryConnect is tryConnect for tests outside the package.
var TryConnect = tryConnect

// DropsLogged returns how many unplanned session ends of server id s
// keeps in its drop log, for tests outside the package.
func DropsLogged(s *Server, id string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	if l := s.drops[id]; l != nil {
		return len(l.at)
	}
	return 0
}

// HasTraffic reports whether s keeps traffic counters for server id.
func HasTraffic(s *Server, id string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	_, ok := s.traffic[id]
	return ok
}

// SetSendFault makes s's sessions fail to send the message types f
// returns an error for, as a connection that broke would.
func SetSendFault(s *Server, f func(protocol.Type) error) { s.sendFault = f }
