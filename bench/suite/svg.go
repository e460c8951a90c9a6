package suite

import (
	"bytes"
	"encoding/xml"
	"fmt"
	"io"
)

// SVG layout, in pixels.
const (
	svgWidth    = 1240
	svgLabelW   = 430
	svgBarW     = 420
	svgRowH     = 22
	svgHeaderH  = 56
	svgMaxRatio = 2.0 // bars are drawn on a 0..2× scale; longer ones are clipped
)

// WriteSVG draws every figure that has a ratio as a horizontal bar of
// that ratio (0 to 2×, a line at 1×), green where its goal was met, red
// where it was missed, grey where it has none, with the value and unit
// beside it; regressions are marked. Plain SVG, no dependencies.
func WriteSVG(w io.Writer, r *Report, regs []Regression) error {
	flagged := map[string]bool{}
	for _, g := range regs {
		flagged[g.Key] = true
	}
	var rows []Figure
	for _, f := range r.Figures {
		if f.Ratio != 0 {
			rows = append(rows, f)
		}
	}
	h := svgHeaderH + len(rows)*svgRowH + 20
	var b bytes.Buffer
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" viewBox="0 0 %d %d" font-family="sans-serif" font-size="12">`+"\n", svgWidth, h, svgWidth, h)
	fmt.Fprintf(&b, `<rect width="%d" height="%d" fill="white"/>`+"\n", svgWidth, h)
	fmt.Fprintf(&b, `<text x="8" y="18" font-size="14" font-weight="bold">%s</text>`+"\n", esc("Ferry benchmarks: each figure as a ratio of its ceiling or peer"))
	fmt.Fprintf(&b, `<text x="8" y="36">%s</text>`+"\n", esc(fmt.Sprintf("%s, %d cores; %s; %s", r.Machine.CPU, r.Machine.Cores, r.Profile, r.Started.UTC().Format("2006-01-02 15:04 UTC"))))
	x0 := svgLabelW
	one := x0 + int(svgBarW/svgMaxRatio)
	fmt.Fprintf(&b, `<text x="%d" y="%d" text-anchor="middle">1×</text>`+"\n", one, svgHeaderH-4)
	for i, f := range rows {
		y := svgHeaderH + i*svgRowH
		ratio := min(max(f.Ratio, 0), svgMaxRatio)
		bw := int(ratio / svgMaxRatio * svgBarW)
		color := "#9e9e9e"
		if f.Met != nil {
			color = "#c62828"
			if *f.Met {
				color = "#2e7d32"
			}
		}
		label := f.Section + ": " + f.Name
		if flagged[f.Key()] {
			label = "REGRESSED " + label
		}
		fmt.Fprintf(&b, `<text x="%d" y="%d" text-anchor="end">%s</text>`+"\n", x0-6, y+15, esc(label))
		fmt.Fprintf(&b, `<rect x="%d" y="%d" width="%d" height="%d" fill="%s"><title>%s</title></rect>`+"\n",
			x0, y+3, bw, svgRowH-6, color, esc(fmt.Sprintf("%s %s; ratio %s of %s; goal %s", formatValue(f.Value), f.Unit, formatValue(f.Ratio), f.RatioOf, f.Goal)))
		fmt.Fprintf(&b, `<text x="%d" y="%d">%s</text>`+"\n", x0+svgBarW+6, y+15,
			esc(fmt.Sprintf("%s× of %s (%s %s)", formatValue(f.Ratio), f.RatioOf, formatValue(f.Value), f.Unit)))
	}
	fmt.Fprintf(&b, `<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="black" stroke-dasharray="3,3"/>`+"\n", one, svgHeaderH, one, svgHeaderH+len(rows)*svgRowH)
	b.WriteString("</svg>\n")
	if _, err := w.Write(b.Bytes()); err != nil {
		return fmt.Errorf("write svg: %w", err)
	}
	return nil
}

// esc escapes text for an XML text node or attribute.
func esc(s string) string {
	var b bytes.Buffer
	_ = xml.EscapeText(&b, []byte(s))
	return b.String()
}
