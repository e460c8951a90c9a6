package controlplane

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"mime"
	"net/http"
	"reflect"
	"strings"
	"sync"

	"github.com/ferrymigrate/ferry"
	"github.com/ferrymigrate/ferry/api"
)

// Import tasks are not in ferry.Store: the control plane keeps the last
// maxImportTasks in memory (lost on restart, per control plane) and writes
// one audit event per import whose detail holds the counts, which is the
// durable record.
const maxImportTasks = 100

// importHistory is the bounded, newest-last list of import tasks.
type importHistory struct {
	// run serialises imports, so two cannot interleave their changes.
	run sync.Mutex

	mu    sync.Mutex
	tasks []api.ImportTask // guarded by mu
}

func (h *importHistory) add(t api.ImportTask) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.tasks = append(h.tasks, t)
	if len(h.tasks) > maxImportTasks {
		h.tasks = append([]api.ImportTask(nil), h.tasks[len(h.tasks)-maxImportTasks:]...)
	}
}

func (h *importHistory) list() []api.ImportTask {
	h.mu.Lock()
	defer h.mu.Unlock()
	out := make([]api.ImportTask, 0, len(h.tasks))
	for i := len(h.tasks) - 1; i >= 0; i-- {
		out = append(out, h.tasks[i])
	}
	return out
}

// plannedServer is a server change an import will make.
type plannedServer struct {
	row    int
	before *ferry.SourceServer
	after  *ferry.SourceServer
	app    string // application name to resolve after creation, or ""
	wave   string // wave name likewise
}

// importPlan is everything an import will do, worked out before anything
// is written.
type importPlan struct {
	newWaves []string            // names, in first-seen order
	newApps  []string            // names, in first-seen order
	appWave  map[string]string   // new application name -> wave name
	servers  []plannedServer     // changed servers only
	same     int                 // rows that change nothing
	appIDs   map[string]string   // name -> id, existing
	waveIDs  map[string]string   // name -> id, existing
	created  map[string][]string // kind -> ids created, for rollback
}

func (s *Server) importCSV(w http.ResponseWriter, r *http.Request, c *caller) error {
	if ct := r.Header.Get("Content-Type"); ct != "" {
		mt, params, err := mime.ParseMediaType(ct)
		if err != nil || (mt != "text/csv" && mt != "application/csv") {
			return apiErr(http.StatusUnsupportedMediaType, api.CodeUnsupportedMedia, "request body must be text/csv, not %q", ct)
		}
		if cs := params["charset"]; cs != "" && !strings.EqualFold(cs, "utf-8") {
			return apiErr(http.StatusUnsupportedMediaType, api.CodeUnsupportedMedia, "charset %q: send the CSV as UTF-8", cs)
		}
	}
	q := r.URL.Query()
	if err := checkParams(q, "dry_run"); err != nil {
		return err
	}
	dry, err := boolParam(q, "dry_run")
	if err != nil {
		return err
	}
	data, err := io.ReadAll(http.MaxBytesReader(w, r.Body, MaxImportBytes))
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return apiErr(http.StatusRequestEntityTooLarge, api.CodeTooLarge, "CSV is larger than %d bytes; split it", MaxImportBytes)
		}
		return fmt.Errorf("read import body: %w", err)
	}

	s.imports.run.Lock()
	defer s.imports.run.Unlock()
	ctx := r.Context()
	task := api.ImportTask{ID: newID("import"), Time: s.now(), Actor: c.actor, DryRun: dry}
	file, errs := parseImportCSV(data)
	task.Rows, task.IgnoredColumns = len(file.rows), file.ignored
	var plan *importPlan
	if errs.count == 0 {
		if plan, err = s.planImport(ctx, file, errs); err != nil {
			return err
		}
	}
	fail := func(status int, msg string) error {
		task.Status, task.Errors, task.ErrorCount = api.ImportFailed, errs.items, errs.count
		s.imports.add(task)
		c.detail = fmt.Sprintf("%s: failed, %d errors", task.ID, task.ErrorCount)
		ae := apiErr(status, api.CodeBadRequest, "%s", msg)
		ae.Errors = errs.items
		return ae
	}
	if errs.count > 0 {
		return fail(http.StatusBadRequest, fmt.Sprintf("import %s: %d problems (first: %s); nothing was changed: fix them and import again", task.ID, errs.count, errs.items[0]))
	}
	task.CreatedWaves, task.CreatedApplications = len(plan.newWaves), len(plan.newApps)
	task.ModifiedServers, task.UnchangedServers = len(plan.servers), plan.same
	if dry {
		task.Status = api.ImportValidated
	} else {
		if err := s.applyImport(context.WithoutCancel(ctx), plan); err != nil {
			s.log().Error("import failed and was rolled back", "import", task.ID, "err", err)
			errs.add(0, "", "applying the import failed and it was rolled back: %v", err)
			task.CreatedWaves, task.CreatedApplications, task.ModifiedServers = 0, 0, 0
			return fail(http.StatusConflict, fmt.Sprintf("import %s: %v; it was rolled back, nothing was changed", task.ID, err))
		}
		task.Status = api.ImportSucceeded
	}
	s.imports.add(task)
	c.detail = fmt.Sprintf("%s: %s, %d rows, created %d applications and %d waves, modified %d servers",
		task.ID, task.Status, task.Rows, task.CreatedApplications, task.CreatedWaves, task.ModifiedServers)
	writeJSON(w, http.StatusOK, task)
	return nil
}

