//! Golden bytes of log entries. The release-1 bytes were captured from the code as it was
//! before the view kernel (a flat command enum), so a later change that alters how old bytes
//! decode fails here: they must keep decoding to the same meaning forever (or through a
//! tested upgrade). The version-2 bytes pin what this release writes.

use micro_cluster::decode_entry_bytes;
use micro_state::codec;
use micro_state::views::{events as ev, meta, store};

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

/// Release 1, `[1] ++ bincode(Entry)` of [`sample_request`] at log id (3, 1, 42).
const V1_NORMAL: &str = "0103012a01fd0068e5cf8b0100000a000264620174016b017601016d06737472696e670178fb881301000004676f6e6502010264620174016b0302000264620174016b017601016d06737472696e670178fb881304066f72646572730101610162027b7d070101000004676f6e65030663306666656504066f72646572730101610162027b7d0705066f72646572730a1406066f7264657273016702633108fb30750200000406066f7264657273026732026332010000010107066f726465727301670204050108066f72646572730167026331";
const V1_BLANK: &str = "0103012a00";
const V1_MEMBERSHIP: &str = "0103012a02010301020304010b3132372e302e302e313a31020b3132372e302e302e313a32030b3132372e302e302e313a33040b3132372e302e302e313a34";

pub fn sample_request() -> micro_state::Request {
    use micro_state::views::events::{Ack, Claim, Publish, Release, Retention, Start};
    use micro_state::{Command, Compare, Delete, MetaField, Put, Request, Txn};
    let s = |c: store::Cmd| Command::Store(c);
    let e = |c: ev::Cmd| Command::Events(c);
    let put = Put {
        db: "db".into(),
        table: "t".into(),
        key: "k".into(),
        value: b"v".to_vec(),
        metadata: [(
            "m".to_string(),
            MetaField {
                kind: "string".into(),
                value: "x".into(),
            },
        )]
        .into(),
        ttl_ms: 5000,
        lease: 0,
    };
    let del = Delete {
        db: String::new(),
        table: String::new(),
        key: "gone".into(),
    };
    let publish = Publish {
        topic: "orders".into(),
        metadata: [("a".to_string(), "b".to_string())].into(),
        payload: b"{}".to_vec(),
        timestamp_ms: 7,
    };
    Request {
        time_ms: 1_700_000_000_000,
        cmds: vec![
            s(store::Cmd::Put(put.clone())),
            s(store::Cmd::Delete(del.clone())),
            Command::Txn(Txn {
                compare: vec![Compare {
                    db: "db".into(),
                    table: "t".into(),
                    key: "k".into(),
                    mod_revision: 3,
                }],
                success: vec![
                    s(store::Cmd::Put(put)),
                    e(ev::Cmd::Publish(publish.clone())),
                ],
                failure: vec![s(store::Cmd::Delete(del))],
            }),
            Command::Meta(meta::Cmd::SetClusterId("c0ffee".into())),
            e(ev::Cmd::Publish(publish)),
            e(ev::Cmd::SetRetention(Retention {
                topic: "orders".into(),
                max_events: 10,
                max_age_ms: 20,
            })),
            e(ev::Cmd::Claim(Claim {
                topic: "orders".into(),
                group: "g".into(),
                consumer: "c1".into(),
                max: 8,
                ack_wait_ms: 30_000,
                retry_limit: 2,
                auto_ack: false,
                start: Start::Sequence(4),
            })),
            e(ev::Cmd::Claim(Claim {
                topic: "orders".into(),
                group: "g2".into(),
                consumer: "c2".into(),
                max: 1,
                ack_wait_ms: 0,
                retry_limit: 0,
                auto_ack: true,
                start: Start::End,
            })),
            e(ev::Cmd::Ack(Ack {
                topic: "orders".into(),
                group: "g".into(),
                seqs: vec![4, 5],
                success: true,
            })),
            e(ev::Cmd::Release(Release {
                topic: "orders".into(),
                group: "g".into(),
                consumer: "c1".into(),
            })),
        ],
    }
}

fn log_id() -> micro_cluster::LogId {
    micro_cluster::LogId::new(
        micro_cluster::LeaderId {
            term: 3,
            node_id: 1,
        },
        42,
    )
}

