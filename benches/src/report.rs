//! Results: per-row measurements across runs, medians, ratios to the baseline
//! row, and their rendering as a text/Markdown table and a JSON document.
//!
//! Owns: the results schema written to the output directory. Must never: run
//! anything or compare a number against a threshold (no timed assertions).

use crate::fio::Metric;
use crate::switches::SwitchReport;
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Write as _;

/// Measurements of one table row.
#[derive(Debug, Clone, Serialize)]
pub struct RowReport {
    /// Stable id (`raw`, `qemu-nbd`, `drbdd-c`, ...).
    pub id: String,
    /// What was measured, for humans.
    pub name: String,
    /// Why the row has no numbers, when it has none.
    pub skipped: Option<String>,
    /// One map per completed run: metric id -> value.
    pub runs: Vec<BTreeMap<String, f64>>,
    /// Median over the runs.
    pub median: BTreeMap<String, f64>,
    /// Id of the row this row's ratios are taken against; `None`: the
    /// table's baseline (`raw`). VM rows use `vm-raw`, measured in the same boot.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub baseline: Option<String>,
    /// `median / baseline median` per metric.
    pub ratio_to_baseline: BTreeMap<String, f64>,
    /// Thread switches per I/O of the row's drbdd daemons; only drbdd rows have it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub thread_switches: Option<SwitchReport>,
}

impl RowReport {
    /// A row that could not run.
    pub fn skipped(id: &str, name: &str, reason: String) -> RowReport {
        RowReport {
            id: id.to_owned(),
            name: name.to_owned(),
            skipped: Some(reason),
            runs: Vec::new(),
            median: BTreeMap::new(),
            baseline: None,
            ratio_to_baseline: BTreeMap::new(),
            thread_switches: None,
        }
    }

    /// The same row with its ratios taken against row `baseline_id`.
    pub fn with_baseline(mut self, baseline_id: Option<String>) -> RowReport {
        self.baseline = baseline_id;
        self
    }

    /// The same row with the thread-switch results of its drbdd daemons.
    pub fn with_thread_switches(mut self, s: Option<SwitchReport>) -> RowReport {
        self.thread_switches = s;
        self
    }

    /// A row with per-run results; medians filled in, ratios left to [`fill_ratios`].
    pub fn measured(id: &str, name: &str, runs: Vec<BTreeMap<Metric, f64>>) -> RowReport {
        let runs: Vec<BTreeMap<String, f64>> = runs
            .into_iter()
            .map(|r| r.into_iter().map(|(m, v)| (m.id().to_owned(), v)).collect())
            .collect();
        let mut median = BTreeMap::new();
        for m in Metric::ALL {
            let vals: Vec<f64> = runs.iter().filter_map(|r| r.get(m.id()).copied()).collect();
            if let Some(v) = median_of(&vals) {
                median.insert(m.id().to_owned(), v);
            }
        }
        RowReport {
            id: id.to_owned(),
            name: name.to_owned(),
            skipped: None,
            runs,
            median,
            baseline: None,
            ratio_to_baseline: BTreeMap::new(),
            thread_switches: None,
        }
    }
}

/// The median of `vals` (mean of the middle two for an even count); None when empty.
pub fn median_of(vals: &[f64]) -> Option<f64> {
    let mut v: Vec<f64> = vals.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    Some(if v.len() % 2 == 1 {
        v[mid]
    } else {
        (v[mid - 1] + v[mid]) / 2.0
    })
}

/// Sets `ratio_to_baseline` of every row against its own baseline row
/// (`RowReport::baseline`) or, when it names none, the row `default_baseline_id`.
/// A row whose baseline is missing or skipped gets no ratios.
pub fn fill_ratios(rows: &mut [RowReport], default_baseline_id: &str) {
    let medians: BTreeMap<String, BTreeMap<String, f64>> = rows
        .iter()
        .map(|r| (r.id.clone(), r.median.clone()))
        .collect();
    for row in rows.iter_mut() {
        let base_id = row.baseline.as_deref().unwrap_or(default_baseline_id);
        let Some(base) = medians.get(base_id) else {
            row.ratio_to_baseline.clear();
            continue;
        };
        row.ratio_to_baseline = row
            .median
            .iter()
            .filter_map(|(k, v)| {
                let b = base.get(k).copied().filter(|b| *b > 0.0)?;
                Some((k.clone(), v / b))
            })
            .collect();
    }
}

