use proptest::prelude::*;

use super::*;
use crate::storage::MemStore;
use crate::views::store::{query, Compare, Delete, Put, Query};
use crate::views::{events as ev, lease, meta, store};
use crate::Feed;

fn pos(index: u64) -> LogPos {
    LogPos { index, term: 1 }
}

#[allow(non_snake_case)]
mod c {
    use super::*;
    pub fn Put(p: Put) -> Command {
        Command::Store(store::Cmd::Put(p))
    }
    pub fn Delete(d: Delete) -> Command {
        Command::Store(store::Cmd::Delete(d))
    }
    pub fn Publish(p: ev::Publish) -> Command {
        Command::Events(ev::Cmd::Publish(p))
    }
    pub fn SetRetention(r: ev::Retention) -> Command {
        Command::Events(ev::Cmd::SetRetention(r))
    }
    pub fn Claim(c: ev::Claim) -> Command {
        Command::Events(ev::Cmd::Claim(c))
    }
    pub fn Ack(a: ev::Ack) -> Command {
        Command::Events(ev::Cmd::Ack(a))
    }
    pub fn Release(r: ev::Release) -> Command {
        Command::Events(ev::Cmd::Release(r))
    }
    pub fn SetClusterId(id: String) -> Command {
        Command::Meta(meta::Cmd::SetClusterId(id))
    }
}

fn oput(revision: u64) -> Outcome {
    Outcome::Store(store::Out::Put { revision })
}

fn put(key: &str, value: &str, ttl_ms: u64) -> Command {
    c::Put(Put {
        key: key.into(),
        value: value.as_bytes().to_vec(),
        ttl_ms,
        ..Default::default()
    })
}

fn run(store: &mut MemStore, index: u64, req: &Request) -> Vec<Outcome> {
    let mut ov = Overlay::new(&*store);
    let out = apply(&mut ov, pos(index), req).unwrap();
    let writes = ov.into_writes();
    store.commit(writes);
    out
}

fn get(store: &MemStore, key: &str, now: u64) -> Option<Vec<u8>> {
    let q = Query {
        key: key.into(),
        ..Default::default()
    };
    query(store, &q, now).unwrap().pop().map(|e| e.record.value)
}

#[test]
fn put_then_read_with_revisions() {
    let mut s = MemStore::default();
    let out = run(
        &mut s,
        5,
        &Request {
            time_ms: 1000,
            cmds: vec![put("a", "1", 0)],
        },
    );
    assert_eq!(out, vec![oput(5)]);
    run(
        &mut s,
        6,
        &Request {
            time_ms: 1001,
            cmds: vec![put("a", "2", 0)],
        },
    );
    let q = Query {
        key: "a".into(),
        ..Default::default()
    };
    let e = query(&s, &q, 0).unwrap().pop().unwrap();
    assert_eq!(e.record.value, b"2");
    assert_eq!(
        (
            e.record.create_revision,
            e.record.mod_revision,
            e.record.version
        ),
        (5, 6, 2)
    );
}

#[test]
fn expired_records_are_purged_by_the_entry_clock() {
    let mut s = MemStore::default();
    run(
        &mut s,
        1,
        &Request {
            time_ms: 10_000,
            cmds: vec![put("t", "v", 2000)],
        },
    );
    assert_eq!(get(&s, "t", 10_500), Some(b"v".to_vec()));
    // A reader past the expiry no longer sees it even before a purge.
    assert_eq!(get(&s, "t", 12_000), None);
    assert_eq!(next_expiry(&s).unwrap(), Some(12_000));
    // An entry stamped before the expiry does not purge it...
    run(
        &mut s,
        2,
        &Request {
            time_ms: 11_999,
            cmds: vec![],
        },
    );
    assert!(s.map.keys().any(|k| k[0] == keys::STORE));
    // ...one at the expiry does, and the clock never goes backwards.
    run(
        &mut s,
        3,
        &Request {
            time_ms: 12_000,
            cmds: vec![],
        },
    );
    assert!(!s
        .map
        .keys()
        .any(|k| k[0] == keys::STORE || k[0] == keys::EXPIRY));
    run(
        &mut s,
        4,
        &Request {
            time_ms: 5,
            cmds: vec![],
        },
    );
    assert_eq!(clock_ms(&s).unwrap(), 12_000);
    assert_eq!(store::databases(&s).unwrap(), Vec::<String>::new());
}

#[test]
fn rewrite_drops_the_old_expiry() {
    let mut s = MemStore::default();
    run(
        &mut s,
        1,
        &Request {
            time_ms: 0,
            cmds: vec![put("k", "1", 100)],
        },
    );
    run(
        &mut s,
        2,
        &Request {
            time_ms: 50,
            cmds: vec![put("k", "2", 0)],
        },
    );
    run(
        &mut s,
        3,
        &Request {
            time_ms: 1000,
            cmds: vec![],
        },
    );
    assert_eq!(get(&s, "k", 1000), Some(b"2".to_vec()));
    assert_eq!(next_expiry(&s).unwrap(), None);
}

#[test]
fn an_invalid_command_is_rejected_alone() {
    let mut s = MemStore::default();
    let out = run(
        &mut s,
        1,
        &Request {
            time_ms: 0,
            cmds: vec![put("ok", "1", 0), put("", "x", 0), put("also", "2", 0)],
        },
    );
    assert_eq!(out[0], oput(1));
    assert!(matches!(&out[1], Outcome::Rejected { field, .. } if field == "key"));
    // The rejected command takes no revision.
    assert_eq!(out[2], oput(2));
    assert_eq!(get(&s, "ok", 0), Some(b"1".to_vec()));
    assert_eq!(get(&s, "also", 0), Some(b"2".to_vec()));
}

#[test]
fn batched_commands_get_their_own_revisions() {
    let mut s = MemStore::default();
    // Two writes of one key in one entry: each has its own mod revision, so a CAS on the
    // first one's revision fails once the second has landed.
    let out = run(
        &mut s,
        10,
        &Request {
            time_ms: 0,
            cmds: vec![put("k", "1", 0), put("k", "2", 0)],
        },
    );
    assert_eq!(out, vec![oput(10), oput(11)]);
    let cas = |rev| {
        Command::Txn(Txn {
            compare: vec![Compare {
                key: "k".into(),
                mod_revision: rev,
                ..Default::default()
            }],
            success: vec![put("k", "3", 0)],
            failure: vec![],
        })
    };
    let out = run(
        &mut s,
        11,
        &Request {
            time_ms: 0,
            cmds: vec![cas(10), cas(11)],
        },
    );
    assert_eq!(
        out,
        vec![
            Outcome::Txn {
                succeeded: false,
                revision: 12,
                results: vec![]
            },
            Outcome::Txn {
                succeeded: true,
                revision: 13,
                results: vec![oput(13)]
            },
        ]
    );
    assert_eq!(revision(&s).unwrap(), 13);
    // A tick (no commands) leaves the revision alone.
    run(&mut s, 12, &Request::default());
    assert_eq!(revision(&s).unwrap(), 13);
    let e = query(
        &s,
        &Query {
            key: "k".into(),
            ..Default::default()
        },
        0,
    )
    .unwrap()
    .pop()
    .unwrap();
    assert_eq!(
        (
            e.record.create_revision,
            e.record.mod_revision,
            e.record.version
        ),
        (10, 13, 3)
    );
}

