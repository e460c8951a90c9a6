// Package storedoc is what Ferry's SQL metadata stores (packages sqlite and
// postgres) share: objects kept as JSON documents with every time in UTC,
// and opaque page cursors.
package storedoc

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"reflect"
	"time"

	"github.com/ferrymigrate/ferry"
)

// Encode returns v as a JSON document with every time.Time in it converted
// to UTC. v itself is not changed. Fields that JSON skips (json:"-") are
// not in the document; stores keep them in columns of their own.
func Encode[T any](v *T) ([]byte, error) {
	b, _, err := EncodeCopy(v)
	return b, err
}

// EncodeCopy is Encode that also returns what Decode of the document
// would: the object a store hands back after a write, without parsing the
// document a third time.
func EncodeCopy[T any](v *T) ([]byte, *T, error) {
	b, err := json.Marshal(v)
	if err != nil {
		return nil, nil, fmt.Errorf("encode document: %w", err)
	}
	var c T
	if err := json.Unmarshal(b, &c); err != nil {
		return nil, nil, fmt.Errorf("encode document: %w", err)
	}
	toUTC(reflect.ValueOf(&c).Elem())
	b, err = json.Marshal(&c)
	if err != nil {
		return nil, nil, fmt.Errorf("encode document: %w", err)
	}
	return b, &c, nil
}

// Decode parses a document written by Encode.
func Decode[T any](b []byte) (*T, error) {
	var v T
	if err := json.Unmarshal(b, &v); err != nil {
		return nil, fmt.Errorf("decode document: %w", err)
	}
	return &v, nil
}

var timeType = reflect.TypeFor[time.Time]()

// toUTC converts every settable time.Time reachable from v to UTC.
func toUTC(v reflect.Value) {
	switch v.Kind() {
	case reflect.Struct:
		if v.Type() == timeType {
			if v.CanSet() {
				v.Set(reflect.ValueOf(v.Interface().(time.Time).UTC()))
			}
			return
		}
		for i := range v.NumField() {
			if v.Type().Field(i).IsExported() {
				toUTC(v.Field(i))
			}
		}
	case reflect.Slice, reflect.Array:
		for i := range v.Len() {
			toUTC(v.Index(i))
		}
	case reflect.Pointer:
		if !v.IsNil() {
			toUTC(v.Elem())
		}
	}
}

// UTC returns t in UTC truncated to the microsecond, the precision both SQL
// stores keep in time columns.
func UTC(t time.Time) time.Time {
	return t.UTC().Truncate(time.Microsecond)
}

// CeilUTC returns t in UTC rounded up to the microsecond, so that a
// "since t" filter on microsecond columns keeps nothing earlier than t.
func CeilUTC(t time.Time) time.Time {
	u := UTC(t)
	if u.Before(t) {
		u = u.Add(time.Microsecond)
	}
	return u
}

// EncodeCursor returns an opaque cursor for a list of kind that resumes
// after the row whose sort key is key.
func EncodeCursor(kind string, key ...string) string {
	b, _ := json.Marshal(append([]string{kind}, key...)) // strings always marshal
	return base64.RawURLEncoding.EncodeToString(b)
}

// DecodeCursor parses a cursor made by EncodeCursor for a list of kind
// with n key parts. An empty cursor gives nil. A malformed cursor, or one
// from another list, is an error wrapping ferry.ErrInvalid.
func DecodeCursor(kind, cursor string, n int) ([]string, error) {
	if cursor == "" {
		return nil, nil
	}
	b, err := base64.RawURLEncoding.DecodeString(cursor)
	var parts []string
	if err == nil {
		err = json.Unmarshal(b, &parts)
	}
	if err != nil || len(parts) != n+1 || parts[0] != kind {
		return nil, fmt.Errorf("bad page cursor %q: %w", cursor, ferry.ErrInvalid)
	}
	return parts[1:], nil
}
