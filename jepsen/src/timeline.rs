//! An HTML timeline of a history: one row per client process, each operation a bar from its
//! invocation to its completion (green ok, red fail, amber info), faults as shaded bands, the
//! operations an anomaly is blamed on outlined in black. Hover a bar for the details.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fmt::Write;

use crate::checker::Verdict;
use crate::history::{pairs, Op, Type, F};

const PX_PER_S: f64 = 40.0;
const ROW: f64 = 16.0;
const GUTTER: f64 = 70.0;
const TOP: f64 = 24.0;

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn x(t: u64) -> f64 {
    GUTTER + t as f64 / 1e9 * PX_PER_S
}

fn band_color(fault: &str) -> &'static str {
    match fault {
        "kill" => "#d33",
        "pause" => "#36c",
        "membership" => "#2a9",
        "corrupt" => "#a60",
        "pause-holder" => "#0aa",
        _ => "#939",
    }
}

pub fn render(history: &[Op], verdict: &Verdict, flagged: &HashSet<usize>) -> String {
    let ps = pairs(history);
    let end = history.iter().map(|o| o.time).max().unwrap_or(0);
    let procs: BTreeSet<i64> = ps
        .iter()
        .filter(|p| p.f != F::Nemesis)
        .map(|p| p.process)
        .collect();
    let row: BTreeMap<i64, usize> = procs.iter().enumerate().map(|(i, p)| (*p, i)).collect();
    let width = x(end) + 20.0;
    let height = TOP + ROW * procs.len() as f64 + 20.0;
    let mut svg = String::new();
    let _ = write!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0}" height="{height:.0}" font-family="monospace" font-size="11">"#
    );
    // fault bands (per nemesis process: pause-the-holder runs beside the node faults)
    let mut open: BTreeMap<i64, (u64, String, String)> = BTreeMap::new();
    let mut bands = Vec::new();
    for p in ps
        .iter()
        .filter(|p| p.f == F::Nemesis && p.kind == Type::Ok)
    {
        let fault = p.value["fault"].as_str().unwrap_or("?").to_string();
        if fault == "heal" {
            if let Some((t0, f, d)) = open.remove(&p.process) {
                bands.push((t0, p.complete, f, d));
            }
        } else if p.value["effect"].as_bool() == Some(true) {
            open.insert(p.process, (p.complete, fault, p.value.to_string()));
        }
    }
    for (t0, f, d) in open.into_values() {
        bands.push((t0, end, f, d));
    }
    for (t0, t1, f, d) in &bands {
        let kind = if f.starts_with("partition") {
            "partition"
        } else {
            f.as_str()
        };
        let _ = write!(
            svg,
            r#"<rect x="{:.1}" y="0" width="{:.1}" height="{height:.0}" fill="{}" fill-opacity="0.13"><title>{}</title></rect><text x="{:.1}" y="10" fill="{}">{}</text>"#,
            x(*t0),
            (x(*t1) - x(*t0)).max(1.0),
            band_color(kind),
            esc(d),
            x(*t0) + 2.0,
            band_color(kind),
            esc(f)
        );
    }
    // time axis
    let secs = end / 1_000_000_000 + 1;
    for s in 0..=secs {
        let xs = x(s * 1_000_000_000);
        let _ = write!(
            svg,
            r##"<line x1="{xs:.1}" y1="{TOP}" x2="{xs:.1}" y2="{:.0}" stroke="#ddd"/>"##,
            height - 16.0
        );
        if s % 5 == 0 {
            let _ = write!(
                svg,
                r#"<text x="{xs:.1}" y="{:.0}">{s}s</text>"#,
                height - 4.0
            );
        }
    }
    for (p, r) in &row {
        let _ = write!(
            svg,
            r#"<text x="4" y="{:.0}">process {p}</text>"#,
            TOP + ROW * *r as f64 + 12.0
        );
    }
    // operations
    for p in ps.iter().filter(|p| p.f != F::Nemesis) {
        let r = row[&p.process];
        let t1 = p.complete.min(end);
        let color = match p.kind {
            Type::Ok if matches!(p.f, F::Read | F::Consume | F::Replay | F::Feed) => "#7ab8f5",
            Type::Ok => "#5cb85c",
            Type::Fail => "#e06060",
            _ => "#f0ad4e",
        };
        let stroke = if flagged.contains(&p.index) {
            r#" stroke="black" stroke-width="2""#
        } else {
            ""
        };
        let dur = if p.complete == u64::MAX {
            "never completed".to_string()
        } else {
            format!("{:.1} ms", (p.complete - p.invoke) as f64 / 1e6)
        };
        let kind = match p.kind {
            Type::Ok => "ok",
            Type::Fail => "fail",
            Type::Info => "info",
            Type::Invoke => "invoke",
        };
        let title = format!(
            "#{} p{} {} {} {} -> {kind} ({dur}) node {} at {:.3}s{}",
            p.index,
            p.process,
            p.f.name(),
            p.key.as_deref().unwrap_or(""),
            truncate(&p.value.to_string(), 200),
            p.node.map_or("?".into(), |n| n.to_string()),
            p.invoke as f64 / 1e9,
            if p.final_read { " (final read)" } else { "" }
        );
        let _ = write!(
            svg,
            r#"<rect x="{:.2}" y="{:.0}" width="{:.2}" height="{:.0}" fill="{color}"{stroke}><title>{}</title></rect>"#,
            x(p.invoke),
            TOP + ROW * r as f64 + 2.0,
            (x(t1) - x(p.invoke)).max(1.0),
            ROW - 4.0,
            esc(&title)
        );
    }
    svg.push_str("</svg>");
    let summary = esc(&verdict.summary());
    format!(
        r#"<!doctype html>
<html><head><meta charset="utf-8"><title>micro-jepsen timeline</title>
<style>body{{font-family:sans-serif;margin:1em}} pre{{background:#f6f6f6;padding:.5em}} .k span{{display:inline-block;width:1em;height:.8em;margin:0 .3em 0 1em}}</style>
</head><body>
<h2>micro-jepsen timeline</h2>
<div class="k">ops:<span style="background:#7ab8f5"></span>ok read/consume/replay/feed<span style="background:#5cb85c"></span>ok write/cas/add/publish/acquire/fenced-write/release<span style="background:#e06060"></span>fail<span style="background:#f0ad4e"></span>info (indeterminate)
 &nbsp; faults:<span style="background:#d33;opacity:.3"></span>kill<span style="background:#36c;opacity:.3"></span>pause<span style="background:#939;opacity:.3"></span>partition<span style="background:#2a9;opacity:.3"></span>membership<span style="background:#a60;opacity:.3"></span>corrupt<span style="background:#0aa;opacity:.3"></span>pause-holder
 &nbsp; black outline: op an anomaly is blamed on</div>
<pre>{summary}</pre>
<div style="overflow-x:auto;border:1px solid #ccc">{svg}</div>
</body></html>
"#
    )
}

fn truncate(s: &str, n: usize) -> String {
    if s.len() <= n {
        s.to_string()
    } else {
        let mut cut = n;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        format!("{}…", &s[..cut])
    }
}
