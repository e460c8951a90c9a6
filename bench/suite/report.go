package suite

import (
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"os"
	"time"
)

// Better says which way a figure improves.
type Better string

// Directions of improvement. Informational figures (None) are never
// flagged as regressions.
const (
	Higher Better = "higher"
	Lower  Better = "lower"
	None   Better = ""
)

// Figure is one measured value of a run.
type Figure struct {
	// Section is the section that measured it ("limits", "initial", …).
	Section string `json:"section"`
	// Name identifies the figure within its section; Section and Name
	// together are the key a reference is matched on.
	Name  string  `json:"name"`
	Value float64 `json:"value"`
	Unit  string  `json:"unit"`
	// Better says whether a larger or a smaller Value is an improvement.
	Better Better `json:"better,omitempty"`
	// Ratio is Value relative to RatioOf (its ceiling or its peer); 0
	// when there is none.
	Ratio   float64 `json:"ratio,omitempty"`
	RatioOf string  `json:"ratio_of,omitempty"`
	// Goal is the target in words ("≥ 0.9 of the limit"); Met says whether
	// this run reached it (nil: no goal).
	Goal string `json:"goal,omitempty"`
	Met  *bool  `json:"met,omitempty"`
	// Scaled marks a figure that depends on the run's sizes (a time, a
	// byte count): it is compared only with a reference of the same
	// profile. Rates and ratios are compared across profiles.
	Scaled bool `json:"scaled,omitempty"`
	// Note says anything a reader needs to read the value right.
	Note string `json:"note,omitempty"`
}

// Key is the figure's identity across runs.
func (f Figure) Key() string { return f.Section + "/" + f.Name }

// met returns a *bool for Figure.Met.
func met(ok bool) *bool { return &ok }

// Skip records a section that did not run and why.
type Skip struct {
	Section string `json:"section"`
	Reason  string `json:"reason"`
}

// Machine describes where a run happened.
type Machine struct {
	CPU       string `json:"cpu"`
	Cores     int    `json:"cores"`
	RAMBytes  int64  `json:"ram_bytes"`
	Kernel    string `json:"kernel"`
	Disk      string `json:"disk"`
	GoVersion string `json:"go_version"`
}

// ReportVersion is the version of the JSON layout.
const ReportVersion = 1

// Report is one run of the suite, as written to JSON.
type Report struct {
	Version int       `json:"version"`
	Started time.Time `json:"started"`
	Seconds float64   `json:"seconds"`
	// Profile names the run's sizes ("full: image 4096 MiB, …"): scaled
	// figures are compared only between reports of the same profile.
	Profile string   `json:"profile"`
	Quick   bool     `json:"quick"`
	Machine Machine  `json:"machine"`
	Figures []Figure `json:"figures"`
	Skipped []Skip   `json:"skipped,omitempty"`
}

// Figure returns the figure with key section/name, if any.
func (r *Report) Figure(section, name string) (Figure, bool) {
	for _, f := range r.Figures {
		if f.Section == section && f.Name == name {
			return f, true
		}
	}
	return Figure{}, false
}

// Validate checks what Compare and the table rely on: a known version,
// unique keys, known directions.
func (r *Report) Validate() error {
	if r.Version != ReportVersion {
		return fmt.Errorf("report version %d, this ferry reads %d", r.Version, ReportVersion)
	}
	seen := map[string]bool{}
	for i, f := range r.Figures {
		if f.Section == "" || f.Name == "" {
			return fmt.Errorf("figure %d: section and name are required", i)
		}
		if seen[f.Key()] {
			return fmt.Errorf("figure %q appears twice", f.Key())
		}
		seen[f.Key()] = true
		switch f.Better {
		case Higher, Lower, None:
		default:
			return fmt.Errorf("figure %q: better is %q, want \"higher\", \"lower\" or empty", f.Key(), f.Better)
		}
	}
	return nil
}

// WriteFile writes the report as indented JSON.
func (r *Report) WriteFile(path string) error {
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return fmt.Errorf("encode report: %w", err)
	}
	if err := os.WriteFile(path, append(b, '\n'), 0o644); err != nil {
		return fmt.Errorf("write report: %w", err)
	}
	return nil
}

// ReadReport reads and validates a report written by WriteFile.
func ReadReport(path string) (*Report, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read report: %w", err)
	}
	return ParseReport(b)
}

// ParseReport decodes and validates a JSON report.
func ParseReport(b []byte) (*Report, error) {
	var r Report
	if err := json.Unmarshal(b, &r); err != nil {
		return nil, fmt.Errorf("decode report: %w", err)
	}
	if err := r.Validate(); err != nil {
		return nil, fmt.Errorf("report: %w", err)
	}
	return &r, nil
}

// Regression is a figure that got worse than its reference by more than
// the tolerance.
type Regression struct {
	Key       string  `json:"key"`
	Reference float64 `json:"reference"`
	Value     float64 `json:"value"`
	// Worse is how much worse, as a fraction of the reference (0.25 is
	// 25 % worse).
	Worse float64 `json:"worse"`
}

// ErrRegression is returned (wrapped) when a run regressed and the caller
// asked to fail on it.
var ErrRegression = errors.New("figures regressed against the reference")

// DefaultTolerance is how much worse than its reference a figure may get
// before it is flagged.
const DefaultTolerance = 0.10

// Compare returns the figures of cur that are more than tol worse than
// the same figure of ref, direction-aware. Figures without a direction,
// missing from either report, with a zero reference, or scaled figures
// when the profiles differ are not compared.
func Compare(ref, cur *Report, tol float64) []Regression {
	var out []Regression
	if ref == nil || cur == nil {
		return nil
	}
	sameProfile := ref.Profile == cur.Profile
	for _, f := range cur.Figures {
		if f.Better == None || (f.Scaled && !sameProfile) {
			continue
		}
		r, ok := ref.Figure(f.Section, f.Name)
		// A figure whose unit changed measures something else now.
		if !ok || r.Value == 0 || r.Better != f.Better || r.Unit != f.Unit {
			continue
		}
		// Improvements come out negative.
		worse := (f.Value - r.Value) / math.Abs(r.Value)
		if f.Better == Higher {
			worse = -worse
		}
		// The epsilon keeps "exactly the tolerance" (1.1 against 1) unflagged
		// despite binary floating point.
		if worse > tol+1e-9 {
			out = append(out, Regression{Key: f.Key(), Reference: r.Value, Value: f.Value, Worse: worse})
		}
	}
	return out
}
