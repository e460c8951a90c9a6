package launch

import "testing"

// TestValidNameRefusesInjection: instance names end up in directory names
// and in QEMU's -name option; nothing that could escape a directory, start
// an option, or split a QEMU option string is accepted.
func TestValidNameRefusesInjection(t *testing.T) {
	tests := []struct {
		name string
		want bool
	}{
		{"web-01", true},
		{"a..b", true}, // one path component, no escape
		{"..", false},
		{"../etc", false},
		{"a/../../b", false},
		{"-daemonize", false},
		{"a,file=/etc/shadow", false},
		{"a=b", false},
		{"a b", false},
		{"a\nb", false},
		{"a;reboot", false},
		{"$(id)", false},
		{"`id`", false},
		{"a\x00b", false},
		{"wéb", false},
	}
	for _, tc := range tests {
		if got := ValidName(tc.name); got != tc.want {
			t.Errorf("ValidName(%q) = %v, want %v", tc.name, got, tc.want)
		}
	}
}
