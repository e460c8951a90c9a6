package controlplane

import (
	"errors"
	"fmt"
	"net/http"

	"github.com/ferrymigrate/ferry"
	"github.com/ferrymigrate/ferry/api"
)

func (s *Server) listServers(w http.ResponseWriter, r *http.Request, _ *caller) error {
	f, err := serverFilter(r.URL.Query())
	if err != nil {
		return err
	}
	items, next, err := s.Store.ListServers(r.Context(), f)
	if err != nil {
		return err
	}
	writeList(w, items, next)
	return nil
}

func (s *Server) getServer(w http.ResponseWriter, r *http.Request, _ *caller) error {
	srv, err := s.Store.Server(r.Context(), r.PathValue("id"))
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, srv)
	return nil
}

func (s *Server) updateServer(w http.ResponseWriter, r *http.Request, _ *caller) error {
	var req api.UpdateServerRequest
	if err := decodeBody(w, r, &req); err != nil {
		return err
	}
	if req.Tags != nil {
		if err := checkTags(*req.Tags); err != nil {
			return err
		}
	}
	if req.Replication != nil {
		if err := checkReplicationSettings(req.Replication); err != nil {
			return err
		}
	}
	if req.Launch != nil {
		if err := checkLaunchSettings(req.Launch); err != nil {
			return err
		}
	}
	ctx := r.Context()
	if req.ApplicationID != nil && *req.ApplicationID != "" {
		if _, err := s.Store.Application(ctx, *req.ApplicationID); err != nil {
			return wrapRef("application_id", err)
		}
	}
	if req.WaveID != nil && *req.WaveID != "" {
		if _, err := s.Store.Wave(ctx, *req.WaveID); err != nil {
			return wrapRef("wave_id", err)
		}
	}
	now := s.now()
	srv, err := s.Store.UpdateServer(ctx, r.PathValue("id"), func(srv *ferry.SourceServer) error {
		if srv.Archived {
			return archivedErr(srv.ID)
		}
		if req.Tags != nil {
			srv.Tags = *req.Tags
		}
		if req.ApplicationID != nil {
			srv.ApplicationID = *req.ApplicationID
		}
		if req.WaveID != nil {
			srv.WaveID = *req.WaveID
		}
		if req.Replication != nil {
			srv.ReplicationSetup = *req.Replication
		}
		if req.Launch != nil {
			srv.LaunchSetup = *req.Launch
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

// wrapRef turns a missing referenced object into a 400 naming the field,
// since the request, not the URL, was wrong.
func wrapRef(field string, err error) error {
	if isNotFound(err) {
		return badRequest("%s: %v", field, err)
	}
	return err
}

// manualLifecycleTargets are the states an operator may set by hand, as in
// MGN's ChangeServerLifeCycleState; the rest follow from replication and
// jobs.
var manualLifecycleTargets = map[ferry.LifecycleState]bool{
	ferry.LifecycleReadyForTest:    true,
	ferry.LifecycleReadyForCutover: true,
	ferry.LifecycleCutover:         true,
}

// archivedErr refuses an action on an archived server and says how to
// bring it back.
func archivedErr(id string) error {
	return apiErr(http.StatusConflict, api.CodeConflict, "server %s is archived; unarchive it first (ferry servers unarchive %s, or POST /servers/%s/unarchive)", id, id, id)
}

func (s *Server) changeLifecycle(w http.ResponseWriter, r *http.Request, _ *caller) error {
	var req api.ChangeLifecycleRequest
	if err := decodeBody(w, r, &req); err != nil {
		return err
	}
	if !manualLifecycleTargets[req.State] {
		return badRequest("state %q: an operator may set READY_FOR_TEST, READY_FOR_CUTOVER or CUTOVER; other states follow from replication and jobs", req.State)
	}
	return s.transition(w, r, req.State)
}

func (s *Server) transition(w http.ResponseWriter, r *http.Request, to ferry.LifecycleState) error {
	now := s.now()
	srv, err := s.Store.UpdateServer(r.Context(), r.PathValue("id"), func(srv *ferry.SourceServer) error {
		if srv.Archived {
			return archivedErr(srv.ID)
		}
		if err := ferry.CheckTransition(srv.Lifecycle, to); err != nil {
			return err
		}
		srv.Lifecycle = to
		srv.UpdatedAt = now
		return nil
	})
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, srv)
	return nil
}

// disconnectServer disconnects a server from the service: its agent's
// certificate stops working at once and replication stops.
func (s *Server) disconnectServer(w http.ResponseWriter, r *http.Request, _ *caller) error {
	now := s.now()
	srv, err := s.Store.UpdateServer(r.Context(), r.PathValue("id"), func(srv *ferry.SourceServer) error {
		if err := ferry.CheckTransition(srv.Lifecycle, ferry.LifecycleDisconnected); err != nil {
			return err
		}
		srv.Lifecycle = ferry.LifecycleDisconnected
		srv.Replication.State = ferry.ReplicationDisconnected
		srv.AgentCertSerial, srv.AgentCertPrevSerial = "", ""
		srv.UpdatedAt = now
		return nil
	})
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, srv)
	return nil
}

func (s *Server) archiveServer(w http.ResponseWriter, r *http.Request, _ *caller) error {
	return s.setArchived(w, r, true)
}

func (s *Server) unarchiveServer(w http.ResponseWriter, r *http.Request, _ *caller) error {
	return s.setArchived(w, r, false)
}

func (s *Server) setArchived(w http.ResponseWriter, r *http.Request, archived bool) error {
	now := s.now()
	srv, err := s.Store.UpdateServer(r.Context(), r.PathValue("id"), func(srv *ferry.SourceServer) error {
		if archived && !ferry.CanArchive(srv.Lifecycle) {
			return apiErr(http.StatusConflict, api.CodeInvalidTransition, "cannot archive server %s in state %s: archive only from DISCONNECTED or CUTOVER", srv.ID, srv.Lifecycle)
		}
		srv.Archived = archived
		srv.UpdatedAt = now
		return nil
	})
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, srv)
	return nil
}

func (s *Server) deleteServer(w http.ResponseWriter, r *http.Request, _ *caller) error {
	ctx := r.Context()
	srv, err := s.Store.Server(ctx, r.PathValue("id"))
	if err != nil {
		return err
	}
	if !srv.Archived && srv.Lifecycle != ferry.LifecycleDisconnected && srv.Lifecycle != ferry.LifecycleDiscovered {
		return apiErr(http.StatusConflict, api.CodeConflict, "server %s is %s: disconnect or archive it before deleting", srv.ID, srv.Lifecycle)
	}
	if srv.Launched != nil && srv.Launched.TerminatedAt.IsZero() {
		// A qemu instance reads its disks from the replica for as long
		// as it runs, a cutover's too.
		kind := "test"
		if srv.Launched.Kind == ferry.InitiatedByStartCutover {
			kind = "cutover"
		}
		return apiErr(http.StatusConflict, api.CodeConflict, "server %s has a launched %s instance %s that runs from its replica: terminate it before deleting the server", srv.ID, kind, srv.Launched.ID)
	}
	// The replica goes first: should this fail, the record is still there
	// to try again, and a replica never outlives the record that names it.
	if s.Replicas != nil {
		if _, err := s.Replicas.DeleteReplica(ctx, srv.ID); err != nil {
			if errors.Is(err, ferry.ErrConflict) {
				return apiErr(http.StatusConflict, api.CodeConflict, "%v", err)
			}
			return fmt.Errorf("delete the replica of server %s: %w", srv.ID, err)
		}
	}
	if err := s.Store.DeleteServer(ctx, srv.ID); err != nil {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}
