package sqlite

import "testing"

// TestSideKey: equal maps give equal keys and different maps different
// ones, however their entries could be run together.
func TestSideKey(t *testing.T) {
	cases := []struct {
		name string
		a, b map[string]string
		same bool
	}{
		{"both empty", nil, map[string]string{}, true},
		{"same entries", map[string]string{"a": "1", "b": "2"}, map[string]string{"b": "2", "a": "1"}, true},
		{"value differs", map[string]string{"a": "1"}, map[string]string{"a": "2"}, false},
		{"entry added", map[string]string{"a": "1"}, map[string]string{"a": "1", "b": ""}, false},
		{"key and value run together", map[string]string{"ab": "c"}, map[string]string{"a": "bc"}, false},
		{"entries run together", map[string]string{"a": "1b2"}, map[string]string{"a": "1", "b": "2"}, false},
		{"empty key", map[string]string{"": "a"}, map[string]string{"a": ""}, false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if got := sideKey(c.a) == sideKey(c.b); got != c.same {
				t.Errorf("sideKey(%v) == sideKey(%v) is %v, want %v", c.a, c.b, got, c.same)
			}
		})
	}
}