// planImport resolves every row against the inventory and works out the
// changes, adding an error for each row that cannot be applied.
func (s *Server) planImport(ctx context.Context, f *importFile, errs *errorList) (*importPlan, error) {
	live, err := allServers(ctx, s.Store, ferry.ServerFilter{})
	if err != nil {
		return nil, err
	}
	archived, err := allServers(ctx, s.Store, ferry.ServerFilter{Archived: true})
	if err != nil {
		return nil, err
	}
	byID := map[string]*ferry.SourceServer{}
	byHost := map[string][]*ferry.SourceServer{}
	for _, srv := range live {
		byID[srv.ID] = srv
		k := strings.ToLower(srv.Hostname)
		byHost[k] = append(byHost[k], srv)
	}
	archivedIDs := map[string]bool{}
	for _, srv := range archived {
		archivedIDs[srv.ID] = true
	}
	p := &importPlan{appWave: map[string]string{}, appIDs: map[string]string{}, waveIDs: map[string]string{}, created: map[string][]string{}}
	apps, err := allApplications(ctx, s.Store, ferry.GroupFilter{})
	if err != nil {
		return nil, err
	}
	for _, a := range apps {
		p.appIDs[a.Name] = a.ID
	}
	archivedApps, err := allApplications(ctx, s.Store, ferry.GroupFilter{Archived: true})
	if err != nil {
		return nil, err
	}
	archivedNames := map[string]map[string]bool{colApplication: {}, colWave: {}}
	for _, a := range archivedApps {
		archivedNames[colApplication][a.Name] = true
	}
	waves, err := allWaves(ctx, s.Store, false)
	if err != nil {
		return nil, err
	}
	for _, wv := range waves {
		p.waveIDs[wv.Name] = wv.ID
	}
	archivedWaves, err := allWaves(ctx, s.Store, true)
	if err != nil {
		return nil, err
	}
	for _, wv := range archivedWaves {
		archivedNames[colWave][wv.Name] = true
	}
	seenServer := map[string]int{}
	newApp, newWave := map[string]bool{}, map[string]bool{}
	for _, row := range f.rows {
		var srv *ferry.SourceServer
		switch {
		case row.serverID != "":
			srv = byID[row.serverID]
			if srv == nil {
				if archivedIDs[row.serverID] {
					errs.add(row.row, colServerID, "server %s is archived; unarchive it first", row.serverID)
				} else {
					errs.add(row.row, colServerID, "no server %s", row.serverID)
				}
				continue
			}
			if row.hostname != "" && !strings.EqualFold(row.hostname, srv.Hostname) {
				errs.add(row.row, colHostname, "server %s is %s, not %s", srv.ID, srv.Hostname, row.hostname)
				continue
			}
		default:
			found := byHost[strings.ToLower(row.hostname)]
			switch len(found) {
			case 0:
				errs.add(row.row, colHostname, "no live server has hostname %s (servers appear when their agent pairs)", row.hostname)
				continue
			case 1:
				srv = found[0]
			default:
				errs.add(row.row, colHostname, "%d servers have hostname %s (%s, %s…); use %s instead", len(found), row.hostname, found[0].ID, found[1].ID, colServerID)
				continue
			}
		}
		if prev, dup := seenServer[srv.ID]; dup {
			errs.add(row.row, "", "server %s is also on row %d", srv.ID, prev)
			continue
		}
		seenServer[srv.ID] = row.row
		if archivedNames[colApplication][row.application] {
			errs.add(row.row, colApplication, "application %q is archived; unarchive it or use another name", row.application)
			continue
		}
		if archivedNames[colWave][row.wave] {
			errs.add(row.row, colWave, "wave %q is archived; unarchive it or use another name", row.wave)
			continue
		}
		after := srv.Clone()
		ps := plannedServer{row: row.row, before: srv, after: after}
		if row.wave != "" {
			if id, ok := p.waveIDs[row.wave]; ok {
				after.WaveID = id
			} else {
				ps.wave = row.wave
				if !newWave[row.wave] {
					newWave[row.wave] = true
					p.newWaves = append(p.newWaves, row.wave)
				}
			}
		}
		if row.application != "" {
			if id, ok := p.appIDs[row.application]; ok {
				after.ApplicationID = id
			} else {
				ps.app = row.application
				if !newApp[row.application] {
					newApp[row.application] = true
					p.newApps = append(p.newApps, row.application)
					p.appWave[row.application] = row.wave
				} else if p.appWave[row.application] != row.wave {
					// A new application goes into a wave only if every row agrees.
					p.appWave[row.application] = ""
				}
			}
		}
		if row.tags != nil {
			after.Tags = row.tags
		}
		l := &after.LaunchSetup
		setIf(&l.CPUs, row.cpus)
		setIf(&l.MemoryMiB, row.memoryMiB)
		setIf(&l.Target, row.target)
		if row.bootMode != nil {
			l.BootMode = ferry.BootMode(*row.bootMode)
		}
		if row.disposition != nil {
			l.Disposition = ferry.LaunchDisposition(*row.disposition)
		}
		if row.rightSiz != nil {
			l.RightSizing = ferry.RightSizing(*row.rightSiz)
		}
		setIf(&after.ReplicationSetup.BandwidthBytesPerSec, row.bandwidth)
		setIf(&after.ReplicationSetup.ReplicationServer, row.replicationServer)
		if err := checkLaunchSettings(&after.LaunchSetup); err != nil {
			errs.add(row.row, "", "resulting launch settings: %v", err.(*api.Error).Message)
			continue
		}
		if err := checkReplicationSettings(&after.ReplicationSetup); err != nil {
			errs.add(row.row, "", "resulting replication settings: %v", err.(*api.Error).Message)
			continue
		}
		if ps.app == "" && ps.wave == "" && importedFieldsEqual(srv, after) {
			p.same++
			continue
		}
		p.servers = append(p.servers, ps)
	}
	return p, nil
}

