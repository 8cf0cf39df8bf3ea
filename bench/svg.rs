//! A grouped bar chart as hand-written SVG: one panel per measure (each with
//! its own scale), one group of bars per case, one bar per system.

use std::fmt::Write as _;

/// One bar group: a case (e.g. "direct, 1 stream") and one value per series
/// (`None` if it was not measured).
#[derive(Debug, Clone)]
pub struct Group {
    /// The case's label under the bars.
    pub label: String,
    /// One value per series, in the chart's series order.
    pub values: Vec<Option<f64>>,
}

/// One panel: a measure with its unit and its groups.
#[derive(Debug, Clone)]
pub struct Panel {
    /// The measure, e.g. "TCP throughput (higher is better)".
    pub title: String,
    /// The unit written on the axis, e.g. "Mbit/s".
    pub unit: String,
    /// The cases.
    pub groups: Vec<Group>,
}

/// A chart of panels side by side, two per row.
#[derive(Debug, Clone)]
pub struct Chart {
    /// The heading.
    pub title: String,
    /// A line under the heading (date, machine, load).
    pub subtitle: String,
    /// The series' names, e.g. `["umbra", "Yggdrasil 0.4.7"]`.
    pub series: Vec<String>,
    /// The panels.
    pub panels: Vec<Panel>,
}

const COLOURS: [&str; 4] = ["#2b6cb0", "#dd6b20", "#38a169", "#805ad5"];
const PANEL_W: f64 = 460.0;
const PANEL_H: f64 = 260.0;
const MARGIN: f64 = 20.0;
const HEADER_H: f64 = 70.0;

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// A "nice" axis maximum at or above `v`: 1, 2 or 5 times a power of ten.
fn nice_max(v: f64) -> f64 {
    if v <= 0.0 || !v.is_finite() {
        return 1.0;
    }
    let p = 10f64.powf(v.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * p)
        .find(|&m| m >= v)
        .unwrap_or(10.0 * p)
}