#[test]
fn txn_applies_one_branch() {
    let mut s = MemStore::default();
    run(
        &mut s,
        1,
        &Request {
            time_ms: 0,
            cmds: vec![put("k", "1", 0)],
        },
    );
    let txn = |rev| {
        Command::Txn(Txn {
            compare: vec![Compare {
                key: "k".into(),
                mod_revision: rev,
                ..Default::default()
            }],
            success: vec![put("k", "swapped", 0), put("outbox", "event", 0)],
            failure: vec![c::Delete(Delete {
                key: "nothing".into(),
                ..Default::default()
            })],
        })
    };
    let out = run(
        &mut s,
        2,
        &Request {
            time_ms: 0,
            cmds: vec![txn(7)],
        },
    );
    assert!(matches!(
        &out[0],
        Outcome::Txn {
            succeeded: false,
            ..
        }
    ));
    assert_eq!(get(&s, "outbox", 0), None);
    let out = run(
        &mut s,
        3,
        &Request {
            time_ms: 0,
            cmds: vec![txn(1)],
        },
    );
    assert!(matches!(
        &out[0],
        Outcome::Txn {
            succeeded: true,
            ..
        }
    ));
    assert_eq!(get(&s, "k", 0), Some(b"swapped".to_vec()));
    assert_eq!(get(&s, "outbox", 0), Some(b"event".to_vec()));
}

#[test]
fn databases_and_tables_track_live_records() {
    let mut s = MemStore::default();
    let mk = |db: &str, table: &str, key: &str| {
        c::Put(Put {
            db: db.into(),
            table: table.into(),
            key: key.into(),
            ..Default::default()
        })
    };
    run(
        &mut s,
        1,
        &Request {
            time_ms: 0,
            cmds: vec![
                mk("a", "x", "1"),
                mk("a", "y", "1"),
                mk("b", "", "1"),
                mk("a", "x", "2"),
            ],
        },
    );
    assert_eq!(store::databases(&s).unwrap(), vec!["a", "b"]);
    assert_eq!(store::tables(&s, "a").unwrap(), vec!["x", "y"]);
    assert_eq!(store::tables(&s, "b").unwrap(), vec!["micro"]);
    run(
        &mut s,
        2,
        &Request {
            time_ms: 0,
            cmds: vec![c::Delete(Delete {
                db: "b".into(),
                key: "1".into(),
                ..Default::default()
            })],
        },
    );
    assert_eq!(store::databases(&s).unwrap(), vec!["a"]);
}

#[test]
fn prefix_suffix_order_limit_offset() {
    let mut s = MemStore::default();
    let cmds = ["user/1", "user/2", "user/3", "users", "other"]
        .iter()
        .map(|k| put(k, k, 0))
        .collect();
    run(&mut s, 1, &Request { time_ms: 0, cmds });
    let keys = |q: Query| {
        query(&s, &q, 0)
            .unwrap()
            .into_iter()
            .map(|e| e.key)
            .collect::<Vec<_>>()
    };
    assert_eq!(
        keys(Query {
            key: "user/".into(),
            prefix: true,
            ..Default::default()
        }),
        vec!["user/1", "user/2", "user/3"]
    );
    assert_eq!(
        keys(Query {
            key: "user".into(),
            prefix: true,
            descending: true,
            limit: 2,
            ..Default::default()
        }),
        vec!["users", "user/3"]
    );
    assert_eq!(
        keys(Query {
            key: "user/".into(),
            prefix: true,
            offset: 1,
            limit: 1,
            ..Default::default()
        }),
        vec!["user/2"]
    );
    assert_eq!(
        keys(Query {
            suffix: "2".into(),
            ..Default::default()
        }),
        vec!["user/2"]
    );
}

fn arb_cmd() -> impl Strategy<Value = Command> {
    let key = prop::sample::select(vec!["a", "b", "c", "d", ""]);
    let lease_id = 1u64..4;
    prop_oneof![
        (key.clone(), lease_id.clone()).prop_map(|(k, l)| c::Put(Put {
            key: k.into(),
            value: b"l".to_vec(),
            lease: l,
            ..Default::default()
        })),
        (lease_id.clone(), 1000u64..3000)
            .prop_map(|(id, ttl_ms)| Command::Lease(lease::Cmd::Grant { id, ttl_ms })),
        lease_id
            .clone()
            .prop_map(|id| Command::Lease(lease::Cmd::KeepAlive { id })),
        lease_id
            .clone()
            .prop_map(|id| Command::Lease(lease::Cmd::Revoke { id })),
        (
            prop::sample::select(vec!["micro", "team-a"]),
            lease_id,
            0u8..3
        )
            .prop_map(|(ns, id, op)| Command::Lease(lease::Cmd::In {
                namespace: ns.into(),
                cmd: Box::new(match op {
                    0 => lease::Cmd::Grant { id, ttl_ms: 2000 },
                    1 => lease::Cmd::KeepAlive { id },
                    _ => lease::Cmd::Revoke { id },
                }),
            })),
        (key.clone(), "[a-z]{0,4}", 0u64..3000).prop_map(|(k, v, ttl)| put(k, &v, ttl)),
        key.clone().prop_map(|k| c::Delete(Delete {
            key: k.into(),
            ..Default::default()
        })),
        (key, 0u64..20).prop_map(|(k, rev)| Command::Txn(Txn {
            compare: vec![Compare {
                key: k.into(),
                mod_revision: rev,
                ..Default::default()
            }],
            success: vec![put(k, "s", 500)],
            failure: vec![],
        })),
        (0u8..5, 0u64..4, 0u8..8).prop_map(|(op, node, status)| runtime_cmd(op, node, status)),
    ]
}

/// A runtime command on one of two services (create, place, report, update, delete).
fn runtime_cmd(op: u8, node: u64, status: u8) -> Command {
    use crate::views::runtime as rt;
    let name = if node.is_multiple_of(2) { "g" } else { "h" };
    let status = [
        rt::Status::Pending,
        rt::Status::Building,
        rt::Status::Starting,
        rt::Status::Running,
        rt::Status::Stopping,
        rt::Status::Stopped,
        rt::Status::Error,
        rt::Status::Unknown,
    ][status as usize];
    Command::Runtime(match op {
        0 => rt::Cmd::Create(Box::new(rt::Create {
            spec: rt::Spec {
                namespace: "micro".into(),
                name: name.into(),
                source: "/s".into(),
                instances: 2,
                ..Default::default()
            },
            account: crate::views::auth::Account {
                id: format!("runtime-{name}"),
                name: format!("runtime-{name}"),
                kind: "service".into(),
                issuer: "micro".into(),
                secret_hash: "h".into(),
                ..Default::default()
            },
            secret: "s".into(),
        })),
        1 => rt::Cmd::Place {
            namespace: "micro".into(),
            name: name.into(),
            generation: 1,
            nodes: vec![node, (node + 1) % 4],
        },
        2 => rt::Cmd::Report(rt::Report {
            namespace: "micro".into(),
            name: name.into(),
            instance: (node % 2) as u32,
            node,
            generation: 1,
            status,
            ..Default::default()
        }),
        3 => rt::Cmd::Update {
            namespace: "micro".into(),
            name: name.into(),
            instances: 0,
            entrypoint: String::new(),
        },
        _ => rt::Cmd::Delete {
            namespace: "micro".into(),
            name: name.into(),
        },
    })
}

