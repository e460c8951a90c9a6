package server_test

import (
	"context"
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/ferrymigrate/ferry/config"
	"github.com/ferrymigrate/ferry/server"
)

// The data-plane settings of the configuration reach the replication
// server.
func TestDataPlaneSettingsApplied(t *testing.T) {
	for _, tt := range []struct {
		name             string
		pool, bulk, cert string
		wantPool, wantPS int64 // pool bytes; per-session bulk credit asked for
		wantCert         time.Duration
	}{
		{"defaults", "", "", "", 1 << 30, 0, 0},
		{"set", "256", "32", "720h", 256 << 20, 32 << 20, 30 * 24 * time.Hour},
		{"pool off", "0", "", "", 0, 0, 0},
	} {
		t.Run(tt.name, func(t *testing.T) {
			cfg := config.Server{Dev: true, DataDir: t.TempDir(), Listen: "127.0.0.1:0", DataListen: "127.0.0.1:0",
				BulkCreditPool: tt.pool, BulkCredit: tt.bulk, AgentCertValidity: tt.cert}
			if err := cfg.Finish(); err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			srv, err := server.Start(ctx, cfg, slog.New(slog.NewTextHandler(io.Discard, nil)), io.Discard)
			if err != nil {
				t.Fatal(err)
			}
			defer srv.Close()
			dp := srv.DataPlane()
			if got := dp.BulkCreditPoolBytes(); got != tt.wantPool {
				t.Errorf("bulk credit pool %d, want %d", got, tt.wantPool)
			}
			if dp.BulkCreditBytes != tt.wantPS {
				t.Errorf("bulk credit per agent %d, want %d", dp.BulkCreditBytes, tt.wantPS)
			}
			if dp.AgentCertValidity != tt.wantCert || srv.ControlPlane().AgentCertValidity != tt.wantCert {
				t.Errorf("agent certificate validity %v (data plane) and %v (pairing), want %v", dp.AgentCertValidity, srv.ControlPlane().AgentCertValidity, tt.wantCert)
			}
		})
	}
}