func setIf[T any](dst *T, v *T) {
	if v != nil {
		*dst = *v
	}
}

// importedFieldsEqual reports whether an import leaves a server as it was.
func importedFieldsEqual(a, b *ferry.SourceServer) bool {
	return a.ApplicationID == b.ApplicationID && a.WaveID == b.WaveID &&
		maps.Equal(a.Tags, b.Tags) &&
		reflect.DeepEqual(a.LaunchSetup, b.LaunchSetup) &&
		reflect.DeepEqual(a.ReplicationSetup, b.ReplicationSetup)
}

// applyImport writes a plan: waves, then applications, then servers. The
// store has no transactions across objects, so on any error it undoes what
// it did (deletes what it created, puts back the fields it changed) and
// returns the error.
func (s *Server) applyImport(ctx context.Context, p *importPlan) (err error) {
	now := s.now()
	var done []plannedServer
	defer func() {
		if err == nil {
			return
		}
		for _, ps := range done {
			b := ps.before
			if _, rerr := s.Store.UpdateServer(ctx, b.ID, func(srv *ferry.SourceServer) error {
				srv.ApplicationID, srv.WaveID, srv.Tags = b.ApplicationID, b.WaveID, b.Tags
				srv.LaunchSetup, srv.ReplicationSetup = b.LaunchSetup, b.ReplicationSetup
				return nil
			}); rerr != nil {
				s.log().Error("roll back import: restore server", "server", b.ID, "err", rerr)
			}
		}
		for _, id := range p.created["application"] {
			if rerr := s.Store.DeleteApplication(ctx, id); rerr != nil {
				s.log().Error("roll back import: delete application", "application", id, "err", rerr)
			}
		}
		for _, id := range p.created["wave"] {
			if rerr := s.Store.DeleteWave(ctx, id); rerr != nil {
				s.log().Error("roll back import: delete wave", "wave", id, "err", rerr)
			}
		}
	}()
	for _, name := range p.newWaves {
		wv := &ferry.Wave{ID: newID("wave"), Name: name, CreatedAt: now, UpdatedAt: now}
		if err := s.Store.CreateWave(ctx, wv); err != nil {
			return fmt.Errorf("create wave %q: %w", name, err)
		}
		p.created["wave"] = append(p.created["wave"], wv.ID)
		p.waveIDs[name] = wv.ID
	}
	for _, name := range p.newApps {
		a := &ferry.Application{ID: newID("app"), Name: name, WaveID: p.waveIDs[p.appWave[name]], CreatedAt: now, UpdatedAt: now}
		if err := s.Store.CreateApplication(ctx, a); err != nil {
			return fmt.Errorf("create application %q: %w", name, err)
		}
		p.created["application"] = append(p.created["application"], a.ID)
		p.appIDs[name] = a.ID
	}
	for _, ps := range p.servers {
		a := ps.after
		if ps.app != "" {
			a.ApplicationID = p.appIDs[ps.app]
		}
		if ps.wave != "" {
			a.WaveID = p.waveIDs[ps.wave]
		}
		if _, err := s.Store.UpdateServer(ctx, a.ID, func(srv *ferry.SourceServer) error {
			if srv.Archived {
				return fmt.Errorf("server %s was archived during the import", srv.ID)
			}
			srv.ApplicationID, srv.WaveID, srv.Tags = a.ApplicationID, a.WaveID, a.Tags
			srv.LaunchSetup, srv.ReplicationSetup = a.LaunchSetup, a.ReplicationSetup
			srv.UpdatedAt = now
			return nil
		}); err != nil {
			return fmt.Errorf("row %d: update server %s: %w", ps.row, a.ID, err)
		}
		done = append(done, ps)
	}
	return nil
}