proptest! {
    /// Determinism: the same entries give byte-identical views whatever the batch boundaries
    /// (one overlay per batch, as the Raft state machine applies them).
    #[test]
    fn same_entries_same_bytes_whatever_the_batching(
        entries in prop::collection::vec((0u64..5000, prop::collection::vec(arb_cmd(), 0..4)), 1..40),
        cuts in prop::collection::vec(any::<bool>(), 40),
    ) {
        let reqs: Vec<Request> = entries.into_iter().map(|(t, cmds)| Request { time_ms: t, cmds }).collect();
        // A new term now and then, as leadership changes (it renews every lease).
        let at = |i: usize| LogPos { index: i as u64 + 1, term: 1 + (i as u64 / 7) };
        let mut one = MemStore::default();
        let mut one_feed = Vec::new();
        for (i, r) in reqs.iter().enumerate() {
            let mut ov = Overlay::new(&one);
            apply(&mut ov, at(i), r).unwrap();
            let (w, feed) = ov.into_parts();
            one_feed.extend(feed.changes);
            one.commit(w);
        }
        let mut batched = MemStore::default();
        let mut batched_feed = Vec::new();
        let mut i = 0;
        while i < reqs.len() {
            let base = batched.clone();
            let mut ov = Overlay::new(&base);
            loop {
                apply(&mut ov, at(i), &reqs[i]).unwrap();
                i += 1;
                if i >= reqs.len() || cuts[i % cuts.len()] { break; }
            }
            let (w, feed) = ov.into_parts();
            batched_feed.extend(feed.changes);
            batched.commit(w);
        }
        prop_assert_eq!(&one, &batched);
        prop_assert_eq!(&one_feed, &batched_feed);
        // The persisted history is the feed, and revisions only grow, without duplicates.
        let persisted = crate::views::history::read(&one, 1, &|_| true, usize::MAX).unwrap();
        prop_assert_eq!(&persisted, &one_feed);
        for w in one_feed.windows(2) {
            prop_assert!(w[0].revision <= w[1].revision);
            prop_assert!(w[0].revision < w[1].revision || w[0].key != w[1].key);
        }
    }
}

#[test]
fn the_first_cluster_id_wins() {
    let mut s = MemStore::default();
    let out = run(
        &mut s,
        1,
        &Request {
            time_ms: 0,
            cmds: vec![c::SetClusterId("a".into())],
        },
    );
    assert_eq!(out, vec![Outcome::Meta(meta::Out::ClusterId("a".into()))]);
    let out = run(
        &mut s,
        2,
        &Request {
            time_ms: 0,
            cmds: vec![c::SetClusterId("b".into())],
        },
    );
    assert_eq!(out, vec![Outcome::Meta(meta::Out::ClusterId("a".into()))]);
    assert_eq!(cluster_id(&s).unwrap(), Some("a".to_string()));
}

mod events_view {
    use super::*;
    use crate::views::events::{self, Ack, Claim, Publish, Release, Retention, Start};

    fn publish(topic: &str, payload: &str) -> Command {
        c::Publish(Publish {
            topic: topic.into(),
            payload: payload.as_bytes().to_vec(),
            ..Default::default()
        })
    }

    fn claim(group: &str, consumer: &str, max: u32, ack_wait_ms: u64, retry_limit: u32) -> Command {
        c::Claim(Claim {
            topic: "t".into(),
            group: group.into(),
            consumer: consumer.into(),
            max,
            ack_wait_ms,
            retry_limit,
            auto_ack: false,
            start: Start::Sequence(1),
        })
    }

    fn claimed(out: &[Outcome]) -> Vec<u64> {
        match &out[0] {
            Outcome::Events(ev::Out::Claimed(c)) => c.seqs.clone(),
            other => panic!("not a claim: {other:?}"),
        }
    }

    #[test]
    fn sequences_are_dense_and_retention_trims() {
        let mut s = MemStore::default();
        for i in 1..=5u64 {
            let out = run(
                &mut s,
                i,
                &Request {
                    time_ms: i * 1000,
                    cmds: vec![publish("t", &i.to_string())],
                },
            );
            assert_eq!(out, vec![Outcome::Events(ev::Out::Published { seq: i })]);
        }
        let all = events::read(&s, "t", 2, 10).unwrap();
        assert_eq!(
            all.iter().map(|(q, _)| *q).collect::<Vec<_>>(),
            vec![2, 3, 4, 5]
        );
        assert_eq!(all[0].1.payload, b"2");
        assert_eq!(events::seq_at_time(&s, "t", 3500).unwrap(), 4);
        let r = c::SetRetention(Retention {
            topic: "t".into(),
            max_events: 3,
            max_age_ms: 0,
        });
        run(
            &mut s,
            6,
            &Request {
                time_ms: 6000,
                cmds: vec![r],
            },
        );
        let m = events::topic_meta(&s, "t").unwrap();
        assert_eq!((m.first_seq, m.last_seq), (3, 5));
        let r = c::SetRetention(Retention {
            topic: "t".into(),
            max_events: 0,
            max_age_ms: 2500,
        });
        run(
            &mut s,
            7,
            &Request {
                time_ms: 7000,
                cmds: vec![r],
            },
        );
        assert_eq!(events::topic_meta(&s, "t").unwrap().first_seq, 5);
        assert_eq!(events::read(&s, "t", 0, 10).unwrap().len(), 1);
    }

    #[test]
    fn groups_claim_ack_redeliver_and_give_up() {
        let mut s = MemStore::default();
        let cmds = (0..4).map(|i| publish("t", &i.to_string())).collect();
        run(&mut s, 1, &Request { time_ms: 0, cmds });
        // Two consumers share the stream.
        assert_eq!(
            claimed(&run(
                &mut s,
                2,
                &Request {
                    time_ms: 0,
                    cmds: vec![claim("g", "a", 2, 100, 2)]
                }
            )),
            vec![1, 2]
        );
        // With two consumers claiming, each takes a fair share of what is waiting.
        assert_eq!(
            claimed(&run(
                &mut s,
                3,
                &Request {
                    time_ms: 0,
                    cmds: vec![claim("g", "b", 2, 100, 2)]
                }
            )),
            vec![3]
        );
        assert_eq!(
            claimed(&run(
                &mut s,
                3,
                &Request {
                    time_ms: 0,
                    cmds: vec![claim("g", "b", 2, 100, 2)]
                }
            )),
            vec![4]
        );
        let ack = c::Ack(Ack {
            topic: "t".into(),
            group: "g".into(),
            seqs: vec![1, 3],
            success: true,
        });
        run(
            &mut s,
            4,
            &Request {
                time_ms: 10,
                cmds: vec![ack],
            },
        );
        // Nothing new and nothing due yet.
        assert!(claimed(&run(
            &mut s,
            5,
            &Request {
                time_ms: 50,
                cmds: vec![claim("g", "b", 8, 100, 2)]
            }
        ))
        .is_empty());
        // After ack_wait, 2 and 4 come back, lowest first.
        assert_eq!(
            claimed(&run(
                &mut s,
                6,
                &Request {
                    time_ms: 100,
                    cmds: vec![claim("g", "b", 8, 100, 2)]
                }
            )),
            vec![2, 4]
        );
        // After the retry limit (2 deliveries) they are dropped.
        let out = run(
            &mut s,
            7,
            &Request {
                time_ms: 200,
                cmds: vec![claim("g", "b", 8, 100, 2)],
            },
        );
        assert_eq!(
            out,
            vec![Outcome::Events(ev::Out::Claimed(events::Claimed {
                seqs: vec![],
                dead: vec![2, 4]
            }))]
        );
        let g = events::group(&s, "t", "g").unwrap().unwrap();
        assert!(g.pending.is_empty());
        assert_eq!(g.dead, 2);
    }

