package storedoc

import (
	"errors"
	"testing"
	"time"

	"github.com/ferrymigrate/ferry"
)

func TestCursorRoundTrip(t *testing.T) {
	c := EncodeCursor("jobs", "2024-01-02T03:04:05.000006Z", "id\x00with \"odd\" bytes")
	got, err := DecodeCursor("jobs", c, 2)
	if err != nil || got[0] != "2024-01-02T03:04:05.000006Z" || got[1] != "id\x00with \"odd\" bytes" {
		t.Fatalf("DecodeCursor = %q, %v", got, err)
	}
	for _, tc := range []struct{ kind, cursor string }{
		{"servers", c},          // another list's cursor
		{"jobs", "%%%"},         // not base64
		{"jobs", "bnVsbA"},      // "null"
		{"jobs", "WyJqb2JzIl0"}, // ["jobs"]: too few parts
	} {
		if _, err := DecodeCursor(tc.kind, tc.cursor, 2); !errors.Is(err, ferry.ErrInvalid) {
			t.Errorf("DecodeCursor(%q, %q): %v, want ErrInvalid", tc.kind, tc.cursor, err)
		}
	}
	if got, err := DecodeCursor("jobs", "", 2); got != nil || err != nil {
		t.Errorf("empty cursor: %v, %v", got, err)
	}
}

func TestEncodeUTC(t *testing.T) {
	zone := time.FixedZone("X", 3600)
	in := ferry.Job{ID: "j", CreatedAt: time.Date(2024, 1, 2, 3, 4, 5, 6, zone)}
	b, err := Encode(&in)
	if err != nil {
		t.Fatal(err)
	}
	out, err := Decode[ferry.Job](b)
	if err != nil {
		t.Fatal(err)
	}
	if out.CreatedAt.Location() != time.UTC || !out.CreatedAt.Equal(in.CreatedAt) {
		t.Fatalf("CreatedAt %v, want %v in UTC", out.CreatedAt, in.CreatedAt)
	}
	if in.CreatedAt.Location() != zone {
		t.Fatal("Encode changed its argument")
	}
}

func TestCeilUTC(t *testing.T) {
	base := time.Date(2024, 1, 2, 3, 4, 5, 6000, time.UTC)
	for _, tc := range []struct{ in, want time.Time }{
		{base, base},
		{base.Add(1), base.Add(time.Microsecond)},
		{base.Add(999), base.Add(time.Microsecond)},
	} {
		if got := CeilUTC(tc.in); !got.Equal(tc.want) {
			t.Errorf("CeilUTC(%v) = %v, want %v", tc.in, got, tc.want)
		}
	}
}
