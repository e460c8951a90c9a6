package storetest

import (
	"context"
	"testing"

	"github.com/ferrymigrate/ferry"
)

// Run runs the conformance suite. open must return a new, empty store for
// each call; Run closes it at the end of the subtest that opened it (open
// may register its own t.Cleanup, which runs after that).
func Run(t *testing.T, open func(t *testing.T) ferry.Store) {
	tests := []struct {
		name string
		fn   func(t *testing.T, ctx context.Context, s ferry.Store)
	}{
		{"Server/RoundTrip", testServerRoundTrip},
		{"Server/NotFound", testServerNotFound},
		{"Server/Conflict", testServerConflict},
		{"Server/Update", testServerUpdate},
		{"Server/UpdateConcurrent", testServerUpdateConcurrent},
		{"Server/UsageCounters", testServerUsageCounters},
		{"Server/Delete", testServerDelete},
		{"Server/Pagination", testServerPagination},
		{"Server/Filters", testServerFilters},
		{"Template", testTemplates},
		{"Application", testApplications},
		{"Wave", testWaves},
		{"Token", testTokens},
		{"InstallToken", testInstallTokens},
		{"InstallToken/UseConcurrent", testInstallTokenConcurrent},
		{"Job", testJobs},
		{"Job/List", testJobList},
		{"Job/Log", testJobLog},
		{"Audit", testAudit},
		{"BadCursor", testBadCursor},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := open(t)
			t.Cleanup(func() {
				if err := s.Close(); err != nil {
					t.Errorf("close: %v", err)
				}
			})
			tc.fn(t, t.Context(), s)
		})
	}
}