    #[test]
    fn release_makes_a_gone_consumers_events_due_now() {
        let mut s = MemStore::default();
        let cmds = (0..3).map(|i| publish("t", &i.to_string())).collect();
        run(&mut s, 1, &Request { time_ms: 0, cmds });
        claimed(&run(
            &mut s,
            2,
            &Request {
                time_ms: 0,
                cmds: vec![claim("g", "a", 3, 60_000, 0)],
            },
        ));
        let ack = c::Ack(Ack {
            topic: "t".into(),
            group: "g".into(),
            seqs: vec![1],
            success: true,
        });
        let rel = c::Release(Release {
            topic: "t".into(),
            group: "g".into(),
            consumer: "a".into(),
        });
        run(
            &mut s,
            3,
            &Request {
                time_ms: 1,
                cmds: vec![ack, rel],
            },
        );
        assert_eq!(
            claimed(&run(
                &mut s,
                4,
                &Request {
                    time_ms: 2,
                    cmds: vec![claim("g", "b", 10, 60_000, 0)]
                }
            )),
            vec![2, 3]
        );
    }

    /// A manual-ack consumer leaves with an event unacked; an auto-ack consumer of the group
    /// takes it over. It is delivered to it once: taking it is acking it, so later claims
    /// find nothing (it used to stay pending with a deadline of "now", redelivered by every
    /// claim, one log entry each).
    #[test]
    fn an_auto_ack_consumer_takes_a_due_event_once() {
        let mut s = MemStore::default();
        run(
            &mut s,
            1,
            &Request {
                time_ms: 0,
                cmds: vec![publish("t", "a")],
            },
        );
        claimed(&run(
            &mut s,
            2,
            &Request {
                time_ms: 0,
                cmds: vec![claim("g", "manual", 1, 60_000, 0)],
            },
        ));
        let rel = c::Release(Release {
            topic: "t".into(),
            group: "g".into(),
            consumer: "manual".into(),
        });
        run(
            &mut s,
            3,
            &Request {
                time_ms: 1,
                cmds: vec![rel],
            },
        );
        let auto = |time_ms| Request {
            time_ms,
            cmds: vec![c::Claim(Claim {
                auto_ack: true,
                ack_wait_ms: 0,
                ..match claim("g", "auto", 8, 0, 0) {
                    Command::Events(ev::Cmd::Claim(c)) => c,
                    _ => unreachable!(),
                }
            })],
        };
        assert_eq!(claimed(&run(&mut s, 4, &auto(2))), vec![1]);
        let g = events::group(&s, "t", "g").unwrap().unwrap();
        assert!(g.pending.is_empty(), "acked by delivery: {:?}", g.pending);
        for (i, t) in [(5, 2), (6, 3), (7, 60_000)] {
            assert!(claimed(&run(&mut s, i, &auto(t))).is_empty(), "at {t}");
        }
    }

    #[test]
    fn a_txn_publishes_with_its_writes_or_not_at_all() {
        let mut s = MemStore::default();
        let txn = |rev| {
            Command::Txn(Txn {
                compare: vec![Compare {
                    key: "order".into(),
                    mod_revision: rev,
                    ..Default::default()
                }],
                success: vec![put("order", "placed", 0), publish("orders", "placed")],
                failure: vec![],
            })
        };
        run(
            &mut s,
            1,
            &Request {
                time_ms: 0,
                cmds: vec![txn(5)],
            },
        );
        assert_eq!(events::topic_meta(&s, "orders").unwrap().last_seq, 0);
        assert_eq!(get(&s, "order", 0), None);
        run(
            &mut s,
            2,
            &Request {
                time_ms: 0,
                cmds: vec![txn(0)],
            },
        );
        assert_eq!(events::topic_meta(&s, "orders").unwrap().last_seq, 1);
        assert_eq!(get(&s, "order", 0), Some(b"placed".to_vec()));
    }
}

proptest! {
    /// The value codec never panics on arbitrary bytes (records, entries, metadata).
    #[test]
    fn codec_decode_never_panics(raw in prop::collection::vec(any::<u8>(), 0..128)) {
        let _ = crate::codec::decode::<crate::views::store::StoredRecord>(&raw);
        let _ = crate::codec::decode::<Request>(&raw);
        let _ = crate::codec::decode::<crate::views::events::GroupState>(&raw);
    }
}

mod kernel {
    use super::*;
    use crate::views::history;

    fn req(time_ms: u64, cmds: Vec<Command>) -> Request {
        Request { time_ms, cmds }
    }

    fn grant(id: u64, ttl_ms: u64) -> Command {
        Command::Lease(lease::Cmd::Grant { id, ttl_ms })
    }

    fn leased(key: &str, id: u64) -> Command {
        c::Put(Put {
            key: key.into(),
            value: b"v".to_vec(),
            lease: id,
            ..Default::default()
        })
    }

    fn apply_at(s: &mut MemStore, index: u64, term: u64, r: &Request) -> (Vec<Outcome>, Feed) {
        let mut ov = Overlay::new(&*s);
        let out = apply(&mut ov, LogPos { index, term }, r).unwrap();
        let (w, feed) = ov.into_parts();
        s.commit(w);
        (out, feed)
    }

    #[test]
    fn a_lease_takes_its_keys_with_it_in_one_revision() {
        let mut s = MemStore::default();
        let (out, _) = apply_at(
            &mut s,
            1,
            1,
            &req(1000, vec![grant(7, 3000), leased("a", 7), leased("b", 7)]),
        );
        assert_eq!(
            out[0],
            Outcome::Lease(lease::Out::Granted {
                id: 7,
                ttl_ms: 3000
            })
        );
        assert_eq!(out[1], oput(2));
        // A put naming a lease that does not exist is refused and changes nothing.
        let (out, feed) = apply_at(&mut s, 2, 1, &req(1500, vec![leased("c", 8)]));
        assert!(matches!(&out[0], Outcome::Rejected { field, .. } if field == "lease"));
        assert!(feed.changes.is_empty());
        assert_eq!(crate::revision(&s).unwrap(), 3);
        // Readers stop seeing the keys at the lease's expiry, before any purge entry.
        assert_eq!(get(&s, "a", 3999), Some(b"v".to_vec()));
        assert_eq!(get(&s, "a", 4000), None);
        assert_eq!(crate::next_expiry(&s).unwrap(), Some(4000));
        // The tick at 4000 deletes both keys at one revision.
        let (_, feed) = apply_at(&mut s, 3, 1, &req(4000, vec![]));
        let revs: Vec<(u64, bool)> = feed
            .changes
            .iter()
            .map(|c| (c.revision, c.value.is_none()))
            .collect();
        assert_eq!(revs, vec![(4, true), (4, true)]);
        assert!(lease::get(&s, 7).unwrap().is_none());
        assert!(lease::attached(&s, 7).unwrap().is_empty());
        assert_eq!(crate::next_expiry(&s).unwrap(), None);
    }

