package libvirt

// ForgetDomainIDs rewrites instance id's state as a server killed between
// the state's first write and the domain's creation being recorded leaves
// it: the domain's name only, no UUID or PID.
func ForgetDomainIDs(t *Target, id string) error {
	st, err := t.readState(id)
	if err != nil {
		return err
	}
	st.UUID, st.PID = "", 0
	return t.states().Write(id, st)
}
