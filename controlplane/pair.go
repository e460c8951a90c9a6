package controlplane

import (
	"errors"
	"fmt"
	"net/http"
	"regexp"
	"time"

	"github.com/ferrymigrate/ferry"
	"github.com/ferrymigrate/ferry/api"
	"github.com/ferrymigrate/ferry/auth"
)

const (
	maxCSRBytes = 16 << 10
	maxDisks    = 256
	maxNICs     = 64
)

var machineIDRe = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$`)

// checkPairRequest validates the host facts an agent sends before anything
// is looked up or written.
func checkPairRequest(req *api.PairRequest) error {
	if !machineIDRe.MatchString(req.MachineID) {
		return badRequest("machine_id %q: want 1 to 128 letters, digits, '.', '_', ':' or '-'", req.MachineID)
	}
	if err := checkName("hostname", req.Hostname); err != nil {
		return err
	}
	for f, v := range map[string]string{"os": req.OS, "kernel": req.Kernel, "agent_version": req.AgentVersion} {
		if err := checkText(f, v, 256); err != nil {
			return err
		}
	}
	if req.CPUs < 0 || req.CPUs > 4096 {
		return badRequest("cpus %d: want 0 to 4096", req.CPUs)
	}
	if req.RAMBytes < 0 {
		return badRequest("ram_bytes must not be negative")
	}
	if len(req.NICs) > maxNICs {
		return badRequest("at most %d nics", maxNICs)
	}
	for i, n := range req.NICs {
		if err := checkText(fmt.Sprintf("nics[%d].name", i), n.Name, 64); err != nil {
			return err
		}
		if err := checkText(fmt.Sprintf("nics[%d].mac", i), n.MAC, 64); err != nil {
			return err
		}
		if len(n.IPs) > 64 {
			return badRequest("nics[%d]: at most 64 ips", i)
		}
		for j, ip := range n.IPs {
			if err := checkText(fmt.Sprintf("nics[%d].ips[%d]", i, j), ip, 64); err != nil {
				return err
			}
		}
	}
	if len(req.Disks) > maxDisks {
		return badRequest("at most %d disks", maxDisks)
	}
	seen := map[string]bool{}
	for i, d := range req.Disks {
		if err := checkName(fmt.Sprintf("disks[%d].name", i), d.Name); err != nil {
			return err
		}
		if seen[d.Name] {
			return badRequest("disks[%d].name %q appears twice", i, d.Name)
		}
		seen[d.Name] = true
		if d.SizeBytes < 0 {
			return badRequest("disks[%d].size_bytes must not be negative", i)
		}
		switch d.LogicalBlockSize {
		case 512, 1024, 2048, 4096:
		default:
			return badRequest("disks[%d].logical_block_size %d: want 512, 1024, 2048 or 4096", i, d.LogicalBlockSize)
		}
		if err := checkText(fmt.Sprintf("disks[%d].model", i), d.Model, 256); err != nil {
			return err
		}
	}
	if req.CSR == "" {
		return badRequest("csr is required: a PEM certificate signing request")
	}
	if len(req.CSR) > maxCSRBytes {
		return badRequest("csr is longer than %d bytes", maxCSRBytes)
	}
	return nil
}

// pair lets an agent join with an install token: it checks the token,
// signs the agent's CSR and creates the source server, or updates it when
// the same machine pairs again.
func (s *Server) pair(w http.ResponseWriter, r *http.Request, c *caller) error {
	if s.limiter.blocked(c.ip, s.now()) {
		return apiErr(http.StatusTooManyRequests, api.CodeRateLimited, "too many failed pairing attempts from %s; wait a minute", c.ip)
	}
	var req api.PairRequest
	if err := decodeBody(w, r, &req); err != nil {
		return err
	}
	id, secret, err := auth.Parse(auth.InstallTokenPrefix, req.InstallToken)
	if err != nil {
		s.limiter.fail(c.ip, s.now())
		return apiErr(http.StatusUnauthorized, api.CodeUnauthorized, "install token: %v", err)
	}
	c.actor = "install-token:" + id
	ctx := r.Context()
	it, err := s.Store.InstallToken(ctx, id)
	if err != nil && !isNotFound(err) {
		return err
	}
	if err != nil || !auth.Check(it.Hash, secret) {
		s.limiter.fail(c.ip, s.now())
		return apiErr(http.StatusUnauthorized, api.CodeUnauthorized, "install token is not valid")
	}
	now := s.now()
	if err := it.Usable(now); err != nil {
		return apiErr(http.StatusUnauthorized, api.CodeUnauthorized, "install token %s: %v; create a new one with 'ferry install-tokens create'", id, err)
	}
	if err := checkPairRequest(&req); err != nil {
		return err
	}

	existing, err := s.Store.ServerByMachineID(ctx, req.MachineID)
	if err != nil && !isNotFound(err) {
		return err
	}
	serverID := newID("s")
	if existing != nil {
		serverID = existing.ID
		if existing.Archived {
			return apiErr(http.StatusConflict, api.CodeConflict, "machine %s is archived source server %s; unarchive or delete it before pairing again", req.MachineID, existing.ID)
		}
	}
	validity := s.AgentCertValidity
	if validity <= 0 {
		validity = 365 * 24 * time.Hour
	}
	// Signing changes nothing, so a bad CSR is refused before the token
	// use is counted.
	certPEM, serial, err := s.Signer.SignAgentCSR([]byte(req.CSR), serverID, validity)
	if err != nil {
		return badRequest("csr: %v", err)
	}
	if _, err := s.Store.UseInstallToken(ctx, id, now); err != nil {
		if errors.Is(err, ferry.ErrInstallTokenUsedUp) || errors.Is(err, ferry.ErrInstallTokenExpired) || errors.Is(err, ferry.ErrInstallTokenRevoked) {
			return apiErr(http.StatusUnauthorized, api.CodeUnauthorized, "install token %s: %v", id, err)
		}
		return err
	}

	apply := func(srv *ferry.SourceServer) {
		srv.MachineID = req.MachineID
		srv.Hostname = req.Hostname
		srv.OS = req.OS
		srv.Kernel = req.Kernel
		srv.CPUs = req.CPUs
		srv.RAMBytes = req.RAMBytes
		srv.NICs = req.NICs
		srv.AgentVersion = req.AgentVersion
		srv.AgentCertSerial, srv.AgentCertPrevSerial = serial.String(), ""
		srv.Disks = mergeDisks(srv.Disks, req.Disks)
		if it.ApplicationID != "" {
			srv.ApplicationID = it.ApplicationID
		}
		if it.WaveID != "" {
			srv.WaveID = it.WaveID
		}
		for k, v := range it.Tags {
			if srv.Tags == nil {
				srv.Tags = map[string]string{}
			}
			srv.Tags[k] = v
		}
		srv.LastSeenAt = now
		srv.UpdatedAt = now
		srv.Replication.Steps = pairedSteps()
	}
	var srv *ferry.SourceServer
	if existing == nil {
		tmpl, err := s.defaultTemplate(ctx)
		if err != nil {
			return err
		}
		lc := ferry.LifecycleNotReady
		if req.Discovered {
			lc = ferry.LifecycleDiscovered
		}
		srv = &ferry.SourceServer{
			ID: serverID, Lifecycle: lc,
			Replication:      ferry.ReplicationInfo{State: ferry.ReplicationStopped},
			ReplicationSetup: tmpl.Replication, LaunchSetup: tmpl.Launch, CreatedAt: now,
		}
		apply(srv)
		if err := s.Store.CreateServer(ctx, srv); err != nil {
			return err
		}
	} else {
		srv, err = s.Store.UpdateServer(ctx, serverID, func(srv *ferry.SourceServer) error {
			if srv.Lifecycle == ferry.LifecycleDisconnected || (srv.Lifecycle == ferry.LifecycleDiscovered && !req.Discovered) || srv.Lifecycle == ferry.LifecyclePendingInstallation {
				if err := ferry.CheckTransition(srv.Lifecycle, ferry.LifecycleNotReady); err != nil {
					return err
				}
				srv.Lifecycle = ferry.LifecycleNotReady
				srv.Replication.State = ferry.ReplicationStopped
			}
			apply(srv)
			return nil
		})
		if err != nil {
			return err
		}
	}
	s.log().Info("agent paired", "server", srv.ID, "hostname", srv.Hostname, "machine_id", srv.MachineID, "install_token", id, "repaired", existing != nil)
	writeJSON(w, http.StatusOK, api.PairResponse{
		SourceServerID:   srv.ID,
		Certificate:      string(certPEM),
		CACertificate:    string(s.Signer.CertPEM()),
		DataPlaneAddress: s.DataPlaneAddr,
	})
	return nil
}

// mergeDisks takes the agent's view of the disks and keeps what Ferry
// knows of each (replicated bytes) by name.
func mergeDisks(old []ferry.Disk, found []api.PairDisk) []ferry.Disk {
	byName := map[string]ferry.Disk{}
	for _, d := range old {
		byName[d.Name] = d
	}
	out := make([]ferry.Disk, 0, len(found))
	for _, f := range found {
		d := byName[f.Name]
		d.Name, d.SizeBytes, d.LogicalBlockSize, d.Model = f.Name, f.SizeBytes, f.LogicalBlockSize, f.Model
		out = append(out, d)
	}
	return out
}

func pairedSteps() []ferry.InitiationStepState {
	steps := make([]ferry.InitiationStepState, len(ferry.InitiationSteps))
	for i, st := range ferry.InitiationSteps {
		steps[i] = ferry.InitiationStepState{Step: st, Status: ferry.StepNotStarted}
	}
	steps[0].Status = ferry.StepSucceeded // AUTHENTICATE_WITH_SERVICE: the pairing itself
	return steps
}
