package suite

import (
	"fmt"
	"io"
	"math"
	"strconv"
	"text/tabwriter"
)

// PrintTable writes the run as one table: section, figure, value and
// unit, ratio to its ceiling or peer, goal, whether it was met, and the
// change against the reference (regressions flagged).
func PrintTable(w io.Writer, r *Report, ref *Report, regs []Regression) error {
	m := r.Machine
	fmt.Fprintf(w, "Machine: %s, %d cores, %.1f GiB RAM, kernel %s, data disk %s, %s\n",
		m.CPU, m.Cores, float64(m.RAMBytes)/(1<<30), m.Kernel, m.Disk, m.GoVersion)
	fmt.Fprintf(w, "Profile: %s\n\n", r.Profile)
	flagged := map[string]Regression{}
	for _, g := range regs {
		flagged[g.Key] = g
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "section\tfigure\tvalue\tunit\tratio\tof\tgoal\tmet\tvs reference")
	for _, f := range r.Figures {
		ratio, of := "", ""
		if f.Ratio != 0 {
			ratio, of = formatValue(f.Ratio), f.RatioOf
		}
		metS := ""
		if f.Met != nil {
			metS = "no"
			if *f.Met {
				metS = "yes"
			}
		}
		vs := ""
		if ref != nil {
			if rf, ok := ref.Figure(f.Section, f.Name); ok && rf.Value != 0 && rf.Unit == f.Unit {
				vs = fmt.Sprintf("%+.0f %%", (f.Value-rf.Value)/math.Abs(rf.Value)*100)
			}
		}
		if g, ok := flagged[f.Key()]; ok {
			vs = fmt.Sprintf("REGRESSED %.0f %% worse (ref %s)", g.Worse*100, formatValue(g.Reference))
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", f.Section, f.Name, formatValue(f.Value), f.Unit, ratio, of, f.Goal, metS, vs)
	}
	if err := tw.Flush(); err != nil {
		return fmt.Errorf("print table: %w", err)
	}
	for _, s := range r.Skipped {
		fmt.Fprintf(w, "skipped %s: %s\n", s.Section, s.Reason)
	}
	for _, f := range r.Figures {
		if f.Note != "" {
			fmt.Fprintf(w, "note %s: %s\n", f.Key(), f.Note)
		}
	}
	return nil
}

// formatValue prints about three significant digits.
func formatValue(v float64) string {
	a := math.Abs(v)
	switch {
	case v == 0:
		return "0"
	case a >= 100:
		return strconv.FormatFloat(v, 'f', 0, 64)
	case a >= 10:
		return strconv.FormatFloat(v, 'f', 1, 64)
	case a >= 1:
		return strconv.FormatFloat(v, 'f', 2, 64)
	default:
		return strconv.FormatFloat(v, 'g', 3, 64)
	}
}
