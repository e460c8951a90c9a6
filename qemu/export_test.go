package qemu

import (
	"context"
	"time"
)

// PowerDown presses the instance's ACPI power button.
func PowerDown(ctx context.Context, t *Target, id string) error {
	st, err := t.readState(id)
	if err != nil {
		return err
	}
	return qmpExec(ctx, st.QMP, "system_powerdown")
}

// ForgetPID rewrites instance id's state as a server killed between
// QEMU's start and the state's second write leaves it: without the PID
// or the start time.
func ForgetPID(t *Target, id string) error {
	st, err := t.readState(id)
	if err != nil {
		return err
	}
	st.PID, st.StartedAt = 0, time.Time{}
	return t.states().Write(id, st)
}
