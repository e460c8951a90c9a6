package agent

import "testing"

func TestCompressGate(t *testing.T) {
	tests := []struct {
		name    string
		results []bool // outcome of each record that is tried, in order
		records int    // records offered
		want    int    // of them tried
	}{
		{"compressible stream tries every record", repeat(true, 100), 100, 100},
		{"incompressible stream backs off", repeat(false, 100), 8 + 16*5, 8 + 5},
		{"a success resets the streak", append(repeat(false, 7), repeat(true, 50)...), 57, 57},
		{"turns compressible: tried at the next probe", append(repeat(false, 8), repeat(true, 50)...), 8 + 16 + 20, 8 + 1 + 20},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var g compressGate
			tried := 0
			for range tt.records {
				if !g.try() {
					continue
				}
				if tried >= len(tt.results) {
					t.Fatalf("tried more records than results given (%d)", tried)
				}
				g.result(tt.results[tried])
				tried++
			}
			if tried != tt.want {
				t.Errorf("tried %d of %d records, want %d", tried, tt.records, tt.want)
			}
		})
	}
}

func repeat(v bool, n int) []bool {
	s := make([]bool, n)
	for i := range s {
		s[i] = v
	}
	return s
}
