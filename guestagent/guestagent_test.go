package guestagent

import (
	"strings"
	"testing"
)

func TestDecodeAnswer(t *testing.T) {
	for _, tc := range []struct {
		name, line string
		want       int
		err        string
	}{
		{"return", `{"return": {"pid": 42}}`, 42, ""},
		{"after a sync delimiter", "\xff{\"return\": {\"pid\": 7}}\n", 7, ""},
		{"empty return", `{"return": {}}`, 0, ""},
		{"agent error", `{"error": {"class": "GenericError", "desc": "Guest agent command failed"}}`, 0, "GenericError: Guest agent command failed"},
		{"not JSON", `garbage`, 0, "decode agent answer"},
		{"wrong type", `{"return": {"pid": "x"}}`, 0, "decode agent answer"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var out struct {
				PID int `json:"pid"`
			}
			err := decodeAnswer([]byte(tc.line), &out)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("decodeAnswer = %v, want an error containing %q", err, tc.err)
				}
				return
			}
			if err != nil || out.PID != tc.want {
				t.Fatalf("decodeAnswer = %d, %v; want %d", out.PID, err, tc.want)
			}
		})
	}
}
