package controlplane

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"strings"

	"github.com/ferrymigrate/ferry"
	"github.com/ferrymigrate/ferry/api"
)

// MaxBodyBytes bounds every request body.
const MaxBodyBytes = 1 << 20

func apiErr(status int, code, format string, args ...any) *api.Error {
	return &api.Error{Status: status, Code: code, Message: fmt.Sprintf(format, args...)}
}

func badRequest(format string, args ...any) *api.Error {
	return apiErr(http.StatusBadRequest, api.CodeBadRequest, format, args...)
}

// toAPIError maps any error a handler returns onto the JSON error sent.
func toAPIError(err error) *api.Error {
	var ae *api.Error
	var te *ferry.TransitionError
	switch {
	case errors.As(err, &ae):
		return ae
	case errors.As(err, &te):
		return apiErr(http.StatusConflict, api.CodeInvalidTransition, "%s", te.Error())
	case errors.Is(err, ferry.ErrNotFound):
		return apiErr(http.StatusNotFound, api.CodeNotFound, "%s", err.Error())
	case errors.Is(err, ferry.ErrConflict):
		return apiErr(http.StatusConflict, api.CodeConflict, "%s", err.Error())
	case errors.Is(err, ferry.ErrInvalid):
		return apiErr(http.StatusBadRequest, api.CodeBadRequest, "%s", err.Error())
	}
	return apiErr(http.StatusInternalServerError, api.CodeInternal, "internal error; the server log has details")
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(status)
	if v != nil {
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		_ = enc.Encode(v)
	}
}

// decodeBody reads a JSON request body strictly into v: JSON content type,
// at most MaxBodyBytes, no unknown fields, the right types, one value and
// nothing after it. Each refusal says what was wrong.
func decodeBody(w http.ResponseWriter, r *http.Request, v any) error {
	if ct := r.Header.Get("Content-Type"); ct != "" {
		mt, _, err := mime.ParseMediaType(ct)
		if err != nil || mt != "application/json" {
			return apiErr(http.StatusUnsupportedMediaType, api.CodeUnsupportedMedia, "request body must be application/json, not %q", ct)
		}
	}
	return decodeJSON(http.MaxBytesReader(w, r.Body, MaxBodyBytes), v)
}

// decodeJSON is the strict decoder behind decodeBody, apart so it can be
// fuzzed without HTTP.
func decodeJSON(body io.Reader, v any) error {
	dec := json.NewDecoder(body)
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return jsonError(err)
	}
	if _, err := dec.Token(); err != io.EOF {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return jsonError(err)
		}
		return badRequest("request body has data after the JSON value")
	}
	return nil
}

func jsonError(err error) *api.Error {
	var se *json.SyntaxError
	var te *json.UnmarshalTypeError
	var mbe *http.MaxBytesError
	switch {
	case errors.As(err, &mbe):
		return apiErr(http.StatusRequestEntityTooLarge, api.CodeTooLarge, "request body is larger than %d bytes", mbe.Limit)
	case errors.Is(err, io.EOF):
		return badRequest("request body is empty; send a JSON object")
	case errors.Is(err, io.ErrUnexpectedEOF):
		return badRequest("request body is truncated JSON")
	case errors.As(err, &se):
		return badRequest("malformed JSON at byte %d: %v", se.Offset, se)
	case errors.As(err, &te):
		field := te.Field
		if field == "" {
			return badRequest("request body must be a JSON object, not %s", te.Value)
		}
		return badRequest("field %q: got %s, want %s", field, te.Value, te.Type)
	case strings.HasPrefix(err.Error(), "json: unknown field "):
		return badRequest("unknown field %s", strings.TrimPrefix(err.Error(), "json: unknown field "))
	}
	return badRequest("invalid JSON: %v", err)
}

// writeList sends one page of a list; a nil page is sent as [] so clients
// never see null.
func writeList[T any](w http.ResponseWriter, items []T, next string) {
	if items == nil {
		items = []T{}
	}
	writeJSON(w, http.StatusOK, api.List[T]{Items: items, NextToken: next})
}
