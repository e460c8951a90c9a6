package qemu

import "context"

// PowerDown presses the instance's ACPI power button.
func PowerDown(ctx context.Context, t *Target, id string) error {
	st, err := t.readState(id)
	if err != nil {
		return err
	}
	return qmpExec(ctx, st.QMP, "system_powerdown")
}