/// One line of [`comparison`]: `ours / theirs` per metric, medians.
#[derive(Debug, Clone, Serialize)]
pub struct Comparison {
    pub ours: String,
    pub theirs: String,
    pub ratio: BTreeMap<String, f64>,
    /// Metrics where ours is at least as good as theirs.
    pub at_least_as_good: Vec<String>,
    /// Metrics where ours is worse.
    pub worse: Vec<String>,
}

/// Compares the medians of row `ours` with row `theirs` (both measured).
pub fn comparison(rows: &[RowReport], ours: &str, theirs: &str) -> Option<Comparison> {
    let find = |id: &str| rows.iter().find(|r| r.id == id && r.skipped.is_none());
    let (a, b) = (find(ours)?, find(theirs)?);
    let mut c = Comparison {
        ours: ours.to_owned(),
        theirs: theirs.to_owned(),
        ratio: BTreeMap::new(),
        at_least_as_good: Vec::new(),
        worse: Vec::new(),
    };
    for m in Metric::ALL {
        let (Some(x), Some(y)) = (a.median.get(m.id()), b.median.get(m.id())) else {
            continue;
        };
        if *y <= 0.0 {
            continue;
        }
        c.ratio.insert(m.id().to_owned(), x / y);
        let good = if m.lower_is_better() { x <= y } else { x >= y };
        if good {
            c.at_least_as_good.push(m.id().to_owned());
        } else {
            c.worse.push(m.id().to_owned());
        }
    }
    Some(c)
}

/// Renders comparisons as a Markdown table: one row per pair, cells
/// `ours/theirs` with a mark where ours is worse.
pub fn comparison_table(cmps: &[Comparison]) -> String {
    let mut s = table_header("ours / theirs");
    for c in cmps {
        let _ = write!(s, "| {} / {} |", c.ours, c.theirs);
        for m in Metric::ALL {
            match c.ratio.get(m.id()) {
                Some(r) if c.worse.iter().any(|w| w == m.id()) => {
                    let _ = write!(s, " {r:.2}x (worse) |");
                }
                Some(r) => {
                    let _ = write!(s, " {r:.2}x |");
                }
                None => s.push_str(" - |"),
            }
        }
        s.push('\n');
    }
    s
}

/// The header and separator lines of a table with one column per metric.
fn table_header(first_column: &str) -> String {
    let mut s = format!("| {first_column} |");
    for m in Metric::ALL {
        let _ = write!(s, " {} |", m.header());
    }
    s.push_str("\n|---|");
    for _ in Metric::ALL {
        s.push_str("---:|");
    }
    s.push('\n');
    s
}