    #[test]
    fn a_namespace_cannot_keep_or_revoke_another_namespaces_lease() {
        let scoped = |ns: &str, cmd| {
            Command::Lease(lease::Cmd::In {
                namespace: ns.into(),
                cmd: Box::new(cmd),
            })
        };
        let mut s = MemStore::default();
        let (out, _) = apply_at(
            &mut s,
            1,
            1,
            &req(
                1000,
                vec![
                    scoped(
                        "team-a",
                        lease::Cmd::Grant {
                            id: 3,
                            ttl_ms: 5000,
                        },
                    ),
                    grant(4, 5000),
                ],
            ),
        );
        assert!(matches!(
            out[0],
            Outcome::Lease(lease::Out::Granted { id: 3, .. })
        ));
        assert_eq!(lease::namespace(&s, 3).unwrap(), "team-a");
        assert_eq!(lease::namespace(&s, 4).unwrap(), "micro");
        let (out, _) = apply_at(
            &mut s,
            2,
            1,
            &req(
                1100,
                vec![
                    scoped("team-b", lease::Cmd::Revoke { id: 3 }),
                    scoped("team-b", lease::Cmd::KeepAlive { id: 3 }),
                    scoped("team-a", lease::Cmd::Revoke { id: 4 }),
                    scoped("micro", lease::Cmd::KeepAlive { id: 4 }),
                ],
            ),
        );
        assert_eq!(out[0], Outcome::Lease(lease::Out::NotFound { id: 3 }));
        assert_eq!(out[1], Outcome::Lease(lease::Out::NotFound { id: 3 }));
        assert_eq!(out[2], Outcome::Lease(lease::Out::NotFound { id: 4 }));
        assert!(matches!(
            out[3],
            Outcome::Lease(lease::Out::Kept { id: 4, .. })
        ));
        assert!(lease::get(&s, 3).unwrap().is_some());
        // Its own namespace revokes it, and the namespace record goes with it; an unscoped
        // command (an admin's) reaches any lease.
        let (out, _) = apply_at(
            &mut s,
            3,
            1,
            &req(
                1200,
                vec![
                    scoped("team-a", lease::Cmd::Revoke { id: 3 }),
                    Command::Lease(lease::Cmd::Revoke { id: 4 }),
                ],
            ),
        );
        assert!(matches!(
            out[0],
            Outcome::Lease(lease::Out::Revoked { id: 3, .. })
        ));
        assert!(matches!(
            out[1],
            Outcome::Lease(lease::Out::Revoked { id: 4, .. })
        ));
        assert_eq!(lease::namespace(&s, 3).unwrap(), "micro");
        // A nested scope is refused before it is proposed.
        let nested = lease::Cmd::In {
            namespace: "a".into(),
            cmd: Box::new(lease::Cmd::In {
                namespace: "b".into(),
                cmd: Box::new(lease::Cmd::KeepAlive { id: 1 }),
            }),
        };
        assert!(nested.validate().is_err());
    }

    #[test]
    fn keepalive_revoke_and_a_new_term_renew_or_end_leases() {
        let mut s = MemStore::default();
        apply_at(
            &mut s,
            1,
            1,
            &req(1000, vec![grant(0, 2000), leased("k", 1)]),
        );
        let (out, _) = apply_at(
            &mut s,
            2,
            1,
            &req(2500, vec![Command::Lease(lease::Cmd::KeepAlive { id: 1 })]),
        );
        assert_eq!(
            out[0],
            Outcome::Lease(lease::Out::Kept {
                id: 1,
                ttl_ms: 2000
            })
        );
        assert_eq!(lease::get(&s, 1).unwrap().unwrap().expiry_ms, 4500);
        // The cluster was down for an hour; the new leader's first entry (a new term) renews
        // the lease from its clock before anything is purged.
        let hour = 3_600_000;
        apply_at(&mut s, 3, 2, &req(4500 + hour, vec![]));
        assert_eq!(get(&s, "k", 4500 + hour), Some(b"v".to_vec()));
        assert_eq!(lease::get(&s, 1).unwrap().unwrap().expiry_ms, 6500 + hour);
        // Without a new term, time does expire it.
        apply_at(&mut s, 4, 2, &req(6500 + hour, vec![]));
        assert_eq!(get(&s, "k", 0), None);

        apply_at(
            &mut s,
            5,
            2,
            &req(7000 + hour, vec![grant(5, 9000), leased("x", 5)]),
        );
        let (out, feed) = apply_at(
            &mut s,
            6,
            2,
            &req(
                7001 + hour,
                vec![Command::Lease(lease::Cmd::Revoke { id: 5 })],
            ),
        );
        assert_eq!(
            out[0],
            Outcome::Lease(lease::Out::Revoked { id: 5, keys: 1 })
        );
        assert_eq!(feed.changes.len(), 1);
        let (out, _) = apply_at(
            &mut s,
            7,
            2,
            &req(
                7002 + hour,
                vec![Command::Lease(lease::Cmd::KeepAlive { id: 5 })],
            ),
        );
        assert_eq!(out[0], Outcome::Lease(lease::Out::NotFound { id: 5 }));
    }

    #[test]
    fn a_txn_with_a_dead_lease_applies_nothing() {
        let mut s = MemStore::default();
        let t = Command::Txn(Txn {
            compare: vec![],
            success: vec![
                c::Put(Put {
                    key: "plain".into(),
                    ..Default::default()
                }),
                leased("l", 99),
            ],
            failure: vec![],
        });
        let (out, feed) = apply_at(&mut s, 1, 1, &req(10, vec![t]));
        assert!(matches!(&out[0], Outcome::Rejected { field, .. } if field == "lease"));
        assert!(feed.changes.is_empty());
        assert_eq!(get(&s, "plain", 0), None);
    }

    #[test]
    fn compaction_steps_stop_at_a_revision_within_the_change_budget() {
        let mut s = MemStore::default();
        // Revision 1: a transaction of 5 changes; revisions 2..=7: one change each.
        let txn = Command::Txn(Txn {
            compare: vec![],
            success: (0..5).map(|i| put(&format!("t{i}"), "v", 0)).collect(),
            failure: vec![],
        });
        apply_at(&mut s, 1, 1, &req(1, vec![txn]));
        for i in 2..=7u64 {
            apply_at(&mut s, i, 1, &req(i, vec![put("k", "v", 0)]));
        }
        let step = |s: &MemStore, from, to, max| history::compact_step(s, from, to, max).unwrap();
        // A revision over the budget is still dropped whole, alone.
        assert_eq!(step(&s, 1, 8, 4), 2);
        // Whole revisions up to the budget: 2, 3, 4, 5 (4 changes), stopping before 6.
        assert_eq!(step(&s, 2, 8, 4), 6);
        // Everything fits: the target itself.
        assert_eq!(step(&s, 1, 8, 100), 8);
        assert_eq!(step(&s, 6, 8, 4), 8);
        assert_eq!(step(&s, 3, 4, 1), 4);
        // Never past what one command drops.
        let far = 1 + history::MAX_COMPACT_STEP;
        assert_eq!(step(&s, 1, far + 5, usize::MAX), far);
        // Each step applied in turn reaches the target with no change left below it.
        let mut first = 1;
        let mut index = 8;
        while first < 8 {
            let to = step(&s, first, 8, 3);
            let compact = Command::Meta(meta::Cmd::Compact { revision: to });
            let (out, _) = apply_at(&mut s, index, 1, &req(index, vec![compact]));
            assert_eq!(out[0], Outcome::Meta(meta::Out::Compacted { revision: to }));
            assert!(to > first);
            first = to;
            index += 1;
        }
        let rest = history::read(&s, 1, &|_| true, usize::MAX).unwrap();
        assert!(rest.is_empty(), "{rest:?}");
    }

