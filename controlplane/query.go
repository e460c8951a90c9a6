package controlplane

import (
	"errors"
	"net/url"
	"strconv"
	"strings"

	"github.com/ferrymigrate/ferry"
)

const maxQueryValue = 256

// page reads limit and next_token, refusing values a client could not have
// meant.
func page(q url.Values) (limit int, after string, err error) {
	if v := q.Get("limit"); v != "" {
		n, perr := strconv.Atoi(v)
		if perr != nil || n < 1 || n > ferry.MaxPageSize {
			return 0, "", badRequest("limit %q: want a whole number from 1 to %d", v, ferry.MaxPageSize)
		}
		limit = n
	}
	after = q.Get("next_token")
	if len(after) > 512 {
		return 0, "", badRequest("next_token is too long")
	}
	return limit, after, nil
}

func boolParam(q url.Values, name string) (bool, error) {
	switch v := q.Get(name); v {
	case "", "false", "0":
		return false, nil
	case "true", "1":
		return true, nil
	default:
		return false, badRequest("%s %q: want true or false", name, v)
	}
}

// listParams lists the query values that each kind of list understands, so
// a misspelt filter is an error instead of silently matching everything.
func checkParams(q url.Values, allowed ...string) error {
	for k, vs := range q {
		ok := false
		for _, a := range allowed {
			if k == a {
				ok = true
				break
			}
		}
		if !ok {
			return badRequest("unknown query parameter %q (allowed: %s)", k, strings.Join(allowed, ", "))
		}
		for _, v := range vs {
			if len(v) > maxQueryValue && k != "next_token" {
				return badRequest("query parameter %q is longer than %d bytes", k, maxQueryValue)
			}
		}
	}
	return nil
}

// serverFilter turns query parameters into a ferry.ServerFilter.
func serverFilter(q url.Values) (ferry.ServerFilter, error) {
	var f ferry.ServerFilter
	if err := checkParams(q, "lifecycle_state", "replication_state", "application_id", "wave_id", "tag", "text", "archived", "limit", "next_token"); err != nil {
		return f, err
	}
	var err error
	if f.Limit, f.After, err = page(q); err != nil {
		return f, err
	}
	for _, v := range splitList(q["lifecycle_state"]) {
		st := ferry.LifecycleState(strings.ToUpper(v))
		if !st.Valid() {
			return f, badRequest("lifecycle_state %q is not a lifecycle state (one of %v)", v, ferry.LifecycleStates)
		}
		f.Lifecycle = append(f.Lifecycle, st)
	}
	for _, v := range splitList(q["replication_state"]) {
		st := ferry.ReplicationState(strings.ToUpper(v))
		if !st.Valid() {
			return f, badRequest("replication_state %q is not a replication state (one of %v)", v, ferry.ReplicationStates)
		}
		f.Replication = append(f.Replication, st)
	}
	f.ApplicationID = q.Get("application_id")
	f.WaveID = q.Get("wave_id")
	f.Text = q.Get("text")
	for _, t := range q["tag"] {
		k, v, _ := strings.Cut(t, "=")
		if k == "" {
			return f, badRequest("tag %q: want key=value or key", t)
		}
		if f.Tags == nil {
			f.Tags = map[string]string{}
		}
		f.Tags[k] = v
	}
	if f.Archived, err = boolParam(q, "archived"); err != nil {
		return f, err
	}
	return f, nil
}

func splitList(vs []string) []string {
	var out []string
	for _, v := range vs {
		for _, p := range strings.Split(v, ",") {
			if p = strings.TrimSpace(p); p != "" {
				out = append(out, p)
			}
		}
	}
	return out
}

func isNotFound(err error) bool { return errors.Is(err, ferry.ErrNotFound) }

func isConflict(err error) bool { return errors.Is(err, ferry.ErrConflict) }
