-- Ferry metadata, version 1. Each object is a JSON document (doc) plus the
-- columns that filters, sort orders and unique constraints use.

CREATE TABLE servers (
	id                TEXT PRIMARY KEY,
	machine_id        TEXT UNIQUE,          -- NULL until an agent pairs
	hostname          TEXT NOT NULL,
	search            TEXT NOT NULL,        -- lower(id) \n lower(hostname)
	lifecycle         TEXT NOT NULL,
	replication_state TEXT NOT NULL,
	application_id    TEXT NOT NULL,
	wave_id           TEXT NOT NULL,
	archived          INTEGER NOT NULL,
	agent_cert_serial TEXT NOT NULL,
	doc               TEXT NOT NULL
) STRICT;
CREATE INDEX servers_lifecycle ON servers (archived, lifecycle, id);
CREATE INDEX servers_replication ON servers (archived, replication_state, id);
CREATE INDEX servers_application ON servers (application_id, id);
CREATE INDEX servers_wave ON servers (wave_id, id);
CREATE INDEX servers_hostname ON servers (hostname);

CREATE TABLE server_tags (
	server_id TEXT NOT NULL REFERENCES servers (id) ON DELETE CASCADE,
	key       TEXT NOT NULL,
	value     TEXT NOT NULL,
	PRIMARY KEY (server_id, key)
) STRICT, WITHOUT ROWID;
CREATE INDEX server_tags_key_value ON server_tags (key, value, server_id);

CREATE TABLE templates (
	id   TEXT PRIMARY KEY,
	name TEXT NOT NULL UNIQUE,
	doc  TEXT NOT NULL
) STRICT;

CREATE TABLE applications (
	id       TEXT PRIMARY KEY,
	name     TEXT NOT NULL UNIQUE,
	search   TEXT NOT NULL,
	wave_id  TEXT NOT NULL,
	archived INTEGER NOT NULL,
	doc      TEXT NOT NULL
) STRICT;
CREATE INDEX applications_wave ON applications (wave_id, id);

CREATE TABLE waves (
	id       TEXT PRIMARY KEY,
	name     TEXT NOT NULL UNIQUE,
	search   TEXT NOT NULL,
	archived INTEGER NOT NULL,
	doc      TEXT NOT NULL
) STRICT;

CREATE TABLE tokens (
	id   TEXT PRIMARY KEY,
	hash BLOB,
	doc  TEXT NOT NULL
) STRICT;

CREATE TABLE install_tokens (
	id   TEXT PRIMARY KEY,
	hash BLOB,
	doc  TEXT NOT NULL
) STRICT;

CREATE TABLE jobs (
	id         TEXT PRIMARY KEY,
	created_at INTEGER NOT NULL,            -- Unix microseconds, UTC
	status     TEXT NOT NULL,
	doc        TEXT NOT NULL
) STRICT;
CREATE INDEX jobs_created ON jobs (created_at DESC, id DESC);

CREATE TABLE job_servers (
	job_id    TEXT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
	server_id TEXT NOT NULL,
	PRIMARY KEY (job_id, server_id)
) STRICT, WITHOUT ROWID;
CREATE INDEX job_servers_server ON job_servers (server_id, job_id);

CREATE TABLE job_log (
	seq    INTEGER PRIMARY KEY AUTOINCREMENT,
	job_id TEXT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
	doc    TEXT NOT NULL
) STRICT;
CREATE INDEX job_log_job ON job_log (job_id, seq);

CREATE TABLE audit (
	id      INTEGER PRIMARY KEY AUTOINCREMENT,
	time    INTEGER NOT NULL,               -- Unix microseconds, UTC
	actor   TEXT NOT NULL,
	outcome TEXT NOT NULL,
	doc     TEXT NOT NULL
) STRICT;
CREATE INDEX audit_actor ON audit (actor, id);
CREATE INDEX audit_time ON audit (time);
