package pki

import (
	"bytes"
	"strings"
	"testing"
)

func TestParseFingerprint(t *testing.T) {
	want := make([]byte, 32)
	for i := range want {
		want[i] = byte(i*7 + 0xa0)
	}
	lower := "a0a7aeb5bcc3cad1d8dfe6edf4fb020910171e252c333a41484f565d646b7279"
	var pairs []string
	for i := 0; i < len(lower); i += 2 {
		pairs = append(pairs, lower[i:i+2])
	}
	colons := strings.ToUpper(strings.Join(pairs, ":"))

	tests := []struct {
		name    string
		in      string
		wantErr string // substring; "" means success
	}{
		{"lower", lower, ""},
		{"upper", strings.ToUpper(lower), ""},
		{"colons upper", colons, ""},
		{"colons lower", strings.ToLower(colons), ""},
		{"prefix and spaces", "  SHA256:" + lower + "\n", ""},
		{"empty", "", "empty"},
		{"spaces only", "   ", "empty"},
		{"short", lower[:62], "62 hex digits; want 64"},
		{"long", lower + "00", "66 hex digits; want 64"},
		{"non-hex", "zz" + lower[2:], "'z' is not a hex digit (at digit 1)"},
		{"odd group", "a" + colons[2:], `group 1 is "a"`},
		{"empty group", colons + ":", `group 33 is ""`},
		{"sha1 length", strings.Repeat("ab", 20), "40 hex digits; want 64"},
		{"space inside", lower[:10] + " " + lower[11:], "' ' is not a hex digit"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseFingerprint(tt.in)
			if tt.wantErr == "" {
				if err != nil {
					t.Fatalf("ParseFingerprint(%q) error: %v", tt.in, err)
				}
				if !bytes.Equal(got, want) {
					t.Fatalf("ParseFingerprint(%q) = %x, want %x", tt.in, got, want)
				}
				return
			}
			if err == nil {
				t.Fatalf("ParseFingerprint(%q) = %x, want error containing %q", tt.in, got, tt.wantErr)
			}
			if !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("ParseFingerprint(%q) error = %q, want it to contain %q", tt.in, err, tt.wantErr)
			}
		})
	}
}
