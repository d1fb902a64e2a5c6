//! Placement, decided by the leader and committed (`runtime::Cmd::Place`), never by each node
//! on its own: an unplaced instance goes to the live member with the fewest instances (lowest
//! id on a tie); an instance on a member that has been unreachable for longer than the grace
//! period, or that left the cluster, is placed again. A member is live while it answers the
//! leader's status probe (twice a second); a new leader counts every member as seen when it took over, so an
//! election alone never moves an instance.

use openraft::async_runtime::WatchReceiver;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use micro_cluster::Node;
use micro_state::views::runtime::{self as view, Runtime};
use tokio::time::Instant;

/// How often the leader looks at the members and the services.
const EVERY: Duration = Duration::from_millis(500);

pub async fn run(node: Node, grace: Duration) {
    let mut stopping = node.stopping();
    // Applied batches, only while leading: a follower's placer wakes only on its tick, not
    // on every entry.
    let mut feed: Option<micro_cluster::feed::Receiver> = None;
    // Member → when the leader last heard from it; cleared when leadership is lost.
    let mut seen: BTreeMap<u64, Instant> = BTreeMap::new();
    loop {
        if *stopping.borrow() {
            return;
        }
        let leading = node.raft().metrics().borrow_watched().current_leader == Some(node.id());
        if !leading {
            seen.clear();
            feed = None;
        } else {
            feed.get_or_insert_with(|| node.feed());
            place(&node, grace, &mut seen).await;
        }
        let deadline = Instant::now() + EVERY;
        loop {
            let next = async {
                match feed.as_mut() {
                    Some(f) => f.recv().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => break,
                _ = stopping.changed() => break,
                b = next => match b {
                    // A service created: place it now, not at the next tick.
                    Ok(b) if b.changes.iter().any(|c| {
                        c.key.first() == Some(&micro_state::keys::RUNTIME) && c.prev_revision == 0
                    }) => break,
                    Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                },
            }
        }
    }
}

async fn place(node: &Node, grace: Duration, seen: &mut BTreeMap<u64, Instant>) {
    let services = match view::list(node.view(), None) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!("runtime placement: cannot read the runtime view: {e}");
            return;
        }
    };
    // Nothing to place or move: no probe of the members. Their clocks start again with the
    // first service, as after an election.
    if services.is_empty() {
        seen.clear();
        return;
    }
    let status = node.status().await;
    let now = Instant::now();
    let members: BTreeSet<u64> = status.members.iter().map(|m| m.id).collect();
    seen.retain(|id, _| members.contains(id));
    for m in &status.members {
        let entry = seen.entry(m.id).or_insert(now);
        if m.state != "unreachable" || m.id == node.id() {
            *entry = now;
        }
    }
    let live: BTreeSet<u64> = seen
        .iter()
        .filter(|(_, t)| now.duration_since(**t) <= grace)
        .map(|(id, _)| *id)
        .collect();
    for (svc, nodes) in decide(&services, &members, &live) {
        let cmd = view::Cmd::Place {
            namespace: svc.spec.namespace.clone(),
            name: svc.spec.name.clone(),
            generation: svc.generation,
            nodes: nodes.clone(),
        };
        match node.run::<Runtime>(cmd).await {
            Ok((_, view::Out::Done)) => {
                tracing::info!(service = %svc.spec.name, ?nodes, "runtime: placed instances")
            }
            // Decided on a state that moved on: the next round decides again.
            Ok(_) => continue,
            Err(e) => {
                tracing::warn!(service = %svc.spec.name, "runtime: cannot place instances: {e}");
                continue;
            }
        }
        // Instances taken off a dead member died with it, unable to deregister.
        for (index, (old, new)) in svc.instances.iter().map(|i| i.node).zip(&nodes).enumerate() {
            if old != 0 && old != *new {
                let id = super::instance_id(&svc.spec.name, old, index as u32);
                super::deregister(node, &svc.spec.namespace, &id).await;
            }
        }
    }
}

/// The placements that change: for each such service, the node of every instance.
pub fn decide<'a>(
    services: &'a [view::Service],
    members: &BTreeSet<u64>,
    live: &BTreeSet<u64>,
) -> Vec<(&'a view::Service, Vec<u64>)> {
    // Load of each live member: instances placed on it that stay there.
    let stays = |n: u64| n != 0 && members.contains(&n) && live.contains(&n);
    let mut load: BTreeMap<u64, usize> = live.intersection(members).map(|id| (*id, 0)).collect();
    for svc in services {
        for i in &svc.instances {
            if stays(i.node) {
                *load.entry(i.node).or_default() += 1;
            }
        }
    }
    let mut out = Vec::new();
    for svc in services {
        let mut nodes: Vec<u64> = svc.instances.iter().map(|i| i.node).collect();
        let mut changed = false;
        for n in nodes.iter_mut() {
            if svc.deleting {
                // A dead member's instance of a deleting service is gone with it.
                if *n != 0 && !stays(*n) {
                    *n = 0;
                    changed = true;
                }
                continue;
            }
            if stays(*n) {
                continue;
            }
            let Some((&best, _)) = load.iter().min_by_key(|(id, l)| (**l, **id)) else {
                break;
            };
            *n = best;
            *load.entry(best).or_default() += 1;
            changed = true;
        }
        if changed {
            out.push((svc, nodes));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use micro_state::views::runtime::{Instance, Service, Spec};

    fn svc(name: &str, nodes: &[u64]) -> Service {
        Service {
            spec: Spec {
                name: name.into(),
                instances: nodes.len() as u32,
                ..Default::default()
            },
            generation: 1,
            instances: nodes
                .iter()
                .map(|n| Instance {
                    node: *n,
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }
    }

    fn set(ids: &[u64]) -> BTreeSet<u64> {
        ids.iter().copied().collect()
    }

    #[test]
    fn spreads_over_the_least_loaded_live_members() {
        let services = vec![svc("a", &[1]), svc("b", &[0, 0, 0, 0])];
        let d = decide(&services, &set(&[1, 2, 3]), &set(&[1, 2, 3]));
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].1, vec![2, 3, 1, 2]);
    }

    #[test]
    fn moves_instances_off_dead_or_removed_members_only() {
        let services = vec![svc("a", &[1, 2, 3]), svc("b", &[3])];
        // 3 is dead: both of its instances move, to the least loaded survivors.
        let d = decide(&services, &set(&[1, 2, 3]), &set(&[1, 2]));
        assert_eq!(
            d.iter().map(|(_, n)| n.clone()).collect::<Vec<_>>(),
            vec![vec![1, 2, 1], vec![2]]
        );
        // 2 left the cluster (still answering does not matter).
        let d = decide(&services, &set(&[1, 3]), &set(&[1, 2, 3]));
        assert_eq!(d[0].1, vec![1, 1, 3], "to 1, the least loaded member");
        // Everyone live: nothing moves.
        assert!(decide(&services, &set(&[1, 2, 3]), &set(&[1, 2, 3])).is_empty());
    }

    #[test]
    fn a_deleting_service_is_never_placed_and_loses_dead_members() {
        let mut s = svc("a", &[0, 3, 1]);
        s.deleting = true;
        let services = vec![s];
        let d = decide(&services, &set(&[1, 2, 3]), &set(&[1, 2]));
        assert_eq!(d[0].1, vec![0, 0, 1]);
    }

    #[test]
    fn without_live_members_nothing_is_placed() {
        let services = vec![svc("a", &[0])];
        assert!(decide(&services, &set(&[1]), &set(&[])).is_empty());
    }
}