    #[test]
    fn history_keeps_every_change_until_compacted() {
        let mut s = MemStore::default();
        for i in 1..=5u64 {
            apply_at(&mut s, i, 1, &req(i, vec![put("k", &i.to_string(), 0)]));
        }
        apply_at(
            &mut s,
            6,
            1,
            &req(
                6,
                vec![c::Delete(Delete {
                    key: "k".into(),
                    ..Default::default()
                })],
            ),
        );
        let all = history::read(&s, 1, &|_| true, usize::MAX).unwrap();
        assert_eq!(
            all.iter().map(|c| c.revision).collect::<Vec<_>>(),
            vec![1, 2, 3, 4, 5, 6]
        );
        assert_eq!(all[5].prev_revision, 5);
        assert_eq!(all[5].value, None);
        let sk = crate::keys::store_key("micro", "micro", "k");
        let prev = history::value_at(&s, &sk, 4).unwrap().unwrap();
        assert_eq!(store::decode_record(&prev).unwrap().value, b"4");
        let compact = |r| Command::Meta(meta::Cmd::Compact { revision: r });
        let (out, _) = apply_at(&mut s, 7, 1, &req(7, vec![compact(4)]));
        assert_eq!(out[0], Outcome::Meta(meta::Out::Compacted { revision: 4 }));
        assert_eq!(crate::compact_revision(&s).unwrap(), 4);
        let rest = history::read(&s, 1, &|_| true, usize::MAX).unwrap();
        assert_eq!(rest.first().map(|c| c.revision), Some(4));
        // Past the current revision is refused.
        let (out, _) = apply_at(&mut s, 8, 1, &req(8, vec![compact(100)]));
        assert!(matches!(&out[0], Outcome::Rejected { field, .. } if field == "revision"));
    }

    #[test]
    fn schema_1_expiry_keys_and_records_are_migrated_at_the_first_entry() {
        // A record and its expiry index entry as release 1 wrote them.
        let mut s = MemStore::default();
        let sk = crate::keys::store_key("micro", "micro", "old");
        #[derive(serde::Serialize)]
        struct V1 {
            value: Vec<u8>,
            metadata: std::collections::BTreeMap<String, store::MetaField>,
            expiry_ms: Option<u64>,
            create_revision: u64,
            mod_revision: u64,
            version: u64,
        }
        let v1 = V1 {
            value: b"x".to_vec(),
            metadata: Default::default(),
            expiry_ms: Some(5000),
            create_revision: 3,
            mod_revision: 3,
            version: 1,
        };
        s.map.insert(sk.clone(), crate::codec::encode(&v1));
        let mut ek = vec![crate::keys::EXPIRY];
        ek.extend_from_slice(&5000u64.to_be_bytes());
        ek.extend_from_slice(&sk[1..]);
        s.map.insert(ek.clone(), vec![]);
        s.map.insert(
            crate::keys::META_REVISION.to_vec(),
            3u64.to_be_bytes().to_vec(),
        );
        assert_eq!(get(&s, "old", 0), Some(b"x".to_vec()));
        apply_at(&mut s, 4, 1, &req(100, vec![]));
        assert!(!s.map.contains_key(&ek));
        assert!(s.map.contains_key(&crate::keys::expiry_key(5000, &sk)));
        let (_, feed) = apply_at(&mut s, 5, 1, &req(5000, vec![]));
        assert_eq!(feed.changes.len(), 1);
        assert_eq!(get(&s, "old", 0), None);
    }
}

mod registry_view {
    use super::*;
    use crate::views::registry::{self, Action, Node, Register};

    fn reg(nodes: &[&str], ttl_ms: u64) -> Command {
        Command::Registry(registry::Cmd::Register(Register {
            name: "greeter".into(),
            version: "v1".into(),
            endpoints: vec![b"ep".to_vec()],
            nodes: nodes
                .iter()
                .map(|n| {
                    (
                        n.to_string(),
                        Node {
                            address: format!("{n}:1"),
                            ..Default::default()
                        },
                    )
                })
                .collect(),
            ttl_ms,
            ..Default::default()
        }))
    }

    fn step(
        s: &mut MemStore,
        index: u64,
        time_ms: u64,
        cmds: Vec<Command>,
    ) -> (Vec<Outcome>, Feed) {
        let mut ov = Overlay::new(&*s);
        let out = apply(
            &mut ov,
            LogPos { index, term: 1 },
            &Request { time_ms, cmds },
        )
        .unwrap();
        let (w, feed) = ov.into_parts();
        s.commit(w);
        (out, feed)
    }

    fn nodes(s: &MemStore) -> Vec<String> {
        registry::get(s, "micro", "greeter", "v1")
            .unwrap()
            .map(|svc| svc.nodes.keys().cloned().collect())
            .unwrap_or_default()
    }

    #[test]
    fn nodes_join_refresh_expire_and_leave_as_v3_says() {
        let mut s = MemStore::default();
        let done = |a| Outcome::Registry(registry::Out::Done(a));
        let (out, feed) = step(&mut s, 1, 1000, vec![reg(&["a", "b"], 3000)]);
        assert_eq!(out, vec![done(Action::Create)]);
        assert_eq!(feed.changes.len(), 1);
        let svc = registry::get(&s, "micro", "greeter", "v1")
            .unwrap()
            .unwrap();
        assert_eq!(
            svc.metadata.get("domain").map(String::as_str),
            Some("micro")
        );
        assert_eq!(
            svc.nodes["a"].metadata.get("domain").map(String::as_str),
            Some("micro")
        );
        // Endpoints of the first registration stick.
        let mut again = reg(&["b"], 3000);
        if let Command::Registry(registry::Cmd::Register(r)) = &mut again {
            r.endpoints = vec![b"other".to_vec()];
        }
        let (out, feed) = step(&mut s, 2, 3500, vec![again]);
        assert_eq!(out, vec![done(Action::Refresh)]);
        assert!(feed.changes.is_empty());
        // a was not refreshed: it expires at 4000; b lives until 6500.
        let (_, feed) = step(&mut s, 3, 4000, vec![]);
        assert_eq!(feed.changes.len(), 1);
        assert_eq!(nodes(&s), vec!["b".to_string()]);
        let svc = registry::get(&s, "micro", "greeter", "v1")
            .unwrap()
            .unwrap();
        assert_eq!(svc.endpoints, vec![b"ep".to_vec()]);
        let (out, _) = step(&mut s, 4, 4100, vec![reg(&["c"], 0)]);
        assert_eq!(out, vec![done(Action::Update)]);
        let dereg = Command::Registry(registry::Cmd::Deregister {
            domain: String::new(),
            name: "greeter".into(),
            version: "v1".into(),
            nodes: vec!["b".into(), "c".into()],
        });
        let (out, feed) = step(&mut s, 5, 4200, vec![dereg]);
        assert_eq!(out, vec![done(Action::Delete)]);
        assert_eq!(feed.changes[0].value, None);
        assert!(registry::get(&s, "micro", "greeter", "v1")
            .unwrap()
            .is_none());
        // b's lease went with it: nothing is left to expire.
        assert_eq!(crate::next_expiry(&s).unwrap(), None);
        assert!(lease::list(&s).unwrap().is_empty());
        // Each change was also published, in the same entries: create, update (a expired),
        // update (c joined), delete.
        let published = crate::views::events::read(&s, registry::EVENTS_TOPIC, 1, 10).unwrap();
        assert_eq!(published.len(), 4);
        // (Their payloads are decoded as registry.Event in tests/tests/registry.rs.)
        assert!(published
            .iter()
            .all(|(_, e)| e.payload.windows(7).any(|w| w == b"greeter")));
    }

    #[test]
    fn a_new_term_keeps_registered_nodes_alive() {
        let mut s = MemStore::default();
        step(&mut s, 1, 1000, vec![reg(&["a"], 3000)]);
        let mut ov = Overlay::new(&s);
        apply(
            &mut ov,
            LogPos { index: 2, term: 2 },
            &Request {
                time_ms: 600_000,
                cmds: vec![],
            },
        )
        .unwrap();
        let w = ov.into_writes();
        s.commit(w);
        assert_eq!(nodes(&s), vec!["a".to_string()]);
        step(&mut s, 3, 603_000, vec![]);
        assert!(nodes(&s).is_empty());
    }
}

