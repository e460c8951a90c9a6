package backend

import "testing"

func TestValidName(t *testing.T) {
	tests := []struct {
		name string
		want bool
	}{
		{"config", true},
		{"chunks/ab/abcdef", true},
		{"maps/disk-1/00000000000000ff", true},
		{"", false},
		{"/abs", false},
		{"a//b", false},
		{"a/", false},
		{"../x", false},
		{"a/./b", false},
		{".hidden", false},
		{"a/.tmp-1", false},
		{"sp ace", false},
		{"a\\b", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := ValidName(tt.name); got != tt.want {
				t.Errorf("ValidName(%q) = %v, want %v", tt.name, got, tt.want)
			}
		})
	}
}
