package dataplane_test

import (
	"testing"
	"time"

	"github.com/ferrymigrate/ferry/dataplane"
	"github.com/ferrymigrate/ferry/protocol"
)

// readCredit reads frames until a CREDIT and returns its bytes.
func (rs *rawSession) readCredit(t *testing.T) int64 {
	t.Helper()
	return rs.readUntil(t, "CREDIT", func(m protocol.Message) bool {
		_, ok := m.(*protocol.Credit)
		return ok
	}).(*protocol.Credit).Bytes
}

func (rs *rawSession) stats(t *testing.T, phase protocol.Phase) {
	t.Helper()
	if _, err := rs.c.Write(protocol.Append(nil, &protocol.Stats{SentAtUnixNano: time.Now().UnixNano(), Disks: []protocol.DiskStats{{Phase: phase}}})); err != nil {
		t.Fatal(err)
	}
}

// TestBulkCredit: an agent in initial sync gets the bulk credit while the
// server's pool has room for it, and the base credit again once its STATS
// say it no longer copies whole disks; the pool's share comes back then
// and when the session ends.
func TestBulkCredit(t *testing.T) {
	const base, bulk = 16 << 20, 64 << 20
	tests := []struct {
		name       string
		bulk, pool int64
		want       int64 // the first CREDIT
		wantPool   int64 // BulkCreditPoolBytes (the metric)
	}{
		{"defaults", 0, 0, bulk, 1 << 30},
		{"pool too small", 0, 8 << 20, base, 8 << 20},
		{"pool off", 0, -1, base, 0},
		{"bulk not above the base", 8 << 20, 0, base, 1 << 30},
		{"bulk 128 MiB", 128 << 20, 0, 128 << 20, 1 << 30},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness(t)
			h.stop()
			h.serveWith(func(s *dataplane.Server) { s.BulkCreditBytes, s.BulkCreditPool = tt.bulk, tt.pool })
			if got := h.dp.BulkCreditPoolBytes(); got != tt.wantPool {
				t.Fatalf("pool %d MiB, want %d MiB", got>>20, tt.wantPool>>20)
			}
			rs := h.sessionNoAck(t) // its disk's initial sync is not done
			if got := rs.readCredit(t); got != tt.want {
				t.Fatalf("first CREDIT %d MiB, want %d MiB", got>>20, tt.want>>20)
			}
			if got, want := h.dp.BulkCreditInUse(), tt.want-base; got != want {
				t.Fatalf("bulk pool in use %d MiB, want %d MiB", got>>20, want>>20)
			}
			if tt.want == base {
				return
			}
			rs.stats(t, protocol.PhaseContinuous)
			if got := rs.readCredit(t); got != base {
				t.Fatalf("CREDIT after the sync %d MiB, want %d MiB", got>>20, base>>20)
			}
			if got := h.dp.BulkCreditInUse(); got != 0 {
				t.Fatalf("bulk pool in use %d after the sync", got)
			}
			rs.stats(t, protocol.PhaseRescan)
			if got := rs.readCredit(t); got != tt.want {
				t.Fatalf("CREDIT in a rescan %d MiB, want %d MiB", got>>20, tt.want>>20)
			}
			rs.reset(t)
			eventually(t, 10*time.Second, "bulk credit returned", func() bool { return h.dp.Sessions() == 0 && h.dp.BulkCreditInUse() == 0 })
		})
	}
}