mod config_view {
    use super::*;
    use crate::views::config::{self, NewLeaf, Out};

    fn p(path: &str) -> Vec<String> {
        path.split('.')
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect()
    }

    fn set(path: &str, leaves: &[(&str, &str)], if_revision: Option<u64>) -> Command {
        Command::Config(config::Cmd::Set {
            namespace: String::new(),
            path: p(path),
            leaves: leaves
                .iter()
                .map(|(rel, json)| NewLeaf {
                    path: p(rel),
                    json: json.to_string(),
                    secret: false,
                })
                .collect(),
            if_revision,
        })
    }

    fn doc(s: &MemStore) -> Vec<(String, String)> {
        config::leaves(s, "", &[])
            .unwrap()
            .into_iter()
            .map(|(path, l)| (path.join("."), l.json))
            .collect()
    }

    #[test]
    fn objects_merge_scalars_replace_deletes_take_subtrees() {
        let mut s = MemStore::default();
        let mut i = 0;
        let mut step = |s: &mut MemStore, c: Command| {
            i += 1;
            run(
                s,
                i,
                &Request {
                    time_ms: i,
                    cmds: vec![c],
                },
            )
        };
        step(&mut s, set("a", &[("b", "1")], None));
        step(&mut s, set("a", &[("c", "2")], None));
        assert_eq!(
            doc(&s),
            vec![("a.b".into(), "1".into()), ("a.c".into(), "2".into())]
        );
        // A scalar at a replaces its subtree; a path under a scalar replaces the scalar.
        step(&mut s, set("a", &[("", "5")], None));
        assert_eq!(doc(&s), vec![("a".into(), "5".into())]);
        step(&mut s, set("a.x", &[("", "\"y\"")], None));
        assert_eq!(doc(&s), vec![("a.x".into(), "\"y\"".into())]);
        step(&mut s, set("a", &[("b", "1"), ("c.d", "[1,2]")], None));
        let rev = config::revision_of(&s, "", &p("a.b")).unwrap();
        // Compare-and-set on the revision of a path.
        let out = step(&mut s, set("a.b", &[("", "2")], Some(rev - 1)));
        assert_eq!(
            out,
            vec![Outcome::Config(Out::RevisionMismatch { current: rev })]
        );
        let out = step(&mut s, set("a.b", &[("", "2")], Some(rev)));
        assert!(matches!(out[0], Outcome::Config(Out::Set { .. })));
        step(&mut s, set("fresh", &[("", "1")], Some(0)));
        let out = step(
            &mut s,
            Command::Config(config::Cmd::Delete {
                namespace: String::new(),
                path: p("a"),
            }),
        );
        assert_eq!(out, vec![Outcome::Config(Out::Deleted { leaves: 3 })]);
        assert_eq!(doc(&s), vec![("fresh".into(), "1".into())]);
        // The first key is set once; a rotation adds a key and keeps the old ones.
        let k = |b: u8| Command::Config(config::Cmd::InitKey { key: vec![b; 32] });
        let key = |id, b: u8| {
            vec![Outcome::Config(Out::Key {
                id,
                key: vec![b; 32],
            })]
        };
        assert_eq!(step(&mut s, k(1)), key(1, 1));
        assert_eq!(step(&mut s, k(2)), key(1, 1));
        let rotate = Command::Config(config::Cmd::RotateKey { key: vec![3; 32] });
        assert_eq!(step(&mut s, rotate), key(2, 3));
        let ks = config::secret_keys(&s).unwrap().unwrap();
        assert_eq!((ks.current, ks.keys.len()), (2, 2));
    }
}

mod lock_view {
    use super::*;
    use crate::views::lock::{self, Fence, Out};

    fn step(s: &mut MemStore, index: u64, time_ms: u64, cmds: Vec<Command>) -> Vec<Outcome> {
        run(s, index, &Request { time_ms, cmds })
    }

    fn acquire(lease: u64) -> Command {
        Command::Lock(lock::Cmd::Acquire {
            name: "L".into(),
            lease,
            value: vec![],
        })
    }

    fn fenced(token: u64) -> Command {
        Command::Fenced(
            Fence {
                lock: "L".into(),
                token,
            },
            Box::new(put("shared", &token.to_string(), 0)),
        )
    }

