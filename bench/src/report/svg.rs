//! The one chart the report draws: horizontal grouped bars, a group per row (a workload) and a
//! bar per series (a system), with min–max whiskers, printed values, dashed reference lines and
//! a red tick per row for a goal; linear or log axis. Hand-written SVG: a plotting crate would
//! need a font stack to lay out text; an SVG viewer lays out its own.

use crate::fmt::group_thousands;

pub struct BarChart {
    pub title: String,
    pub subtitle: String,
    /// The legend: a name and a colour per bar of a row.
    pub series: Vec<(&'static str, &'static str)>,
    pub rows: Vec<Row>,
    /// Powers of ten; else linear from 0.
    pub log: bool,
    /// A linear axis ends here at the most; longer bars are cut (their values printed).
    pub cap: Option<f64>,
    /// Dashed vertical lines across every row: (value, label).
    pub rules: Vec<(f64, String)>,
}

pub struct Row {
    pub label: String,
    /// One per series.
    pub bars: Vec<Bar>,
    /// A red tick across the row (Strata's goal).
    pub goal: Option<f64>,
}

pub struct Bar {
    /// None: no bar, only the text ("strata error").
    pub value: Option<f64>,
    /// A min–max whisker.
    pub range: Option<(f64, f64)>,
    /// Printed after the bar.
    pub text: String,
    /// Shown on hover.
    pub tip: String,
}

const LABEL_W: f64 = 330.0;
const PLOT_W: f64 = 440.0;
const BAR_H: f64 = 13.0;
const GAP: f64 = 12.0;
const TOP: f64 = 76.0;

impl BarChart {
    pub fn svg(&self) -> String {
        let group_h = BAR_H * self.series.len().max(1) as f64 + GAP;
        let bottom = TOP + group_h * self.rows.len() as f64;
        let (w, h) = (LABEL_W + PLOT_W + 130.0, bottom + 34.0);
        let (ticks, x) = self.axis();
        let mut s = vec![
            format!(
                r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w:.0}" height="{h:.0}" viewBox="0 0 {w:.0} {h:.0}" font-family="sans-serif" font-size="12">"#
            ),
            r#"<rect width="100%" height="100%" fill="white"/>"#.into(),
            format!(
                r##"<text x="10" y="20" font-size="15" font-weight="bold">{}</text><text x="10" y="38" fill="#555">{}</text>"##,
                esc(&self.title),
                esc(&self.subtitle)
            ),
        ];
        let mut lx = 10.0;
        for (name, color) in &self.series {
            s.push(format!(
                r#"<rect x="{lx:.1}" y="49" width="10" height="10" fill="{color}"/><text x="{:.1}" y="58">{name}</text>"#,
                lx + 14.0
            ));
            lx += 30.0 + 7.0 * name.len() as f64;
        }
        for t in ticks {
            s.push(format!(
                r##"<line x1="{0:.1}" y1="{TOP}" x2="{0:.1}" y2="{bottom:.1}" stroke="#e2e2e2"/><text x="{0:.1}" y="{1:.1}" text-anchor="middle" fill="#555">{2}</text>"##,
                x(t),
                bottom + 15.0,
                fmt_tick(t)
            ));
        }
        for (i, row) in self.rows.iter().enumerate() {
            let y0 = TOP + group_h * i as f64;
            s.push(format!(
                r#"<text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"#,
                LABEL_W - 8.0,
                y0 + (group_h - GAP) / 2.0 + 4.0,
                esc(&row.label)
            ));
            for (j, (bar, (_, color))) in row.bars.iter().zip(&self.series).enumerate() {
                let y = y0 + BAR_H * j as f64;
                let mut end = LABEL_W;
                if let Some(v) = bar.value {
                    end = x(v);
                    s.push(format!(
                        r#"<rect x="{LABEL_W}" y="{:.1}" width="{:.1}" height="{:.1}" fill="{color}"><title>{}</title></rect>"#,
                        y + 1.0,
                        (end - LABEL_W).max(0.5),
                        BAR_H - 2.0,
                        esc(&bar.tip)
                    ));
                }
                if let Some((lo, hi)) = bar.range {
                    let (a, b, ym) = (x(lo), x(hi), y + BAR_H / 2.0);
                    s.push(format!(
                        r##"<path d="M{a:.1} {ym:.1}H{b:.1}M{a:.1} {0:.1}v6M{b:.1} {0:.1}v6" stroke="#222" fill="none"/>"##,
                        ym - 3.0
                    ));
                    end = end.max(b);
                }
                let fill = if bar.value.is_some() {
                    "#333"
                } else {
                    "#a0aec0"
                };
                s.push(format!(
                    r#"<text x="{:.1}" y="{:.1}" fill="{fill}" font-size="10">{}</text>"#,
                    end + 4.0,
                    y + BAR_H - 3.0,
                    esc(&bar.text)
                ));
            }
            if let Some(g) = row.goal {
                s.push(format!(
                    r##"<line x1="{0:.1}" y1="{1:.1}" x2="{0:.1}" y2="{2:.1}" stroke="#e53e3e" stroke-width="2"/>"##,
                    x(g),
                    y0 - 2.0,
                    y0 + group_h - GAP + 2.0
                ));
            }
        }
        for (v, label) in &self.rules {
            s.push(format!(
                r##"<line x1="{0:.1}" y1="{1}" x2="{0:.1}" y2="{bottom:.1}" stroke="#333" stroke-dasharray="4 3"/><text x="{0:.1}" y="{2}" text-anchor="middle" fill="#333" font-size="10">{3}</text>"##,
                x(*v),
                TOP - 6.0,
                TOP - 9.0,
                esc(label)
            ));
        }
        s.push(format!(
            r##"<line x1="{LABEL_W}" y1="{TOP}" x2="{LABEL_W}" y2="{bottom:.1}" stroke="#333"/>"##
        ));
        s.push("</svg>\n".into());
        s.join("\n")
    }

    /// The ticks, and where a value lands: the axis spans every bar, whisker, goal and rule.
    fn axis(&self) -> (Vec<f64>, impl Fn(f64) -> f64) {
        let rows = self.rows.iter();
        let bars = rows.clone().flat_map(|r| &r.bars);
        let vals: Vec<f64> = (bars.flat_map(|b| {
            b.value
                .into_iter()
                .chain(b.range.into_iter().flat_map(|(a, b)| [a, b]))
        }))
        .chain(rows.filter_map(|r| r.goal))
        .chain(self.rules.iter().map(|r| r.0))
        .filter(|v| v.is_finite())
        .collect();
        let hi = vals.iter().copied().fold(0.0, f64::max);
        let (lo, hi, ticks) = if self.log {
            let lo = vals
                .iter()
                .copied()
                .filter(|v| *v > 0.0)
                .fold(f64::INFINITY, f64::min);
            let lo = if lo.is_finite() {
                lo.log10().floor()
            } else {
                0.0
            };
            let hi = hi.log10().ceil().max(lo + 1.0);
            (
                lo,
                hi,
                (lo as i32..=hi as i32).map(|e| 10f64.powi(e)).collect(),
            )
        } else {
            let (max, step) = nice_axis(self.cap.map_or(hi, |c| hi.min(c)));
            let n = (max / step).round() as usize;
            (0.0, max, (0..=n).map(|i| i as f64 * step).collect())
        };
        let log = self.log;
        let x = move |v: f64| {
            let f = if log {
                (v.max(f64::MIN_POSITIVE).log10() - lo) / (hi - lo)
            } else {
                v / hi
            };
            LABEL_W + PLOT_W * f.clamp(0.0, 1.0)
        };
        (ticks, x)
    }
}

