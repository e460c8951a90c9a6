-- Ferry metadata, version 1. Ids sort bytewise (COLLATE "C"), as in Go and
-- SQLite, so pages follow the same order everywhere.
-- Each object is a JSON document (doc) plus the
-- columns that filters, sort orders and unique constraints use.

CREATE TABLE servers (
	id                text COLLATE "C" PRIMARY KEY,
	machine_id        text UNIQUE,          -- NULL until an agent pairs
	hostname          text NOT NULL,
	search            text NOT NULL,        -- lower(id) \n lower(hostname)
	lifecycle         text NOT NULL,
	replication_state text NOT NULL,
	application_id    text NOT NULL,
	wave_id           text NOT NULL,
	archived          boolean NOT NULL,
	agent_cert_serial text NOT NULL,
	doc               jsonb NOT NULL
);
CREATE INDEX servers_lifecycle ON servers (archived, lifecycle, id);
CREATE INDEX servers_replication ON servers (archived, replication_state, id);
CREATE INDEX servers_application ON servers (application_id, id);
CREATE INDEX servers_wave ON servers (wave_id, id);
CREATE INDEX servers_hostname ON servers (hostname);
CREATE INDEX servers_tags ON servers USING gin ((doc -> 'tags'));

CREATE TABLE templates (
	id   text COLLATE "C" PRIMARY KEY,
	name text NOT NULL UNIQUE,
	doc  jsonb NOT NULL
);

CREATE TABLE applications (
	id       text COLLATE "C" PRIMARY KEY,
	name     text NOT NULL UNIQUE,
	search   text NOT NULL,
	wave_id  text NOT NULL,
	archived boolean NOT NULL,
	doc      jsonb NOT NULL
);
CREATE INDEX applications_wave ON applications (wave_id, id);

CREATE TABLE waves (
	id       text COLLATE "C" PRIMARY KEY,
	name     text NOT NULL UNIQUE,
	search   text NOT NULL,
	archived boolean NOT NULL,
	doc      jsonb NOT NULL
);

CREATE TABLE tokens (
	id   text COLLATE "C" PRIMARY KEY,
	hash bytea,
	doc  jsonb NOT NULL
);

CREATE TABLE install_tokens (
	id   text COLLATE "C" PRIMARY KEY,
	hash bytea,
	doc  jsonb NOT NULL
);

CREATE TABLE jobs (
	id         text COLLATE "C" PRIMARY KEY,
	created_at timestamptz NOT NULL,
	status     text NOT NULL,
	doc        jsonb NOT NULL
);
CREATE INDEX jobs_created ON jobs (created_at DESC, id DESC);
CREATE INDEX jobs_servers ON jobs USING gin ((doc -> 'participating_servers') jsonb_path_ops);

CREATE TABLE job_log (
	seq    bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
	job_id text COLLATE "C" NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
	doc    jsonb NOT NULL
);
CREATE INDEX job_log_job ON job_log (job_id, seq);

CREATE TABLE audit (
	id      bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
	time    timestamptz NOT NULL,
	actor   text NOT NULL,
	outcome text NOT NULL,
	doc     jsonb NOT NULL
);
CREATE INDEX audit_actor ON audit (actor, id);
CREATE INDEX audit_time ON audit (time);