    #[test]
    fn holders_are_served_in_order_with_growing_tokens_and_stale_ones_are_fenced_off() {
        let mut s = MemStore::default();
        let grant = |id| Command::Lease(lease::Cmd::Grant { id, ttl_ms: 2000 });
        step(&mut s, 1, 1000, vec![grant(1), grant(2)]);
        let out = step(&mut s, 2, 1000, vec![acquire(1), acquire(2)]);
        let (ta, tb) = match (&out[0], &out[1]) {
            (
                Outcome::Lock(Out::Queued {
                    token: a,
                    held: true,
                }),
                Outcome::Lock(Out::Queued {
                    token: b,
                    held: false,
                }),
            ) => (*a, *b),
            other => panic!("{other:?}"),
        };
        assert!(tb > ta);
        assert_eq!(lock::meta(&s, "L").unwrap().holder, ta);
        assert!(matches!(
            step(&mut s, 3, 1100, vec![fenced(ta)])[0],
            Outcome::Store(_)
        ));
        // B keeps its lease alive; A's expires: B holds, with its own (higher) token.
        step(
            &mut s,
            4,
            2500,
            vec![Command::Lease(lease::Cmd::KeepAlive { id: 2 })],
        );
        step(&mut s, 5, 3000, vec![]);
        let m = lock::meta(&s, "L").unwrap();
        assert_eq!((m.holder, m.token), (tb, tb));
        // A wakes up and writes with its old token: refused, naming both tokens.
        match &step(&mut s, 6, 3100, vec![fenced(ta)])[0] {
            Outcome::Refused { field, reason } => {
                assert_eq!(field, "fence");
                assert!(
                    reason.contains(&ta.to_string()) && reason.contains(&tb.to_string()),
                    "{reason}"
                );
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(get(&s, "shared", 0), Some(ta.to_string().into_bytes()));
        assert!(matches!(
            step(&mut s, 7, 3200, vec![fenced(tb)])[0],
            Outcome::Store(_)
        ));
        let out = step(
            &mut s,
            8,
            3300,
            vec![Command::Lock(lock::Cmd::Release {
                name: "L".into(),
                token: tb,
            })],
        );
        assert_eq!(out, vec![Outcome::Lock(Out::Released { existed: true })]);
        let m = lock::meta(&s, "L").unwrap();
        assert_eq!((m.holder, m.token), (0, tb));
        assert!(lock::waiters(&s, "L").unwrap().is_empty());
        // A dead lease cannot queue.
        assert!(
            matches!(&step(&mut s, 9, 3400, vec![acquire(1)])[0], Outcome::Rejected { field, .. } if field == "lease")
        );
    }
}

mod runtime_view {
    use super::*;
    use crate::views::auth;
    use crate::views::runtime::{self as rt, Cmd, Out, Report, Status};

    fn step(s: &mut MemStore, index: u64, cmd: Cmd) -> Outcome {
        let mut ov = Overlay::new(&*s);
        let mut out = apply(
            &mut ov,
            LogPos { index, term: 1 },
            &Request {
                time_ms: 1000 + index,
                cmds: vec![Command::Runtime(cmd)],
            },
        )
        .unwrap();
        let (w, _) = ov.into_parts();
        s.commit(w);
        out.remove(0)
    }

    fn create(name: &str, instances: u32) -> Cmd {
        Cmd::Create(Box::new(rt::Create {
            spec: rt::Spec {
                namespace: "micro".into(),
                name: name.into(),
                source: "/src".into(),
                instances,
                ..Default::default()
            },
            account: auth::Account {
                id: format!("runtime-{name}"),
                name: format!("runtime-{name}"),
                kind: "service".into(),
                issuer: "micro".into(),
                scopes: vec!["service".into()],
                secret_hash: "hash".into(),
                ..Default::default()
            },
            secret: "secret".into(),
        }))
    }

    fn place(nodes: &[u64], generation: u64) -> Cmd {
        Cmd::Place {
            namespace: "micro".into(),
            name: "g".into(),
            generation,
            nodes: nodes.to_vec(),
        }
    }

    fn report(instance: u32, node: u64, generation: u64, status: Status) -> Cmd {
        Cmd::Report(Report {
            namespace: "micro".into(),
            name: "g".into(),
            instance,
            node,
            generation,
            status,
            ..Default::default()
        })
    }

    fn svc(s: &MemStore) -> Option<rt::Service> {
        rt::get(s, "micro", "g").unwrap()
    }

    const DONE: Outcome = Outcome::Runtime(Out::Done);
    const STALE: Outcome = Outcome::Runtime(Out::Stale);

    #[test]
    fn create_makes_the_account_and_the_rule_once_and_refuses_a_second_create() {
        let mut s = MemStore::default();
        assert_eq!(step(&mut s, 1, create("g", 2)), DONE);
        let svc = svc(&s).unwrap();
        assert_eq!((svc.generation, svc.instances.len()), (1, 2));
        assert!(svc
            .instances
            .iter()
            .all(|i| i.node == 0 && i.status == Status::Pending));
        let acc = auth::account(&s, "micro", "runtime-g").unwrap().unwrap();
        assert_eq!(acc.scopes, vec!["service".to_string()]);
        let rule = auth::rule(&s, "micro", rt::SERVICE_RULE).unwrap().unwrap();
        assert_eq!((rule.scope.as_str(), rule.access), ("service", 1));
        let deny = auth::rule(&s, "micro", rt::SERVICE_RULE_NO_RUNTIME)
            .unwrap()
            .unwrap();
        assert_eq!(
            (deny.resource_name.as_str(), deny.access, deny.priority),
            ("runtime", 2, 1)
        );
        assert_eq!(
            step(&mut s, 2, create("g", 1)),
            Outcome::Runtime(Out::Exists)
        );
        assert_eq!(svc_instances(&s), 2, "the second create changed nothing");
    }

    fn svc_instances(s: &MemStore) -> usize {
        svc(s).map_or(0, |v| v.instances.len())
    }

    #[test]
    fn reports_count_only_from_the_placed_node_and_the_current_generation() {
        let mut s = MemStore::default();
        step(&mut s, 1, create("g", 2));
        assert_eq!(step(&mut s, 2, place(&[1, 2], 1)), DONE);
        assert_eq!(step(&mut s, 3, place(&[1, 2], 1)), STALE, "no change");
        assert_eq!(step(&mut s, 4, place(&[1], 1)), STALE, "wrong count");
        assert_eq!(step(&mut s, 5, report(0, 1, 1, Status::Running)), DONE);
        assert_eq!(
            step(&mut s, 6, report(1, 3, 1, Status::Running)),
            STALE,
            "not placed there"
        );
        assert_eq!(
            step(&mut s, 7, report(1, 2, 9, Status::Running)),
            STALE,
            "other generation"
        );
        assert_eq!(
            step(&mut s, 8, report(5, 2, 1, Status::Running)),
            STALE,
            "no such instance"
        );
        let v = svc(&s).unwrap();
        assert_eq!(v.instances[0].status, Status::Running);
        assert_eq!(v.instances[1].status, Status::Pending);
        // Moved: the instance starts over on its new node, the old node's word no longer counts.
        assert_eq!(step(&mut s, 9, place(&[3, 2], 1)), DONE);
        assert_eq!(svc(&s).unwrap().instances[0].status, Status::Pending);
        assert_eq!(step(&mut s, 10, report(0, 1, 1, Status::Running)), STALE);
        // Update: a new generation, instances keep their nodes, new ones wait for placement.
        let up = Cmd::Update {
            namespace: "micro".into(),
            name: "g".into(),
            instances: 3,
            entrypoint: String::new(),
        };
        assert_eq!(step(&mut s, 11, up), DONE);
        let v = svc(&s).unwrap();
        assert_eq!(v.generation, 2);
        assert_eq!(
            v.instances.iter().map(|i| i.node).collect::<Vec<_>>(),
            vec![3, 2, 0]
        );
        assert_eq!(step(&mut s, 12, report(0, 3, 1, Status::Running)), STALE);
        assert_eq!(step(&mut s, 13, report(0, 3, 2, Status::Running)), DONE);
    }

    #[test]
    fn delete_waits_for_every_instance_to_stop_then_removes_service_and_account() {
        let mut s = MemStore::default();
        step(&mut s, 1, create("g", 3));
        step(&mut s, 2, place(&[1, 2, 3], 1));
        for (i, n) in [(0, 1), (1, 2), (2, 3)] {
            step(&mut s, 3 + i as u64, report(i, n, 1, Status::Running));
        }
        let del = Cmd::Delete {
            namespace: "micro".into(),
            name: "g".into(),
        };
        assert_eq!(step(&mut s, 10, del.clone()), DONE);
        let v = svc(&s).unwrap();
        assert!(v.deleting && v.instances.iter().all(|i| i.status == Status::Stopping));
        // A late "running" from a node that has not seen the delete does not undo it.
        assert_eq!(step(&mut s, 11, report(0, 1, 1, Status::Running)), DONE);
        assert_eq!(svc(&s).unwrap().instances[0].status, Status::Stopping);
        step(&mut s, 12, report(0, 1, 1, Status::Stopped));
        step(&mut s, 13, report(1, 2, 1, Status::Stopped));
        assert!(
            auth::account(&s, "micro", "runtime-g").unwrap().is_some(),
            "still stopping"
        );
        // Node 3 is dead: the leader unplaces its instance, which ends the delete.
        assert_eq!(step(&mut s, 14, place(&[1, 2, 0], 1)), DONE);
        assert!(svc(&s).is_none());
        assert!(auth::account(&s, "micro", "runtime-g").unwrap().is_none());
        assert_eq!(step(&mut s, 15, del), Outcome::Runtime(Out::NotFound));
        // A service none of whose instances was placed goes at once.
        step(&mut s, 16, create("g", 1));
        step(
            &mut s,
            17,
            Cmd::Delete {
                namespace: "micro".into(),
                name: "g".into(),
            },
        );
        assert!(svc(&s).is_none());
    }

    #[test]
    fn bad_specs_are_rejected_naming_the_field() {
        let mut s = MemStore::default();
        let mut bad = create("a b", 1);
        let field = |o: Outcome| match o {
            Outcome::Rejected { field, .. } => field,
            o => panic!("not rejected: {o:?}"),
        };
        assert_eq!(field(step(&mut s, 1, bad.clone())), "resource.service.name");
        if let Cmd::Create(c) = &mut bad {
            c.spec.name = "ok".into();
            c.spec.instances = 0;
        }
        assert_eq!(field(step(&mut s, 2, bad.clone())), "options.instances");
        if let Cmd::Create(c) = &mut bad {
            c.spec.instances = 1;
            c.spec.env = vec!["NOEQUALS".into()];
        }
        assert_eq!(field(step(&mut s, 3, bad)), "options.env[0]");
        assert!(rt::list(&s, None).unwrap().is_empty());
    }
}
