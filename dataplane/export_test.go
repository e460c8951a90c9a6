package dataplane

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