fn entries() -> Vec<micro_cluster::Entry> {
    let normal = micro_cluster::Entry {
        log_id: log_id(),
        payload: openraft::EntryPayload::Normal(sample_request()),
    };
    let blank = micro_cluster::Entry {
        log_id: log_id(),
        payload: openraft::EntryPayload::Blank,
    };
    let membership = micro_cluster::Entry {
        log_id: log_id(),
        payload: openraft::EntryPayload::Membership(
            openraft::Membership::new(
                vec![[1u64, 2, 3].into()],
                (1u64..=4)
                    .map(|i| (i, openraft::BasicNode::new(format!("127.0.0.1:{i}"))))
                    .collect::<std::collections::BTreeMap<_, _>>(),
            )
            .unwrap(),
        ),
    };
    vec![normal, blank, membership]
}

#[test]
fn release_1_entries_decode_to_the_same_commands() {
    for (bytes, want) in [V1_NORMAL, V1_BLANK, V1_MEMBERSHIP].iter().zip(entries()) {
        let got = decode_entry_bytes(&unhex(bytes)).unwrap();
        assert_eq!(format!("{got:?}"), format!("{want:?}"));
    }
}

/// Version 2 of the same entries, as this release writes them.
const V2_NORMAL: &str = "0203012a01fd0068e5cf8b0100000a00000264620174016b017601016d06737472696e670178fb8813000001000004676f6e6504010264620174016b030200000264620174016b017601016d06737472696e670178fb8813000100066f72646572730101610162027b7d07010001000004676f6e650300066330666665650100066f72646572730101610162027b7d070101066f72646572730a140102066f7264657273016702633108fb3075020000040102066f726465727302673202633201000001010103066f72646572730167020405010104066f72646572730167026331";
const V2_BLANK: &str = "0203012a00";
const V2_MEMBERSHIP: &str = "0203012a02010301020304010b3132372e302e302e313a31020b3132372e302e302e313a32030b3132372e302e302e313a33040b3132372e302e302e313a34";

#[test]
fn version_2_entries_have_pinned_bytes() {
    for (want, e) in [V2_NORMAL, V2_BLANK, V2_MEMBERSHIP].iter().zip(entries()) {
        let bytes = codec::encode_as(micro_state::command::ENTRY_VERSION, &e);
        assert_eq!(&hex(&bytes), want, "{e:?}");
        let back = decode_entry_bytes(&bytes).unwrap();
        assert_eq!(format!("{back:?}"), format!("{e:?}"));
    }
}

#[test]
fn an_unknown_entry_version_is_refused() {
    let mut b = unhex(V1_BLANK);
    b[0] = 9;
    let err = decode_entry_bytes(&b).unwrap_err().to_string();
    assert!(err.contains("unsupported format version 9"), "{err}");
}

/// The commands of the views added with the view kernel (leases, compaction, registry,
/// config), one of each kind, in one entry.
fn kernel_request() -> micro_state::Request {
    use micro_state::views::{config, lease, registry};
    use micro_state::Command;
    micro_state::Request {
        time_ms: 1_800_000_000_000,
        cmds: vec![
            Command::Lease(lease::Cmd::Grant {
                id: 7,
                ttl_ms: 3000,
            }),
            Command::Lease(lease::Cmd::KeepAlive { id: 7 }),
            Command::Lease(lease::Cmd::Revoke { id: 7 }),
            Command::Store(store::Cmd::Put(micro_state::Put {
                key: "k".into(),
                lease: 7,
                ..Default::default()
            })),
            Command::Meta(meta::Cmd::Compact { revision: 9 }),
            Command::Registry(registry::Cmd::Register(registry::Register {
                domain: "micro".into(),
                name: "greeter".into(),
                version: "v1".into(),
                metadata: [("a".to_string(), "b".to_string())].into(),
                endpoints: vec![vec![0x0a, 0x01, 0x41]],
                nodes: [(
                    "n1".to_string(),
                    registry::Node {
                        address: "127.0.0.1:1".into(),
                        port: 1,
                        metadata: Default::default(),
                        lease: 0,
                    },
                )]
                .into(),
                ttl_ms: 90_000,
            })),
            Command::Registry(registry::Cmd::Deregister {
                domain: String::new(),
                name: "greeter".into(),
                version: "v1".into(),
                nodes: vec!["n1".into()],
            }),
            Command::Config(config::Cmd::Set {
                namespace: "app".into(),
                path: vec!["a".into()],
                leaves: vec![config::NewLeaf {
                    path: vec!["b".into()],
                    json: "1".into(),
                    secret: false,
                }],
                if_revision: Some(0),
            }),
            Command::Config(config::Cmd::Delete {
                namespace: "app".into(),
                path: vec!["a".into()],
            }),
            Command::Config(config::Cmd::InitKey { key: vec![1; 32] }),
        ],
    }
}

