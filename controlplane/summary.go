package controlplane

import (
	"context"
	"time"

	"github.com/ferrymigrate/ferry"
	"github.com/ferrymigrate/ferry/api"
)

// DefaultLagThreshold is the replication lag above which a server makes
// its application and wave LAGGING.
const DefaultLagThreshold = 5 * time.Minute

// replicating reports whether a server in lifecycle state l is expected to
// be replicating, so that its replication state counts towards health.
// Servers not yet paired, disconnected on purpose, or cut over do not.
func replicating(l ferry.LifecycleState) bool {
	switch l {
	case ferry.LifecycleDiscovered, ferry.LifecyclePendingInstallation,
		ferry.LifecycleDisconnected, ferry.LifecycleCutover:
		return false
	}
	return true
}

// pastNotReady reports whether a server in lifecycle state l has started
// its migration proper: it is ready for, or in, testing or cutover.
func pastNotReady(l ferry.LifecycleState) bool {
	switch l {
	case ferry.LifecycleReadyForTest, ferry.LifecycleTesting, ferry.LifecycleReadyForCutover,
		ferry.LifecycleCuttingOver, ferry.LifecycleCutover:
		return true
	}
	return false
}

// Summarize derives an application's or a wave's health and progress from
// its member servers. It is the one place these rules live:
//
// Health, over members that should be replicating (not DISCOVERED,
// PENDING_INSTALLATION, DISCONNECTED or CUTOVER):
//   - ERROR if any has a replication error code, or replication STALLED or
//     DISCONNECTED;
//   - else LAGGING if any lags more than lagThreshold, or is in BACKLOG or
//     RESCAN;
//   - else HEALTHY (also for a group with no members).
//
// Progress:
//   - COMPLETED if there are members and every one is CUTOVER;
//   - NOT_STARTED if no member is past NOT_READY (READY_FOR_TEST or later),
//     including a group with no members;
//   - else IN_PROGRESS.
//
// Archived servers are skipped.
func Summarize(servers []*ferry.SourceServer, lagThreshold time.Duration) api.GroupSummary {
	sum := api.GroupSummary{Lifecycle: map[ferry.LifecycleState]int{}}
	cutover, started := 0, 0
	for _, s := range servers {
		if s.Archived {
			continue
		}
		sum.Servers++
		sum.Lifecycle[s.Lifecycle]++
		if s.Lifecycle == ferry.LifecycleCutover {
			cutover++
		}
		if pastNotReady(s.Lifecycle) {
			started++
		}
		if !replicating(s.Lifecycle) {
			continue
		}
		r := s.Replication
		switch {
		case r.ErrorCode != "" || r.State == ferry.ReplicationStalled || r.State == ferry.ReplicationDisconnected:
			sum.ErrorServers++
		case r.State == ferry.ReplicationBacklog || r.State == ferry.ReplicationRescan ||
			r.LagSeconds > lagThreshold.Seconds():
			sum.LaggingServers++
		}
	}
	switch {
	case sum.ErrorServers > 0:
		sum.Health = api.HealthError
	case sum.LaggingServers > 0:
		sum.Health = api.HealthLagging
	default:
		sum.Health = api.HealthHealthy
	}
	switch {
	case sum.Servers > 0 && cutover == sum.Servers:
		sum.Progress = api.ProgressCompleted
	case started == 0:
		sum.Progress = api.ProgressNotStarted
	default:
		sum.Progress = api.ProgressInProgress
	}
	return sum
}

func (s *Server) lagThreshold() time.Duration {
	if s.LagThreshold > 0 {
		return s.LagThreshold
	}
	return DefaultLagThreshold
}

// allServers walks every page of servers matching f.
func allServers(ctx context.Context, st ferry.Store, f ferry.ServerFilter) ([]*ferry.SourceServer, error) {
	f.Limit = ferry.MaxPageSize
	var all []*ferry.SourceServer
	for {
		page, next, err := st.ListServers(ctx, f)
		if err != nil {
			return nil, err
		}
		all = append(all, page...)
		if next == "" {
			return all, nil
		}
		f.After = next
	}
}

// allApplications walks every page of applications matching f.
func allApplications(ctx context.Context, st ferry.Store, f ferry.GroupFilter) ([]*ferry.Application, error) {
	f.Limit = ferry.MaxPageSize
	var all []*ferry.Application
	for {
		page, next, err := st.ListApplications(ctx, f)
		if err != nil {
			return nil, err
		}
		all = append(all, page...)
		if next == "" {
			return all, nil
		}
		f.After = next
	}
}

// membership groups the live servers by application and by wave. A
// server's wave is its own wave_id or, when it has none, its
// application's.
type membership struct {
	byApp, byWave map[string][]*ferry.SourceServer
}

func (s *Server) loadMembership(ctx context.Context) (*membership, error) {
	servers, err := allServers(ctx, s.Store, ferry.ServerFilter{})
	if err != nil {
		return nil, err
	}
	apps, err := allApplications(ctx, s.Store, ferry.GroupFilter{})
	if err != nil {
		return nil, err
	}
	appWave := make(map[string]string, len(apps))
	for _, a := range apps {
		appWave[a.ID] = a.WaveID
	}
	m := &membership{byApp: map[string][]*ferry.SourceServer{}, byWave: map[string][]*ferry.SourceServer{}}
	for _, srv := range servers {
		if srv.ApplicationID != "" {
			m.byApp[srv.ApplicationID] = append(m.byApp[srv.ApplicationID], srv)
		}
		w := srv.WaveID
		if w == "" {
			w = appWave[srv.ApplicationID]
		}
		if w != "" {
			m.byWave[w] = append(m.byWave[w], srv)
		}
	}
	return m, nil
}

func (s *Server) applicationStatus(m *membership, a *ferry.Application) api.ApplicationStatus {
	return api.ApplicationStatus{Application: *a, Summary: Summarize(m.byApp[a.ID], s.lagThreshold())}
}

func (s *Server) waveStatus(m *membership, w *ferry.Wave) api.WaveStatus {
	return api.WaveStatus{Wave: *w, Summary: Summarize(m.byWave[w.ID], s.lagThreshold())}
}
