// Package postgres is Ferry's metadata store for several control planes: a
// ferry.Store in a PostgreSQL database, reached with pgx (pgxpool).
//
// Objects are jsonb documents plus indexed columns for filters and sort
// orders. Update* read the row with SELECT ... FOR UPDATE inside a
// transaction, so concurrent updates of one object, from any number of
// control planes, are serialised and never lost. The schema is created and
// upgraded by SQL migrations embedded in the binary, recorded in the
// schema_migrations table and applied under an advisory lock, so control
// planes starting together do not race. Tables live in the first schema of
// the connection's search_path (set it with ?search_path=... in the URL).
package postgres