/// Formats a value with sensible precision for its size.
fn fmt_value(v: f64) -> String {
    if v >= 1000.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

/// Renders the rows as a Markdown table (also readable as plain text). Each
/// cell holds the median and, in parentheses, the ratio to the baseline row.
pub fn markdown_table(rows: &[RowReport]) -> String {
    let mut s = table_header("row");
    for row in rows {
        let _ = write!(s, "| {} |", row.name);
        if let Some(reason) = &row.skipped {
            let _ = write!(
                s,
                " SKIPPED: {} |",
                reason.replace('|', "/").replace('\n', " ")
            );
            for _ in 1..Metric::ALL.len() {
                s.push_str(" |");
            }
        } else {
            for m in Metric::ALL {
                match (row.median.get(m.id()), row.ratio_to_baseline.get(m.id())) {
                    (Some(v), Some(r)) => {
                        let _ = write!(s, " {} ({r:.2}x) |", fmt_value(*v));
                    }
                    (Some(v), None) => {
                        let _ = write!(s, " {} |", fmt_value(*v));
                    }
                    _ => s.push_str(" - |"),
                }
            }
        }
        s.push('\n');
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(id: &str, baseline: Option<&str>, vals: &[(Metric, f64)]) -> RowReport {
        RowReport::measured(id, id, vec![vals.iter().copied().collect()])
            .with_baseline(baseline.map(String::from))
    }

    #[test]
    fn rows_naming_a_baseline_take_ratios_against_it() {
        let iops = Metric::RandWriteQd32Iops;
        let mut rows = vec![
            row("raw", None, &[(iops, 1000.0)]),
            row("vm-raw", Some("vm-raw"), &[(iops, 100.0)]),
            row("vm-drbdd-c", Some("vm-raw"), &[(iops, 50.0)]),
            row("vm-gone", Some("vm-missing"), &[(iops, 50.0)]),
        ];
        fill_ratios(&mut rows, "raw");
        assert_eq!(rows[1].ratio_to_baseline[iops.id()], 1.0);
        assert_eq!(rows[2].ratio_to_baseline[iops.id()], 0.5);
        assert!(rows[3].ratio_to_baseline.is_empty());
    }

    #[test]
    fn comparison_marks_worse_by_direction_of_the_metric() {
        let (lat, iops) = (Metric::RandWriteQd1P50Us, Metric::RandWriteQd32Iops);
        let rows = vec![
            row("ours", None, &[(lat, 200.0), (iops, 900.0)]),
            row("theirs", None, &[(lat, 100.0), (iops, 600.0)]),
        ];
        let c = comparison(&rows, "ours", "theirs").unwrap();
        assert_eq!(c.ratio[lat.id()], 2.0);
        assert_eq!(c.ratio[iops.id()], 1.5);
        assert_eq!(c.worse, vec![lat.id().to_owned()]);
        assert_eq!(c.at_least_as_good, vec![iops.id().to_owned()]);
        let table = comparison_table(&[c]);
        assert!(
            table.contains("| ours / theirs | 2.00x (worse) |") || table.contains("2.00x (worse)"),
            "{table}"
        );
        assert!(comparison(&rows, "ours", "absent").is_none());
    }

    fn run(vals: &[(Metric, f64)]) -> BTreeMap<Metric, f64> {
        vals.iter().copied().collect()
    }

    #[test]
    fn median_takes_middle_value_and_ignores_nan() {
        assert_eq!(median_of(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median_of(&[4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(median_of(&[f64::NAN, 5.0]), Some(5.0));
        assert_eq!(median_of(&[]), None);
    }

    #[test]
    fn ratios_are_relative_to_the_baseline_median() {
        let iops = Metric::RandReadQd32Iops;
        let mut rows = vec![
            RowReport::measured(
                "raw",
                "raw",
                vec![
                    run(&[(iops, 100.0)]),
                    run(&[(iops, 300.0)]),
                    run(&[(iops, 200.0)]),
                ],
            ),
            RowReport::measured("nbd", "nbd", vec![run(&[(iops, 50.0)])]),
            RowReport::skipped("drbdd", "drbdd", "not built".into()),
        ];
        fill_ratios(&mut rows, "raw");
        assert_eq!(rows[0].median[iops.id()], 200.0);
        assert_eq!(rows[0].ratio_to_baseline[iops.id()], 1.0);
        assert_eq!(rows[1].ratio_to_baseline[iops.id()], 0.25);
        assert!(rows[2].ratio_to_baseline.is_empty());
    }

    #[test]
    fn table_shows_values_ratios_and_skip_reasons() {
        let p50 = Metric::RandReadQd1P50Us;
        let mut rows = vec![
            RowReport::measured("raw", "raw file", vec![run(&[(p50, 40.0)])]),
            RowReport::measured("q", "qemu-nbd", vec![run(&[(p50, 60.0)])]),
            RowReport::skipped("d", "drbdd", "target/release/drbdd missing".into()),
        ];
        fill_ratios(&mut rows, "raw");
        let t = markdown_table(&rows);
        assert!(t.contains("| qemu-nbd | 60.0 (1.50x) |"), "{t}");
        assert!(t.contains("SKIPPED: target/release/drbdd missing"), "{t}");
        assert_eq!(t.lines().count(), 5);
    }
}
