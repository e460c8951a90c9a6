package libvirt

import "time"

// ForgetDomainIDs rewrites instance id's state as a server killed between
// the state's first write and the domain's creation being recorded leaves
// it: the domain's name only, no UUID, PID or start time.
func ForgetDomainIDs(t *Target, id string) error {
	st, err := t.readState(id)
	if err != nil {
		return err
	}
	st.UUID, st.PID, st.StartedAt = "", 0, time.Time{}
	return t.states().Write(id, st)
}
