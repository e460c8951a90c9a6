package controlplane

import (
	"net/http"

	"github.com/ferrymigrate/ferry"
	"github.com/ferrymigrate/ferry/api"
)

// replicationAction is one of MGN's replication controls: the desired
// states it may start from and the one it sets. The replication server
// passes the desired state to the agent; Replication.State follows.
type replicationAction struct {
	name string
	from []ferry.DesiredReplication
	to   ferry.DesiredReplication
}

var (
	actionPause  = replicationAction{"pause", []ferry.DesiredReplication{ferry.DesiredRun}, ferry.DesiredPause}
	actionResume = replicationAction{"resume", []ferry.DesiredReplication{ferry.DesiredPause}, ferry.DesiredRun}
	actionStop   = replicationAction{"stop", []ferry.DesiredReplication{ferry.DesiredRun, ferry.DesiredPause}, ferry.DesiredStop}
	actionStart  = replicationAction{"start", []ferry.DesiredReplication{ferry.DesiredStop}, ferry.DesiredRun}
	actionRetry  = replicationAction{"retry", []ferry.DesiredReplication{ferry.DesiredRun}, ferry.DesiredRun}
)

func desiredName(d ferry.DesiredReplication) string {
	if d == ferry.DesiredRun {
		return "RUN"
	}
	return string(d)
}

func (s *Server) replicationControl(a replicationAction) handlerFunc {
	return func(w http.ResponseWriter, r *http.Request, _ *caller) error {
		now := s.now()
		srv, err := s.Store.UpdateServer(r.Context(), r.PathValue("id"), func(srv *ferry.SourceServer) error {
			switch {
			case srv.Archived:
				return archivedErr(srv.ID)
			case srv.Lifecycle == ferry.LifecycleDisconnected || srv.Lifecycle == ferry.LifecycleCutover:
				return apiErr(http.StatusConflict, api.CodeConflict, "cannot %s replication of server %s in lifecycle state %s", a.name, srv.ID, srv.Lifecycle)
			}
			ok := false
			for _, f := range a.from {
				ok = ok || srv.Desired == f
			}
			if !ok {
				return apiErr(http.StatusConflict, api.CodeConflict, "cannot %s replication of server %s: it is set to %s", a.name, srv.ID, desiredName(srv.Desired))
			}
			srv.Desired = a.to
			if a.name == actionRetry.name {
				srv.Replication.ErrorCode, srv.Replication.ErrorMessage = "", ""
			}
			srv.UpdatedAt = now
			return nil
		})
		if err != nil {
			return err
		}
		writeJSON(w, http.StatusOK, srv)
		return nil
	}
}