/// A "nice" upper bound for a linear axis from 0, and its tick step.
fn nice_axis(max: f64) -> (f64, f64) {
    let max = if max > 0.0 { max } else { 1.0 };
    let raw = max / 5.0;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 2.5, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|s| *s >= raw * (1.0 - 1e-9))
        .unwrap_or(10.0 * mag);
    ((max / step - 1e-9).ceil() * step, step)
}

fn fmt_tick(v: f64) -> String {
    if v >= 1000.0 {
        group_thousands(v)
    } else if v >= 1.0 {
        format!("{}", (v * 100.0).round() / 100.0)
    } else {
        let s = format!("{v:.4}");
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    }
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chart(log: bool, cap: Option<f64>, values: &[f64]) -> BarChart {
        let bar = |v: f64| Bar {
            value: Some(v),
            range: Some((v / 2.0, v * 1.5)),
            text: format!("{v}"),
            tip: format!("a & {v}"),
        };
        BarChart {
            title: "a < b".into(),
            subtitle: String::new(),
            series: vec![("ext4", "#718096"), ("strata", "#2b6cb0")],
            rows: vec![Row {
                label: "x".into(),
                bars: values.iter().map(|&v| bar(v)).collect(),
                goal: Some(1.5),
            }],
            log,
            cap,
            rules: vec![(1.0, "one".into())],
        }
    }

    #[test]
    fn axes() {
        assert_eq!(nice_axis(3.0), (3.0, 1.0));
        assert_eq!(nice_axis(58_900.0), (60_000.0, 20_000.0));
        assert_eq!(nice_axis(0.0), (1.0, 0.2));
        let (ticks, x) = chart(false, Some(3.0), &[0.5, 7.0]).axis();
        assert_eq!(ticks, [0.0, 1.0, 2.0, 3.0]);
        assert_eq!(x(7.0), LABEL_W + PLOT_W, "cut at the cap");
        let (ticks, x) = chart(true, None, &[0.25, 40.0]).axis();
        assert_eq!(ticks, [0.1, 1.0, 10.0, 100.0]);
        assert_eq!((x(0.1), x(0.0)), (LABEL_W, LABEL_W));
        assert_eq!(x(100.0), LABEL_W + PLOT_W);
    }

    #[test]
    fn escapes_and_draws_every_part() {
        let mut c = chart(false, None, &[2.0]);
        c.rows[0].bars.push(Bar {
            value: None,
            range: None,
            text: "strata error".into(),
            tip: String::new(),
        });
        let s = c.svg();
        assert!(s.contains("a &lt; b") && s.contains("<title>a &amp; 2</title>"));
        assert!(s.contains(">strata error<") && s.contains("#e53e3e"));
        assert!(s.contains("stroke-dasharray") && s.contains(">one<"));
        assert!(s.starts_with("<svg") && s.ends_with("</svg>\n"));
    }
}
