//! `micro cluster`: membership and health.

use super::*;

#[derive(Subcommand)]
pub(super) enum ClusterCmd {
    /// Members, leader, term and progress of every node
    Status,
    /// Add a node as a learner (it then receives the log; start it with --join)
    Add {
        id: u64,
        /// The new node's peer address
        peer_address: String,
    },
    /// Make a caught-up learner a voter
    Promote { id: u64 },
    /// Remove a voter or learner
    Remove { id: u64 },
}

fn print_status(s: &micro::proto::cluster::StatusResponse, out: Output) {
    match out {
        Output::Json => print_json(&json!({
            "leader": if s.leader == 0 { Value::Null } else { json!(s.leader) },
            "term": s.term,
            "node_id": s.node_id,
            "cluster_id": s.cluster_id,
            "members": s.members.iter().map(|m| json!({
                "id": m.id,
                "role": m.role,
                "state": m.state,
                "peer_address": m.peer_address,
                "grpc_address": m.grpc_address,
                "http_address": m.http_address,
                "term": m.term,
                "last_log_index": m.last_log_index,
                "applied_index": m.applied_index,
                "lag": m.lag,
            })).collect::<Vec<_>>(),
        })),
        Output::Table => {
            let leader = if s.leader == 0 {
                "none".to_string()
            } else {
                s.leader.to_string()
            };
            println!(
                "cluster: {}   leader: {leader}   term: {}   answered by: node {}",
                if s.cluster_id.is_empty() {
                    "-"
                } else {
                    &s.cluster_id
                },
                s.term,
                s.node_id
            );
            let mut t = table(&[
                "id", "role", "state", "peer", "grpc", "term", "last log", "applied", "lag",
            ]);
            for m in &s.members {
                t.add_row(vec![
                    m.id.to_string(),
                    m.role.clone(),
                    m.state.clone(),
                    m.peer_address.clone(),
                    m.grpc_address.clone(),
                    m.term.to_string(),
                    m.last_log_index.to_string(),
                    m.applied_index.to_string(),
                    m.lag.to_string(),
                ]);
            }
            println!("{t}");
        }
    }
}

pub(super) async fn cluster(
    server: &Target,
    out: Output,
    cmd: ClusterCmd,
) -> anyhow::Result<ExitCode> {
    let client = server.connect().await?;
    let status = match cmd {
        ClusterCmd::Status => client.cluster_status().await?,
        ClusterCmd::Add { id, peer_address } => {
            let s = client.add_member(id, &peer_address).await?;
            if out == Output::Table {
                println!("node {id} added as a learner; start it with `micro server --node-id {id} --peer {peer_address} --join <a member's peer address>`, then `micro cluster promote {id}`");
            }
            s
        }
        ClusterCmd::Promote { id } => {
            let s = client.promote_member(id).await?;
            if out == Output::Table {
                println!("node {id} is now a voter");
            }
            s
        }
        ClusterCmd::Remove { id } => {
            let s = client.remove_member(id).await?;
            if out == Output::Table {
                println!("node {id} removed");
            }
            s
        }
    };
    print_status(&status, out);
    Ok(ExitCode::SUCCESS)
}
