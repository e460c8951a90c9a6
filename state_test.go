package ferry

import (
	"errors"
	"strings"
	"testing"
)

func TestCheckTransition(t *testing.T) {
	tests := []struct {
		from, to LifecycleState
		ok       bool
	}{
		{LifecycleNotReady, LifecycleReadyForTest, true},
		{LifecycleReadyForTest, LifecycleTesting, true},
		{LifecycleTesting, LifecycleReadyForCutover, true},
		{LifecycleTesting, LifecycleReadyForTest, true},
		{LifecycleReadyForCutover, LifecycleCuttingOver, true},
		{LifecycleCuttingOver, LifecycleCutover, true},
		{LifecycleCutover, LifecycleDisconnected, true},
		{LifecycleDisconnected, LifecycleNotReady, true},
		{LifecycleDiscovered, LifecycleNotReady, true},
		{LifecycleNotReady, LifecycleNotReady, true},
		{LifecycleNotReady, LifecycleTesting, false},
		{LifecycleNotReady, LifecycleCutover, false},
		{LifecycleCutover, LifecycleTesting, false},
		{LifecycleCutover, LifecycleReadyForTest, false},
		{LifecycleTesting, LifecycleCutover, false},
		{LifecycleDisconnected, LifecycleCutover, false},
		{LifecycleStopped, LifecycleTesting, false},
		{"BOGUS", LifecycleNotReady, false},
		{LifecycleNotReady, "BOGUS", false},
	}
	for _, tt := range tests {
		t.Run(string(tt.from)+"->"+string(tt.to), func(t *testing.T) {
			err := CheckTransition(tt.from, tt.to)
			if got := err == nil; got != tt.ok {
				t.Fatalf("CheckTransition(%s, %s) = %v, want ok=%v", tt.from, tt.to, err, tt.ok)
			}
			if err != nil {
				var te *TransitionError
				if !errors.As(err, &te) {
					t.Fatalf("error %T is not a *TransitionError", err)
				}
				if !strings.Contains(err.Error(), string(tt.from)) || !strings.Contains(err.Error(), string(tt.to)) {
					t.Fatalf("error %q does not name both states", err)
				}
			}
		})
	}
}

// Every state in the table is a real state, and every state has an entry,
// so a new state cannot be added without deciding where it may go.
func TestTransitionTableComplete(t *testing.T) {
	for _, s := range LifecycleStates {
		if _, ok := lifecycleTransitions[s]; !ok {
			t.Errorf("state %s has no transition entry", s)
		}
	}
	for from, tos := range lifecycleTransitions {
		if !from.Valid() {
			t.Errorf("table key %s is not a state", from)
		}
		for _, to := range tos {
			if !to.Valid() {
				t.Errorf("%s -> %s: target is not a state", from, to)
			}
		}
	}
}

func TestCanArchive(t *testing.T) {
	for _, s := range LifecycleStates {
		want := s == LifecycleDisconnected || s == LifecycleCutover
		if got := CanArchive(s); got != want {
			t.Errorf("CanArchive(%s) = %v, want %v", s, got, want)
		}
	}
}

func TestRoleAllows(t *testing.T) {
	tests := []struct {
		have, need Role
		want       bool
	}{
		{RoleAdmin, RoleAdmin, true}, {RoleAdmin, RoleOperator, true}, {RoleAdmin, RoleViewer, true},
		{RoleOperator, RoleAdmin, false}, {RoleOperator, RoleOperator, true}, {RoleOperator, RoleViewer, true},
		{RoleViewer, RoleAdmin, false}, {RoleViewer, RoleOperator, false}, {RoleViewer, RoleViewer, true},
		{"", RoleViewer, false}, {RoleAdmin, "", false},
	}
	for _, tt := range tests {
		if got := tt.have.Allows(tt.need); got != tt.want {
			t.Errorf("%q.Allows(%q) = %v, want %v", tt.have, tt.need, got, tt.want)
		}
	}
}
