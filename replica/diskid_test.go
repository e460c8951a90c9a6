package replica

import "testing"

// TestValidDiskIDRefusesEscapes: disk ids name directories and objects in
// the store and come from agents and CLI flags.
func TestValidDiskIDRefusesEscapes(t *testing.T) {
	tests := []struct {
		id   string
		want bool
	}{
		{"s-9fb27d5d371d3ee77.loop4", true},
		{"", false},
		{".", false},
		{"..", false},
		{"../x", false},
		{"a/b", false},
		{"/etc", false},
		{".hidden", false},
		{"a\x00b", false},
		{"a b", false},
		{"a\\b", false},
		{string(make([]byte, 129)), false},
	}
	for _, tc := range tests {
		if got := ValidDiskID(tc.id); got != tc.want {
			t.Errorf("ValidDiskID(%q) = %v, want %v", tc.id, got, tc.want)
		}
	}
}
