//! `micro snapshot`: save, verify and restore snapshots.

use super::server::{write_private, TOKEN_FILE};
use super::*;

#[derive(Subcommand)]
pub(super) enum SnapshotCmd {
    /// Download a consistent snapshot of the whole cluster state to FILE
    Save { file: PathBuf },
    /// Verify every checksum of FILE and print its header
    Status { file: PathBuf },
    /// Create the data dir of a member of a NEW cluster from FILE
    Restore {
        file: PathBuf,
        /// The new member's data dir (must be empty)
        #[arg(long)]
        data_dir: PathBuf,
        /// The new member's id
        #[arg(long)]
        node_id: u64,
        /// Members of the new cluster: "1=127.0.0.1:8085,2=...,3=..." (same on every member)
        #[arg(long)]
        initial_cluster: String,
        /// Cluster token to store for the new member (else pass it when starting it)
        #[arg(long, env = "MICRO_CLUSTER_TOKEN", hide_env_values = true)]
        cluster_token: Option<String>,
    },
}

fn header_json(h: &micro_cluster::snapshot::Header, bytes: u64) -> Value {
    json!({
        "format_version": micro_cluster::snapshot::VERSION,
        "cluster_id": h.cluster_id,
        "snapshot_id": h.snapshot_id,
        "revision": h.revision,
        "last_log_index": h.last_log_id.map(|l| l.index),
        "last_log_term": h.last_log_id.map(|l| l.leader_id.term),
        "records": h.record_count,
        "voters": h.membership.membership().voter_ids().collect::<Vec<_>>(),
        "bytes": bytes,
    })
}

fn print_header(h: &micro_cluster::snapshot::Header, bytes: u64, out: Output) {
    let v = header_json(h, bytes);
    match out {
        Output::Json => print_json(&v),
        Output::Table => {
            let mut t = table(&["field", "value"]);
            if let Value::Object(m) = &v {
                for (k, val) in m {
                    let shown = match val {
                        Value::String(s) => s.clone(),
                        other => other.to_string(),
                    };
                    t.add_row(vec![k.clone(), shown]);
                }
            }
            println!("{t}");
        }
    }
}

pub(super) async fn snapshot(
    server: &Target,
    out: Output,
    cmd: SnapshotCmd,
) -> anyhow::Result<ExitCode> {
    match cmd {
        SnapshotCmd::Save { file } => {
            let client = server.connect().await?;
            let bar = indicatif::ProgressBar::new(0);
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "{spinner} saving snapshot {bytes}/{total_bytes} {bar:30} {eta}",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            let bytes = client
                .snapshot(|got, total| {
                    bar.set_length(total);
                    bar.set_position(got);
                })
                .await?;
            bar.finish_and_clear();
            let header = micro_cluster::snapshot::verify(&bytes)
                .map_err(|e| anyhow::anyhow!("the downloaded snapshot does not verify: {e}"))?;
            let tmp = file.with_extension("part");
            std::fs::write(&tmp, &bytes)?;
            std::fs::File::open(&tmp)?.sync_all()?;
            std::fs::rename(&tmp, &file)?;
            if out == Output::Table {
                println!("saved {} ({} bytes)", file.display(), bytes.len());
            }
            print_header(&header, bytes.len() as u64, out);
        }
        SnapshotCmd::Status { file } => {
            let bytes = std::fs::read(&file)
                .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", file.display()))?;
            let header = micro_cluster::snapshot::verify(&bytes)
                .map_err(|e| anyhow::anyhow!("{} is not a valid snapshot: {e}", file.display()))?;
            print_header(&header, bytes.len() as u64, out);
        }
        SnapshotCmd::Restore {
            file,
            data_dir,
            node_id,
            initial_cluster,
            cluster_token,
        } => {
            let members = NodeConfig::parse_initial_cluster(&initial_cluster)
                .map_err(|e| anyhow::anyhow!("--initial-cluster: {e}"))?;
            if !members.contains_key(&node_id) {
                anyhow::bail!("--initial-cluster does not list --node-id {node_id}");
            }
            let bytes = std::fs::read(&file)
                .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", file.display()))?;
            let r = micro_cluster::restore::restore(&bytes, &data_dir, &members)
                .map_err(|e| anyhow::anyhow!("restore of {} failed: {e:#}", file.display()))?;
            if let Some(t) = cluster_token {
                write_private(&data_dir.join(TOKEN_FILE), &t)?;
            }
            match out {
                Output::Json => print_json(&json!({
                    "data_dir": data_dir,
                    "node_id": node_id,
                    "cluster_id": r.cluster_id,
                    "from_cluster_id": r.from.cluster_id,
                    "records": r.records,
                    "revision": r.revision,
                })),
                Output::Table => println!(
                    "restored {} records at revision {} into {} as node {node_id} of new cluster {}; start it with `micro server --node-id {node_id} --data-dir {}` and the same ports",
                    r.records,
                    r.revision,
                    data_dir.display(),
                    r.cluster_id,
                    data_dir.display()
                ),
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
