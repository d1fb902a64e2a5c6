//! `micro-bench timeline DIR`: one write's critical path across the three nodes, from the
//! wall-clock stamps nodes record when started with `MICRO_TIMELINE_DIR=DIR`
//! (`micro_cluster::trace::timeline`). A node writes `DIR/n<id>.tsv` lines `<unix ns>\t<step>`;
//! the nodes of one machine share its clock, so their stamps line up.
//!
//! Meant for one client writing through a follower (`compare --target micro --workload put
//! --clients 1`): every write the client's node took alone — from `write.start` to its
//! `write.done` with no other write starting in between — is one cycle; each step any node
//! stamped inside a cycle is placed at its offset from the cycle's start, and the table gives
//! the median offset of every step seen in at least half the cycles, in order.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};

#[derive(clap::Args, Debug)]
pub struct TimelineArgs {
    /// The directory the nodes wrote their stamps to (their MICRO_TIMELINE_DIR)
    pub dir: PathBuf,
}

/// One stamp: which node, when (unix ns), which step.
#[derive(Debug, Clone)]
pub struct Stamp {
    pub node: String,
    pub t: u128,
    pub step: String,
}

/// The path of a write, step by step.
#[derive(Debug)]
pub struct Timeline {
    /// The node that took the writes, and the leader (the same node when the client was on the
    /// leader).
    pub client: String,
    pub leader: String,
    /// Writes measured, and the median of their whole time on the client's node, µs.
    pub cycles: usize,
    pub median_total_us: f64,
    /// (step, node role, median µs after the write started), by time.
    pub rows: Vec<(String, &'static str, f64)>,
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    crate::fanout::percentile(v, 0.5)
}

/// The node with the most stamps of `step`, if any has one.
fn most(counts: &HashMap<(&str, &str), usize>, step: &str) -> Option<String> {
    counts
        .iter()
        .filter(|((_, s), _)| *s == step)
        .max_by_key(|(_, n)| **n)
        .map(|((node, _), _)| node.to_string())
}

pub fn analyse(mut stamps: Vec<Stamp>) -> anyhow::Result<Timeline> {
    stamps.sort_by_key(|s| s.t);
    let mut counts: HashMap<(&str, &str), usize> = HashMap::new();
    for s in &stamps {
        *counts.entry((&s.node, &s.step)).or_default() += 1;
    }
    let Some(leader) = most(&counts, "propose.start") else {
        bail!("no node stamped a proposal: were the nodes started with MICRO_TIMELINE_DIR?");
    };
    let client = most(&counts, "forward.sent")
        .or_else(|| most(&counts, "write.start"))
        .context("no node stamped a write")?;
    let role = |node: &str| {
        if node == leader {
            "leader"
        } else if node == client {
            "client's node"
        } else {
            "other follower"
        }
    };
    let mut offsets: HashMap<(String, &'static str), Vec<f64>> = HashMap::new();
    let mut totals = Vec::new();
    let mine = |s: &Stamp, step: &str| s.node == client && s.step == step;
    for (i, start) in stamps.iter().enumerate() {
        if !mine(start, "write.start") {
            continue;
        }
        let rest = &stamps[i + 1..];
        let Some(end) = rest
            .iter()
            .position(|s| mine(s, "write.done") || mine(s, "write.start"))
            .filter(|&j| mine(&rest[j], "write.done"))
        else {
            continue; // another write overlapped this one
        };
        let mut seen: HashMap<(&str, &str), usize> = HashMap::new();
        for s in &rest[..end] {
            let n = seen.entry((&s.node, &s.step)).or_default();
            *n += 1;
            let label = match *n {
                1 => s.step.clone(),
                n => format!("{} #{n}", s.step),
            };
            offsets
                .entry((label, role(&s.node)))
                .or_default()
                .push((s.t - start.t) as f64 / 1000.0);
        }
        totals.push((rest[end].t - start.t) as f64 / 1000.0);
    }
    if totals.is_empty() {
        bail!("no write of the client's node ({client}) ran alone: measure with one client");
    }
    let cycles = totals.len();
    let mut rows: Vec<(String, &'static str, f64)> = offsets
        .into_iter()
        .filter(|(_, v)| v.len() * 2 >= cycles)
        .map(|((label, role), mut v)| (label, role, median(&mut v)))
        .collect();
    rows.sort_by(|a, b| a.2.total_cmp(&b.2));
    Ok(Timeline {
        client,
        leader,
        cycles,
        median_total_us: median(&mut totals),
        rows,
    })
}

fn read(dir: &Path) -> anyhow::Result<Vec<Stamp>> {
    let mut stamps = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        if path.extension().is_none_or(|e| e != "tsv") {
            continue;
        }
        let node = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let text = std::fs::read_to_string(&path)?;
        for (n, line) in text.lines().enumerate() {
            let parsed = line
                .split_once('\t')
                .and_then(|(t, step)| Some((t.parse().ok()?, step)));
            let Some((t, step)) = parsed else {
                bail!("{}:{}: not `<unix ns>\\t<step>`", path.display(), n + 1);
            };
            stamps.push(Stamp {
                node: node.clone(),
                t,
                step: step.to_string(),
            });
        }
    }
    Ok(stamps)
}

pub fn run(args: &TimelineArgs) -> anyhow::Result<()> {
    let t = analyse(read(&args.dir)?)?;
    println!(
        "{} writes taken alone by {} (leader {}); median {:.0} µs from `write.start` to `write.done`\n",
        t.cycles, t.client, t.leader, t.median_total_us
    );
    println!("| step | node | µs after `write.start` (median) | since the row before |");
    println!("|---|---|---:|---:|");
    let mut before = 0.0;
    for (step, role, us) in &t.rows {
        println!("| {step} | {role} | {us:.0} | {:.0} |", us - before);
        before = *us;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(node: &str, t: u128, step: &str) -> Stamp {
        Stamp {
            node: node.into(),
            t: t * 1000,
            step: step.into(),
        }
    }

    /// A write through follower n2 to leader n1 at `base` µs, each step `slow` µs late.
    fn write(base: u128, slow: u128) -> Vec<Stamp> {
        vec![
            at("n2", base, "write.start"),
            at("n2", base + 5, "forward.sent"),
            at("n1", base + 50 + slow, "propose.start"),
            at("n1", base + 100 + slow, "append.start"),
            at("n3", base + 200 + slow, "append.start"),
            at("n1", base + 700 + slow, "propose.done"),
            at("n2", base + 800 + slow, "forward.answered"),
            at("n2", base + 810 + slow, "write.done"),
        ]
    }

    #[test]
    fn steps_line_up_across_nodes_at_their_median_offsets() {
        let mut stamps = Vec::new();
        for (i, slow) in [0, 10, 1000].into_iter().enumerate() {
            stamps.extend(write(i as u128 * 10_000, slow));
        }
        // Two writes that overlap on n2 are no cycle of one write; shuffled files are fine.
        stamps.push(at("n2", 50_000, "write.start"));
        stamps.extend(write(50_001, 0));
        stamps.reverse();
        let t = analyse(stamps).unwrap();
        assert_eq!((t.client.as_str(), t.leader.as_str()), ("n2", "n1"));
        assert_eq!(t.cycles, 4);
        assert_eq!(t.median_total_us, 820.0);
        let rows: Vec<(&str, &str, f64)> = t
            .rows
            .iter()
            .map(|(s, r, us)| (s.as_str(), *r, *us))
            .collect();
        assert_eq!(
            rows,
            [
                ("forward.sent", "client's node", 5.0),
                ("propose.start", "leader", 60.0),
                ("append.start", "leader", 110.0),
                ("append.start", "other follower", 210.0),
                ("propose.done", "leader", 710.0),
                ("forward.answered", "client's node", 810.0),
            ]
        );
    }

    #[test]
    fn stamps_without_a_lone_write_or_a_proposal_are_an_error() {
        let err = analyse(vec![at("n1", 1, "write.start")]).unwrap_err();
        assert!(err.to_string().contains("MICRO_TIMELINE_DIR"), "{err}");
        let unfinished = vec![
            at("n1", 1, "propose.start"),
            at("n2", 2, "write.start"),
            at("n2", 3, "write.start"),
        ];
        let err = analyse(unfinished).unwrap_err();
        assert!(err.to_string().contains("one client"), "{err}");
    }
}
