package controlplane

import (
	"context"

	"github.com/ferrymigrate/ferry/jobs"
	"net/http"

	"github.com/ferrymigrate/ferry"
)

// routes is the one table of the API: method, path, the least role that may
// call it, and the audit action name. The OpenAPI document and the
// route × role matrix test are checked against it.
func (s *Server) routes() []route {
	const (
		pub      = ferry.Role("")
		viewer   = ferry.RoleViewer
		operator = ferry.RoleOperator
		admin    = ferry.RoleAdmin
		get      = http.MethodGet
		post     = http.MethodPost
		patch    = http.MethodPatch
		del      = http.MethodDelete
	)
	return []route{
		{get, "/health", pub, "health", s.health},
		{get, "/openapi.yaml", pub, "openapi", s.openapi},
		{post, "/pair", pub, "agents.pair", s.pair},
		{get, "/whoami", viewer, "whoami", s.whoami},

		{get, "/events", viewer, "events.stream", s.events},

		{get, "/servers", viewer, "servers.list", s.listServers},
		{get, "/servers/{id}", viewer, "servers.get", s.getServer},
		{patch, "/servers/{id}", operator, "servers.update", s.updateServer},
		{post, "/servers/{id}/lifecycle", operator, "servers.change_lifecycle", s.changeLifecycle},
		{post, "/servers/{id}/disconnect", operator, "servers.disconnect", s.disconnectServer},
		{post, "/servers/{id}/archive", operator, "servers.archive", s.archiveServer},
		{post, "/servers/{id}/unarchive", operator, "servers.unarchive", s.unarchiveServer},
		{del, "/servers/{id}", admin, "servers.delete", s.deleteServer},
		{post, "/servers/{id}/replication/pause", operator, "replication.pause", s.replicationControl(actionPause)},
		{post, "/servers/{id}/replication/resume", operator, "replication.resume", s.replicationControl(actionResume)},
		{post, "/servers/{id}/replication/stop", operator, "replication.stop", s.replicationControl(actionStop)},
		{post, "/servers/{id}/replication/start", operator, "replication.start", s.replicationControl(actionStart)},
		{post, "/servers/{id}/replication/retry", operator, "replication.retry", s.replicationControl(actionRetry)},

		{get, "/templates", viewer, "templates.list", s.listTemplates},
		{post, "/templates", admin, "templates.create", s.createTemplate},
		{get, "/templates/{id}", viewer, "templates.get", s.getTemplate},
		{patch, "/templates/{id}", admin, "templates.update", s.updateTemplate},
		{del, "/templates/{id}", admin, "templates.delete", s.deleteTemplate},

		{get, "/applications", viewer, "applications.list", s.listApplications},
		{post, "/applications", operator, "applications.create", s.createApplication},
		{get, "/applications/{id}", viewer, "applications.get", s.getApplication},
		{patch, "/applications/{id}", operator, "applications.update", s.updateApplication},
		{del, "/applications/{id}", operator, "applications.delete", s.deleteApplication},
		{post, "/applications/{id}/start-test", operator, "applications.start_test", s.bulkStart(applicationMembers, (*jobs.Runner).StartTest)},
		{post, "/applications/{id}/start-cutover", operator, "applications.start_cutover", s.bulkStart(applicationMembers, (*jobs.Runner).StartCutover)},

		{get, "/waves", viewer, "waves.list", s.listWaves},
		{post, "/waves", operator, "waves.create", s.createWave},
		{get, "/waves/{id}", viewer, "waves.get", s.getWave},
		{patch, "/waves/{id}", operator, "waves.update", s.updateWave},
		{del, "/waves/{id}", operator, "waves.delete", s.deleteWave},
		{post, "/waves/{id}/start-test", operator, "waves.start_test", s.bulkStart(waveMembers, (*jobs.Runner).StartTest)},
		{post, "/waves/{id}/start-cutover", operator, "waves.start_cutover", s.bulkStart(waveMembers, (*jobs.Runner).StartCutover)},

		{post, "/import", operator, "inventory.import", s.importCSV},
		{get, "/imports", viewer, "inventory.imports", s.listImports},
		{get, "/export", viewer, "inventory.export", s.exportCSV},

		{get, "/jobs", viewer, "jobs.list", s.listJobs},
		{get, "/jobs/{id}", viewer, "jobs.get", s.getJob},
		{post, "/jobs/start-test", operator, "jobs.start_test", s.startJob((*jobs.Runner).StartTest, true)},
		{post, "/jobs/start-cutover", operator, "jobs.start_cutover", s.startJob((*jobs.Runner).StartCutover, true)},
		{post, "/jobs/terminate", operator, "jobs.terminate", s.startJob(terminate, false)},
		{post, "/servers/{id}/finalize", operator, "servers.finalize_cutover", s.finalizeCutover},
		{get, "/servers/{id}/snapshots", viewer, "snapshots.list", s.listSnapshots},
		{post, "/servers/{id}/snapshots", operator, "snapshots.take", s.takeSnapshot},
		{get, "/servers/{id}/console", viewer, "servers.console", s.serverConsole},
		{get, "/servers/{id}/history", viewer, "servers.history", s.serverHistory},
		{get, "/usage", viewer, "usage.report", s.usageReport},

		{get, "/tokens", admin, "tokens.list", s.listTokens},
		{post, "/tokens", admin, "tokens.create", s.createToken},
		{del, "/tokens/{id}", admin, "tokens.revoke", s.revokeToken},

		{get, "/install-tokens", admin, "install_tokens.list", s.listInstallTokens},
		{post, "/install-tokens", admin, "install_tokens.create", s.createInstallToken},
		{del, "/install-tokens/{id}", admin, "install_tokens.revoke", s.revokeInstallToken},

		{get, "/audit", admin, "audit.list", s.listAudit},
	}
}

func terminate(r *jobs.Runner, ctx context.Context, ids []string, _ jobs.Options) (*ferry.Job, error) {
	return r.Terminate(ctx, ids)
}