const V2_KERNEL: &str = "0203012a01fd00505c18a30100000a020007fbb80b02010702020700000000016b000000070301090500056d6963726f0767726565746572027631010161016201030a014101026e310b3132372e302e302e313a31020000fc905f0100050100076772656574657202763101026e310600036170700101610101016201310001000601036170700101610602200101010101010101010101010101010101010101010101010101010101010101";

/// Checks that an entry of `request` encodes to exactly `expected` (hex) and decodes back.
fn assert_pinned(request: micro_state::Request, expected: &str) {
    let e = micro_cluster::Entry {
        log_id: log_id(),
        payload: openraft::EntryPayload::Normal(request),
    };
    let bytes = codec::encode_as(micro_state::command::ENTRY_VERSION, &e);
    assert_eq!(hex(&bytes), expected);
    let back = decode_entry_bytes(&bytes).unwrap();
    assert_eq!(format!("{back:?}"), format!("{e:?}"));
}

/// One command in an entry of a fixed time.
fn one(cmd: micro_state::Command) -> micro_state::Request {
    micro_state::Request {
        time_ms: 1_800_000_000_000,
        cmds: vec![cmd],
    }
}

#[test]
fn the_kernel_views_commands_have_pinned_bytes() {
    assert_pinned(kernel_request(), V2_KERNEL);
}

/// A lease command on behalf of a namespace (appended to `lease::Cmd` with auth's
/// namespaces).
const V2_LEASE_IN: &str = "0203012a01fd00505c18a3010000010203067465616d2d610007fbb80b";

#[test]
fn a_namespaced_lease_command_has_pinned_bytes() {
    use micro_state::views::lease;
    let cmd = lease::Cmd::In {
        namespace: "team-a".into(),
        cmd: Box::new(lease::Cmd::Grant {
            id: 7,
            ttl_ms: 3000,
        }),
    };
    assert_pinned(one(micro_state::Command::Lease(cmd)), V2_LEASE_IN);
}

/// An auth refresh token that prunes the account's expired ones (appended to `auth::Cmd`).
const V2_REFRESH_PRUNED: &str = "0203012a01fd00505c18a301000001090901610131040707070709";

#[test]
fn a_pruning_refresh_command_has_pinned_bytes() {
    use micro_state::views::auth;
    let cmd = auth::Cmd::AddRefreshPruned {
        namespace: "a".into(),
        id: "1".into(),
        digest: vec![7; 4],
        expires_ms: 9,
    };
    assert_pinned(one(micro_state::Command::Auth(cmd)), V2_REFRESH_PRUNED);
}

/// The runtime view's commands (appended to `Command` with `micro run`).
const V2_RUNTIME: &str = "0203012a01fd00505c18a3010000050a00056d6963726f01670131022f730000000103413d3100000002000972756e74696d652d670972756e74696d652d670773657276696365056d6963726f0107736572766963650001680001730a01056d6963726f016703000a03056d6963726f016702030102030a04056d6963726f01670102010703000665786974203104626f6f6d000a02056d6963726f0167";

#[test]
fn the_runtime_commands_have_pinned_bytes() {
    use micro_state::views::{auth, runtime as rt};
    let spec = rt::Spec {
        namespace: "micro".into(),
        name: "g".into(),
        version: "1".into(),
        source: "/s".into(),
        env: vec!["A=1".into()],
        instances: 2,
        ..Default::default()
    };
    let account = auth::Account {
        id: "runtime-g".into(),
        name: "runtime-g".into(),
        kind: "service".into(),
        issuer: "micro".into(),
        scopes: vec!["service".into()],
        secret_hash: "h".into(),
        ..Default::default()
    };
    let report = rt::Report {
        namespace: "micro".into(),
        name: "g".into(),
        instance: 1,
        node: 2,
        generation: 1,
        status: rt::Status::Error,
        restarts: 3,
        error: "exit 1".into(),
        output: "boom".into(),
        ..Default::default()
    };
    let cmds = vec![
        rt::Cmd::Create(Box::new(rt::Create {
            spec,
            account,
            secret: "s".into(),
        })),
        rt::Cmd::Update {
            namespace: "micro".into(),
            name: "g".into(),
            instances: 3,
            entrypoint: String::new(),
        },
        rt::Cmd::Place {
            namespace: "micro".into(),
            name: "g".into(),
            generation: 2,
            nodes: vec![1, 2, 3],
        },
        rt::Cmd::Report(report),
        rt::Cmd::Delete {
            namespace: "micro".into(),
            name: "g".into(),
        },
    ];
    let request = micro_state::Request {
        time_ms: 1_800_000_000_000,
        cmds: cmds
            .into_iter()
            .map(micro_state::Command::Runtime)
            .collect(),
    };
    assert_pinned(request, V2_RUNTIME);
}
