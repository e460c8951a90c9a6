package controlplane

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"sort"
	"strings"

	"github.com/ferrymigrate/ferry"
	"github.com/ferrymigrate/ferry/api"
	"github.com/ferrymigrate/ferry/jobs"
)

// startFunc starts one kind of launch job.
type startFunc func(*jobs.Runner, context.Context, []string, jobs.Options) (*ferry.Job, error)

// groupMembers returns the live servers of an application or a wave.
type groupMembers func(s *Server, ctx context.Context, id string) ([]*ferry.SourceServer, error)

func applicationMembers(s *Server, ctx context.Context, id string) ([]*ferry.SourceServer, error) {
	if _, err := s.Store.Application(ctx, id); err != nil {
		return nil, err
	}
	return allServers(ctx, s.Store, ferry.ServerFilter{ApplicationID: id})
}

func waveMembers(s *Server, ctx context.Context, id string) ([]*ferry.SourceServer, error) {
	if _, err := s.Store.Wave(ctx, id); err != nil {
		return nil, err
	}
	return s.waveMembers(ctx, id)
}

// bulkStart starts one job per member server of a group, as MGN does for
// a wave or an application, and reports each server that could not take
// part with the reason. It answers 202 when at least one job started and
// 200 when none did (every reason is in the body).
func (s *Server) bulkStart(members groupMembers, start startFunc) handlerFunc {
	return func(w http.ResponseWriter, r *http.Request, c *caller) error {
		if s.Jobs == nil {
			return apiErr(http.StatusServiceUnavailable, api.CodeUnavailable, "launches are not configured on this server")
		}
		var req api.BulkJobRequest
		if r.ContentLength != 0 {
			if err := decodeBody(w, r, &req); err != nil {
				return err
			}
		}
		ctx := r.Context()
		srvs, err := members(s, ctx, r.PathValue("id"))
		if err != nil {
			return err
		}
		sort.Slice(srvs, func(i, j int) bool { return srvs[i].ID < srvs[j].ID })
		res := BulkStart(ctx, s.Jobs, srvs, start, jobs.Options{UseLatest: req.UseLatestSnapshot, SkipDrain: req.SkipDrain})
		c.detail = fmt.Sprintf("%d job(s) started, %d server(s) not started", len(res.Started), len(res.NotStarted))
		status := http.StatusOK
		if len(res.Started) > 0 {
			status = http.StatusAccepted
		}
		writeJSON(w, status, res)
		return nil
	}
}

// BulkStart starts one job per server with start and reports, per server,
// the job or the reason it did not start. It never stops at the first
// refusal: every server gets its answer.
func BulkStart(ctx context.Context, r *jobs.Runner, srvs []*ferry.SourceServer, start startFunc, o jobs.Options) api.BulkJobResult {
	res := api.BulkJobResult{Started: []api.BulkJobStarted{}, NotStarted: []api.BulkJobSkipped{}}
	for _, srv := range srvs {
		job, err := start(r, ctx, []string{srv.ID}, o)
		if err != nil {
			res.NotStarted = append(res.NotStarted, api.BulkJobSkipped{SourceServerID: srv.ID, Reason: bulkReason(err)})
			continue
		}
		res.Started = append(res.Started, api.BulkJobStarted{SourceServerID: srv.ID, JobID: job.ID})
	}
	return res
}

// bulkReason is an error as an operator reads it, without the sentinel's
// "invalid: " prefix.
func bulkReason(err error) string {
	if errors.Is(err, ferry.ErrInvalid) {
		return strings.TrimPrefix(err.Error(), ferry.ErrInvalid.Error()+": ")
	}
	return err.Error()
}
