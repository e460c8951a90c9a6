package server

import (
	"testing"

	"github.com/ferrymigrate/ferry"
)

func TestSize(t *testing.T) {
	const gib = 1 << 30
	tests := []struct {
		name      string
		sizing    ferry.RightSizing
		cpus, mem int   // launch settings
		srcCPUs   int   // source facts
		srcRAM    int64 // source facts
		wantCPUs  int
		wantMem   int
	}{
		{"NONE uses the settings", ferry.RightSizingNone, 2, 2048, 8, 32 * gib, 2, 2048},
		{"BASIC uses the source", ferry.RightSizingBasic, 2, 2048, 8, 32 * gib, 8, 16 << 10},
		{"BASIC caps at 16 CPUs", ferry.RightSizingBasic, 2, 2048, 64, 4 * gib, 16, 4096},
		{"BASIC without facts keeps the settings", ferry.RightSizingBasic, 4, 1024, 0, 0, 4, 1024},
		{"floors: 1 CPU, 128 MiB", ferry.RightSizingNone, 0, 0, 0, 0, 1, 128},
		{"BASIC with a tiny source", ferry.RightSizingBasic, 2, 2048, 1, 64 << 20, 1, 128},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := &ferry.SourceServer{CPUs: tt.srcCPUs, RAMBytes: tt.srcRAM}
			srv.LaunchSetup.RightSizing, srv.LaunchSetup.CPUs, srv.LaunchSetup.MemoryMiB = tt.sizing, tt.cpus, tt.mem
			cpus, mem := size(srv)
			if cpus != tt.wantCPUs || mem != tt.wantMem {
				t.Errorf("size = %d CPUs, %d MiB; want %d, %d", cpus, mem, tt.wantCPUs, tt.wantMem)
			}
		})
	}
}