fn fmt_value(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

/// The series a panel draws: those with a value in any of its groups (a
/// system that lacks the measure gets no slot), or every series if none
/// has one.
fn shown_series(panel: &Panel, series: usize) -> Vec<usize> {
    let shown: Vec<usize> = (0..series)
        .filter(|&si| {
            panel
                .groups
                .iter()
                .any(|g| g.values.get(si).is_some_and(Option::is_some))
        })
        .collect();
    if shown.is_empty() {
        (0..series).collect()
    } else {
        shown
    }
}

impl Chart {
    /// The chart as a standalone SVG document.
    pub fn render(&self) -> String {
        let cols = 2usize;
        let rows = self.panels.len().div_ceil(cols).max(1);
        let width = MARGIN + cols as f64 * (PANEL_W + MARGIN);
        let height = HEADER_H + rows as f64 * (PANEL_H + MARGIN) + MARGIN;
        let mut s = String::new();
        let _ = writeln!(
            s,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="11">"#
        );
        let _ = writeln!(
            s,
            r##"<rect width="100%" height="100%" fill="white"/><text x="{MARGIN}" y="24" font-size="16" font-weight="bold">{}</text><text x="{MARGIN}" y="42" fill="#555">{}</text>"##,
            escape(&self.title),
            escape(&self.subtitle)
        );
        // Legend.
        let mut lx = MARGIN;
        for (i, name) in self.series.iter().enumerate() {
            let _ = writeln!(
                s,
                r#"<rect x="{lx}" y="52" width="12" height="12" fill="{}"/><text x="{}" y="62">{}</text>"#,
                COLOURS[i % COLOURS.len()],
                lx + 16.0,
                escape(name)
            );
            lx += 30.0 + 7.0 * name.len() as f64;
        }
        for (pi, panel) in self.panels.iter().enumerate() {
            let x0 = MARGIN + (pi % cols) as f64 * (PANEL_W + MARGIN);
            let y0 = HEADER_H + (pi / cols) as f64 * (PANEL_H + MARGIN);
            self.render_panel(&mut s, panel, x0, y0);
        }
        s.push_str("</svg>\n");
        s
    }

    fn render_panel(&self, s: &mut String, panel: &Panel, x0: f64, y0: f64) {
        let (left, top, bottom) = (50.0, 28.0, 40.0);
        let plot_w = PANEL_W - left - 10.0;
        let plot_h = PANEL_H - top - bottom;
        let max = panel
            .groups
            .iter()
            .flat_map(|g| g.values.iter().flatten())
            .fold(0.0f64, |a, &b| a.max(b));
        let top_val = nice_max(max);
        let _ = writeln!(
            s,
            r##"<g transform="translate({x0},{y0})"><rect width="{PANEL_W}" height="{PANEL_H}" fill="#fafafa" stroke="#ddd"/><text x="8" y="18" font-weight="bold">{}</text>"##,
            escape(&panel.title)
        );
        // Axis with 5 ticks.
        for t in 0..=4 {
            let v = top_val * t as f64 / 4.0;
            let y = top + plot_h - plot_h * t as f64 / 4.0;
            let _ = writeln!(
                s,
                r##"<line x1="{left}" x2="{}" y1="{y}" y2="{y}" stroke="#e2e2e2"/><text x="{}" y="{}" text-anchor="end" fill="#555">{}</text>"##,
                left + plot_w,
                left - 4.0,
                y + 4.0,
                fmt_value(v)
            );
        }
        let _ = writeln!(
            s,
            r##"<text x="10" y="{}" transform="rotate(-90 10 {})" text-anchor="middle" fill="#555">{}</text>"##,
            top + plot_h / 2.0,
            top + plot_h / 2.0,
            escape(&panel.unit)
        );
        let n = panel.groups.len().max(1) as f64;
        let group_w = plot_w / n;
        let shown = shown_series(panel, self.series.len());
        let nseries = shown.len().max(1) as f64;
        let bar_w = (group_w * 0.8 / nseries).min(40.0);
        for (gi, g) in panel.groups.iter().enumerate() {
            let gx = left + gi as f64 * group_w + (group_w - bar_w * nseries) / 2.0;
            for (slot, &si) in shown.iter().enumerate() {
                let bx = gx + slot as f64 * bar_w;
                match g.values.get(si).copied().flatten().as_ref() {
                    Some(v) => {
                        let h = plot_h * (v / top_val).clamp(0.0, 1.0);
                        let _ = writeln!(
                            s,
                            r#"<rect x="{bx}" y="{}" width="{}" height="{h}" fill="{}"><title>{}: {}</title></rect><text x="{}" y="{}" text-anchor="middle" font-size="9">{}</text>"#,
                            top + plot_h - h,
                            bar_w - 2.0,
                            COLOURS[si % COLOURS.len()],
                            escape(&self.series[si]),
                            fmt_value(*v),
                            bx + (bar_w - 2.0) / 2.0,
                            top + plot_h - h - 3.0,
                            fmt_value(*v)
                        );
                    }
                    None => {
                        let _ = writeln!(
                            s,
                            r##"<text x="{}" y="{}" text-anchor="middle" font-size="9" fill="#999">n/a</text>"##,
                            bx + bar_w / 2.0,
                            top + plot_h - 3.0
                        );
                    }
                }
            }
            let _ = writeln!(
                s,
                r#"<text x="{}" y="{}" text-anchor="middle">{}</text>"#,
                left + gi as f64 * group_w + group_w / 2.0,
                top + plot_h + 16.0,
                escape(&g.label)
            );
        }
        s.push_str("</g>\n");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nice_axis_maxima() {
        assert_eq!(nice_max(0.0), 1.0);
        assert_eq!(nice_max(3.2), 5.0);
        assert_eq!(nice_max(1200.0), 2000.0);
        assert_eq!(nice_max(10.0), 10.0);
    }

    #[test]
    fn chart_draws_every_bar_and_escapes_labels() {
        let chart = Chart {
            title: "a <b> & c".into(),
            subtitle: "today".into(),
            series: vec!["umbra".into(), "Yggdrasil".into()],
            panels: vec![Panel {
                title: "throughput".into(),
                unit: "Mbit/s".into(),
                groups: vec![
                    Group {
                        label: "direct".into(),
                        values: vec![Some(900.0), Some(1200.0)],
                    },
                    Group {
                        label: "chain".into(),
                        values: vec![Some(300.0), None],
                    },
                ],
            }],
        };
        let svg = chart.render();
        assert!(svg.starts_with("<svg"));
        assert!(svg.trim_end().ends_with("</svg>"));
        assert!(svg.contains("a &lt;b&gt; &amp; c"));
        assert_eq!(svg.matches("<title>").count(), 3);
        assert!(svg.contains("n/a"));
    }

    #[test]
    fn a_series_without_values_gets_no_slot() {
        let panel = Panel {
            title: "rtt".into(),
            unit: "ms".into(),
            groups: vec![Group {
                label: "direct".into(),
                values: vec![Some(1.0), None, None],
            }],
        };
        assert_eq!(shown_series(&panel, 3), vec![0]);
        let empty = Panel {
            groups: vec![Group {
                label: "direct".into(),
                values: vec![None, None],
            }],
            ..panel
        };
        assert_eq!(shown_series(&empty, 2), vec![0, 1]);
    }
}