// allWaves walks every page of live or archived waves.
func allWaves(ctx context.Context, st ferry.Store, archived bool) ([]*ferry.Wave, error) {
	f := ferry.GroupFilter{Limit: ferry.MaxPageSize, Archived: archived}
	var all []*ferry.Wave
	for {
		page, next, err := st.ListWaves(ctx, f)
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

func (s *Server) listImports(w http.ResponseWriter, r *http.Request, _ *caller) error {
	if err := checkParams(r.URL.Query()); err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, api.List[api.ImportTask]{Items: s.imports.list()})
	return nil
}

// exportCSV writes every live server as an inventory CSV that import
// reads back.
func (s *Server) exportCSV(w http.ResponseWriter, r *http.Request, _ *caller) error {
	if err := checkParams(r.URL.Query()); err != nil {
		return err
	}
	ctx := r.Context()
	servers, err := allServers(ctx, s.Store, ferry.ServerFilter{})
	if err != nil {
		return err
	}
	apps, err := allApplications(ctx, s.Store, ferry.GroupFilter{})
	if err != nil {
		return err
	}
	waves, err := allWaves(ctx, s.Store, false)
	if err != nil {
		return err
	}
	appNames, waveNames := map[string]string{}, map[string]string{}
	for _, a := range apps {
		appNames[a.ID] = a.Name
	}
	for _, wv := range waves {
		waveNames[wv.ID] = wv.Name
	}
	var buf bytes.Buffer
	if err := writeInventoryCSV(&buf, servers, appNames, waveNames); err != nil {
		return err
	}
	w.Header().Set("Content-Type", "text/csv; charset=utf-8")
	w.Header().Set("Content-Disposition", `attachment; filename="ferry-inventory.csv"`)
	w.Header().Set("X-Content-Type-Options", "nosniff")
	_, err = w.Write(buf.Bytes())
	return err
}
