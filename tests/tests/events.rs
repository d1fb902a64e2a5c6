//! Event streams on a real 3-node cluster: replay from any position, consumer groups with
//! acks that survive reconnects, the transactional outbox, retention.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use micro::events::ConsumeRequest;
use micro::proto::events::PublishRequest;
use micro::proto::store::{txn_op, Compare, Record, TxnOp, TxnRequest, WriteRequest};
use micro_tests::{RawCodec, TestCluster};

const LONG: Duration = Duration::from_secs(30);

async fn publish_n(c: &TestCluster, id: u64, topic: &str, n: u64) -> anyhow::Result<()> {
    let events = c.client(id).await?.events();
    let all: Vec<u64> = (1..=n).collect();
    // Concurrent publishes are ordered by the log, not by the caller: publish in waves and
    // check the result by payload set, then by sequence density.
    for chunk in all.chunks(64) {
        let sends = chunk.iter().map(|i| {
            let e = events.clone();
            async move {
                e.publish(topic, format!("e{i}").into_bytes(), HashMap::new())
                    .await
            }
        });
        for r in futures::future::join_all(sends).await {
            r?;
        }
    }
    Ok(())
}

async fn consume_all(
    c: &TestCluster,
    id: u64,
    req: ConsumeRequest,
) -> anyhow::Result<Vec<micro::events::Event>> {
    let mut consumer = c.client(id).await?.events().consume(req).await?;
    let mut out = Vec::new();
    while let Some(e) = consumer.next().await? {
        out.push(e);
    }
    Ok(out)
}

fn replay_from(topic: &str, seq: u64) -> ConsumeRequest {
    ConsumeRequest {
        topic: topic.into(),
        from_sequence: seq,
        stop_at_end: true,
        ..Default::default()
    }
}

fn seqs(events: &[micro::events::Event]) -> Vec<u64> {
    events.iter().map(|e| e.sequence).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_from_an_offset_on_every_node_and_after_restarts() -> anyhow::Result<()> {
    let mut c = TestCluster::start(3).await?;
    publish_n(&c, 2, "orders", 10_000).await?;
    let check = |events: Vec<micro::events::Event>| {
        assert_eq!(seqs(&events), (5000..=10_000).collect::<Vec<_>>());
        assert!(events
            .iter()
            .all(|e| e.id == format!("orders/{}", e.sequence)));
        let payloads: BTreeSet<_> = events.iter().map(|e| e.payload.clone()).collect();
        assert_eq!(payloads.len(), 5001, "no duplicates");
    };
    for id in 1..=3 {
        check(consume_all(&c, id, replay_from("orders", 5000)).await?);
    }
    // events.Store/Read without a limit returns Micro v3's default of 250.
    let read: serde_json::Value = c
        .http()
        .await?
        .post(format!("http://{}/events/read", c.spec(2).http))
        .json(&serde_json::json!({"topic": "orders", "offset": 10}))
        .send()
        .await?
        .json()
        .await?;
    let read: Vec<u64> = read["events"]
        .as_array()
        .unwrap_or_else(|| panic!("events: {read}"))
        .iter()
        .map(|e| e["sequence"].as_u64().unwrap())
        .collect();
    assert_eq!(read, (11..=260).collect::<Vec<_>>());
    let all = consume_all(&c, 1, replay_from("orders", 1)).await?;
    assert_eq!(seqs(&all), (1..=10_000).collect::<Vec<_>>());
    let published: BTreeSet<_> = (1..=10_000).map(|i| format!("e{i}").into_bytes()).collect();
    assert_eq!(
        all.into_iter().map(|e| e.payload).collect::<BTreeSet<_>>(),
        published
    );

    for id in 1..=3 {
        c.stop(id)?;
    }
    for id in 1..=3 {
        c.spawn(id)?;
    }
    c.wait_leader(LONG).await?;
    for id in 1..=3 {
        check(consume_all(&c, id, replay_from("orders", 5000)).await?);
    }
    // The CLI prints the same, one JSON object per line.
    let (ok, out, err) = c.cli(
        3,
        &[
            "events", "consume", "orders", "--offset", "9998", "-o", "json",
        ],
    );
    assert!(ok, "{err}");
    let lines: Vec<serde_json::Value> = out
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    assert_eq!(
        lines
            .iter()
            .map(|v| v["sequence"].as_u64().unwrap())
            .collect::<Vec<_>>(),
        vec![9998, 9999, 10_000]
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_resumes_at_the_first_unacked_event_on_another_node() -> anyhow::Result<()> {
    let c = TestCluster::start(3).await?;
    publish_n(&c, 1, "jobs", 10).await?;
    let group_req = |retry_limit: i64| ConsumeRequest {
        topic: "jobs".into(),
        group: "workers".into(),
        from_start: true,
        ack_wait: Duration::from_millis(800).as_nanos() as i64,
        retry_limit,
        ..Default::default()
    };

    // A consumer on node 1 takes the first events, acks 1..=5, then dies with 6.. unacked.
    let events1 = c.client(1).await?.events();
    let mut first = events1
        .consume(ConsumeRequest {
            limit: 8,
            ..group_req(3)
        })
        .await?;
    let mut got = Vec::new();
    while let Some(e) = first.next().await? {
        if e.sequence <= 5 {
            events1.ack("workers", &e.id, true).await?;
        }
        got.push(e.sequence);
    }
    assert_eq!(got, (1..=8).collect::<Vec<_>>());
    drop(first);

    // Reconnecting to another node, the group resumes at the first unacked event. This
    // consumer never acks: every ack_wait the events come back, until each has been delivered
    // retry_limit (3) times. 6..=8 were delivered once already, 9 and 10 were not.
    let events3 = c.client(3).await?.events();
    let mut second = events3.consume(group_req(3)).await?;
    let mut seen = Vec::new();
    // Exactly twelve deliveries, however long a loaded machine takes for them (waiting for a
    // quiet spell instead cut the count short when a redelivery came late).
    while seen.len() < 12 {
        match tokio::time::timeout(LONG, second.next()).await {
            Ok(next) => match next? {
                Some(e) => seen.push(e.sequence),
                None => break,
            },
            Err(_) => panic!("only {} of 12 deliveries: {seen:?}", seen.len()),
        }
    }
    assert_eq!(seen, vec![6, 7, 8, 9, 10, 6, 7, 8, 9, 10, 9, 10]);
    // And no thirteenth within two more ack_waits (an absence: it can only be missed on a slow
    // machine, not fail spuriously).
    if let Ok(extra) = tokio::time::timeout(Duration::from_millis(1600), second.next()).await {
        assert!(extra?.is_none(), "delivered past the retry limit");
    }
    drop(second);
    let after_limit = consume_all(
        &c,
        2,
        ConsumeRequest {
            stop_at_end: true,
            ..group_req(3)
        },
    )
    .await?;
    assert!(
        after_limit.is_empty(),
        "delivered past the retry limit: {:?}",
        seqs(&after_limit)
    );
    Ok(())
}

/// A manual-ack consumer takes an event and goes away without acking; an auto-ack consumer
/// of the same group takes it over. It gets it once, and the log grows by a few entries: the
/// auto-ack redelivery used to stay due, so every claim redelivered it (one entry each,
/// without end, and a `stop_at_end` consumer never finished).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abandoned_event_goes_to_an_auto_ack_consumer_once() -> anyhow::Result<()> {
    let c = TestCluster::start(3).await?;
    let leader = c.wait_leader(LONG).await?;
    let group = |auto_ack: bool| ConsumeRequest {
        topic: "abandoned".into(),
        group: "g".into(),
        from_start: true,
        auto_ack,
        ..Default::default()
    };
    let events = c.client(2).await?.events();
    events
        .publish("abandoned", b"job".to_vec(), HashMap::new())
        .await?;
    let before = c.applied(leader).await?;

    // Manual ack (default ack wait: 30 s). The client leaves with the event unacked; the
    // server notices and releases it to the group at once.
    let mut manual = events.consume(group(false)).await?;
    assert_eq!(manual.next().await?.map(|e| e.sequence), Some(1));
    drop(manual);
    let mut auto = c.client(3).await?.events().consume(group(true)).await?;
    let taken = tokio::time::timeout(LONG, auto.next())
        .await
        .map_err(|_| {
            anyhow::anyhow!("the abandoned event never reached the auto-ack consumer")
        })??;
    assert_eq!(taken.map(|e| e.sequence), Some(1));
    drop(auto);

    // Taking it acked it: the group has nothing left, and a consumer that stops at the end
    // finishes, empty.
    let rest = tokio::time::timeout(
        LONG,
        consume_all(
            &c,
            1,
            ConsumeRequest {
                stop_at_end: true,
                ..group(true)
            },
        ),
    )
    .await
    .map_err(|_| anyhow::anyhow!("a stop_at_end consumer of the group never finished"))??;
    assert!(rest.is_empty(), "delivered again: {:?}", seqs(&rest));
    // Claim, release, claim, and room for an election's blank entry on a loaded machine.
    let grew = c.applied(leader).await? - before;
    assert!(grew <= 10, "the log grew by {grew} entries");
    Ok(())
}

/// An ack wait below the minimum (100 ms) is raised to it: each redelivery is a log entry,
/// and a consumer that never acks must not make the cluster write them as fast as it can
/// claim (with `ack_wait: 1` ns the event was due again at once: redelivered by every claim).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tiny_ack_wait_is_raised_to_the_minimum() -> anyhow::Result<()> {
    let c = TestCluster::start(1).await?;
    let events = c.client(1).await?.events();
    events
        .publish("tiny", b"x".to_vec(), HashMap::new())
        .await?;
    let before = c.applied(1).await?;
    let started = std::time::Instant::now();
    let mut consumer = events
        .consume(ConsumeRequest {
            topic: "tiny".into(),
            group: "g".into(),
            from_start: true,
            ack_wait: 1,
            ..Default::default()
        })
        .await?;
    for _ in 0..5 {
        let e = tokio::time::timeout(LONG, consumer.next()).await??;
        assert_eq!(e.map(|e| e.sequence), Some(1));
    }
    // Four redeliveries, each at least 100 ms after the one before.
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(400),
        "5 deliveries in {took:?}"
    );
    drop(consumer);
    let grew = c.applied(1).await? - before;
    assert!(
        grew <= 10,
        "the log grew by {grew} entries for 5 deliveries"
    );
    Ok(())
}

/// A client written the way Micro v3's events client is: it opens `events.Stream/Consume`,
/// sends the `ConsumeRequest` (v3 fields only), keeps its side open and acks each event with
/// an `AckRequest {id, success}` on the same stream. The server used to wait for the client to
/// close its side before starting the consumer, so such a client never got an event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_micro_v3_client_acks_on_the_consume_stream() -> anyhow::Result<()> {
    use micro::proto::events::{AckRequest, Event};
    use prost::Message;
    let c = TestCluster::start(3).await?;
    publish_n(&c, 1, "v3", 3).await?;

    let channel = c.client(2).await?.channel();
    let (send, outgoing) = futures::channel::mpsc::unbounded::<bytes::Bytes>();
    let first = ConsumeRequest {
        topic: "v3".into(),
        group: "g".into(),
        offset: 1, // unix seconds: everything published since 1970
        auto_ack: false,
        ack_wait: Duration::from_secs(30).as_nanos() as i64,
        ..Default::default()
    };
    send.unbounded_send(first.encode_to_vec().into())?;
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await?;
    let mut incoming = tokio::time::timeout(
        LONG,
        grpc.streaming(
            tonic::Request::new(outgoing),
            "/events.Stream/Consume".parse()?,
            RawCodec,
        ),
    )
    .await
    .map_err(|_| anyhow::anyhow!("no answer while the client's side is open"))??
    .into_inner();
    let mut got = Vec::new();
    while got.len() < 3 {
        let raw = tokio::time::timeout(LONG, incoming.message())
            .await
            .map_err(|_| anyhow::anyhow!("only {} of 3 events", got.len()))??
            .expect("stream open");
        got.push(Event::decode(raw)?);
    }
    assert_eq!(seqs(&got), vec![1, 2, 3]);
    // Ack 1 and 3 on the stream (v3's AckRequest has no group), then nack 2: it comes back
    // on this stream at once. Acks are applied in the order sent, so once 2 is back, 1 and 3
    // are acked.
    for (id, success) in [("v3/1", true), ("v3/3", true), ("v3/2", false)] {
        let ack = AckRequest {
            id: id.into(),
            success,
            ..Default::default()
        };
        send.unbounded_send(ack.encode_to_vec().into())?;
    }
    let raw = tokio::time::timeout(LONG, incoming.message())
        .await
        .map_err(|_| anyhow::anyhow!("the nacked event was not redelivered"))??
        .expect("stream open");
    assert_eq!(Event::decode(raw)?.sequence, 2);
    // The client goes away with 2 unacked.
    drop(send);
    drop(incoming);

    // The group's next consumer gets only 2 (released when the v3 client left), and then
    // nothing: 1 and 3 were acked.
    let next = |limit: u64, stop_at_end: bool| ConsumeRequest {
        topic: "v3".into(),
        group: "g".into(),
        auto_ack: true,
        limit,
        stop_at_end,
        ..Default::default()
    };
    let mut after = c.client(3).await?.events().consume(next(1, false)).await?;
    let redelivered = tokio::time::timeout(LONG, after.next())
        .await
        .map_err(|_| anyhow::anyhow!("the unacked event never came back"))??;
    assert_eq!(redelivered.map(|e| e.sequence), Some(2));
    let rest = consume_all(&c, 1, next(0, true)).await?;
    assert!(
        rest.is_empty(),
        "acked on the stream, yet delivered again: {:?}",
        seqs(&rest)
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_group_consumers_split_the_stream_and_a_plain_consumer_sees_all() -> anyhow::Result<()>
{
    let c = TestCluster::start(3).await?;
    let req = |node_limit: u64| ConsumeRequest {
        topic: "split".into(),
        group: "g".into(),
        auto_ack: true,
        limit: node_limit,
        ..Default::default()
    };
    // Both consumers join before anything is published (a new group starts at the end).
    let mut a = c.client(1).await?.events().consume(req(0)).await?;
    let mut b = c.client(2).await?.events().consume(req(0)).await?;
    let mut plain = c
        .client(3)
        .await?
        .events()
        .consume(ConsumeRequest {
            topic: "split".into(),
            from_start: true,
            limit: 200,
            ..Default::default()
        })
        .await?;
    publish_n(&c, 3, "split", 200).await?;

    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    for (name, mut consumer) in [("a", a), ("b", b)] {
        let tx = tx.clone();
        tokio::spawn(async move {
            while let Ok(Some(e)) = consumer.next().await {
                if tx.send((name, e.sequence)).is_err() {
                    break;
                }
            }
        });
    }
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + LONG;
    while seen.len() < 200 {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match tokio::time::timeout(left, rx.recv()).await {
            Ok(Some(x)) => seen.push(x),
            _ => panic!("only {} of 200 events delivered to the group", seen.len()),
        }
    }
    let all: BTreeSet<u64> = seen.iter().map(|(_, s)| *s).collect();
    assert_eq!(all.len(), 200, "no event delivered twice");
    assert_eq!(all, (1..=200).collect());
    assert!(
        seen.iter().any(|(n, _)| *n == "a") && seen.iter().any(|(n, _)| *n == "b"),
        "both consumers got a share"
    );

    let mut everything = Vec::new();
    while let Some(e) = plain.next().await? {
        everything.push(e.sequence);
    }
    assert_eq!(everything, (1..=200).collect::<Vec<_>>());
    a = c.client(1).await?.events().consume(req(1)).await?;
    b = a; // nothing left to claim: a new consumer of the group waits rather than replaying
    assert!(tokio::time::timeout(Duration::from_millis(700), b.next())
        .await
        .is_err());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_txn_writes_and_publishes_all_or_nothing() -> anyhow::Result<()> {
    let c = TestCluster::start(3).await?;
    let client = c.client(2).await?;
    let txn = |mod_revision: u64| TxnRequest {
        compare: vec![Compare {
            key: "order-1".into(),
            mod_revision,
            ..Default::default()
        }],
        success: vec![
            TxnOp {
                op: Some(txn_op::Op::Write(WriteRequest {
                    record: Some(Record {
                        key: "order-1".into(),
                        value: b"placed".to_vec(),
                        ..Default::default()
                    }),
                    options: None,
                    fence: None,
                })),
            },
            TxnOp {
                op: Some(txn_op::Op::Publish(PublishRequest {
                    topic: "order-events".into(),
                    payload: b"order-1 placed".to_vec(),
                    ..Default::default()
                })),
            },
        ],
        failure: vec![],
        fence: None,
    };
    // The guard fails (the order does not exist at revision 42): neither happens.
    let r = client.store().txn(txn(42)).await?;
    assert!(!r.succeeded);
    assert!(client
        .store()
        .read("order-1")
        .await
        .unwrap_err()
        .is_not_found());
    assert!(client
        .events()
        .topics()
        .await?
        .iter()
        .all(|t| t.name != "order-events"));
    // The guard holds (absent): both happen, in one entry.
    let r = client.store().txn(txn(0)).await?;
    assert!(r.succeeded);
    assert_eq!(r.results[1].sequence, 1);
    let rec = c.client(3).await?.store().read("order-1").await?;
    assert_eq!(rec.mod_revision, r.revision);
    let events = consume_all(&c, 1, replay_from("order-events", 1)).await?;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].payload, b"order-1 placed");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_trims_and_a_trimmed_start_is_reported() -> anyhow::Result<()> {
    let c = TestCluster::start(3).await?;
    let events = c.client(1).await?.events();
    events.set_retention("logs", 100, 0).await?;
    publish_n(&c, 1, "logs", 250).await?;
    let topics = events.topics().await?;
    let t = topics.iter().find(|t| t.name == "logs").expect("topic");
    assert_eq!((t.first_sequence, t.last_sequence), (151, 250));

    let mut consumer = c
        .client(2)
        .await?
        .events()
        .consume(replay_from("logs", 10))
        .await?;
    assert_eq!(consumer.trimmed_to, Some(151));
    let mut got = Vec::new();
    while let Some(e) = consumer.next().await? {
        got.push(e.sequence);
    }
    assert_eq!(got, (151..=250).collect::<Vec<_>>());

    let strict = ConsumeRequest {
        strict: true,
        ..replay_from("logs", 10)
    };
    let err = c
        .client(3)
        .await?
        .events()
        .consume(strict)
        .await
        .err()
        .expect("strict start must fail");
    assert_eq!(err.code(), Some(tonic::Code::OutOfRange));
    assert!(err.to_string().contains("first retained is 151"), "{err}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_broker_fans_out_across_nodes_and_queues_share() -> anyhow::Result<()> {
    use micro::proto::broker::{Message, PublishRequest, SubscribeRequest};
    let c = TestCluster::start(3).await?;
    let sub = |id: u64, queue: &str| {
        let queue = queue.to_string();
        let c = &c;
        async move {
            let mut b = c.client(id).await?.broker();
            let s = b
                .subscribe(SubscribeRequest {
                    topic: "news".into(),
                    queue,
                })
                .await?;
            anyhow::Ok(s.into_inner())
        }
    };
    // Subscriptions are registered once the subscribe call has answered.
    let mut plain = sub(3, "").await?;
    let q2 = sub(2, "workers").await?;
    let q3 = sub(3, "workers").await?;
    let mut publisher = c.client(1).await?.broker();
    for i in 0..30 {
        let msg = Message {
            header: Default::default(),
            body: format!("m{i}").into_bytes(),
        };
        publisher
            .publish(PublishRequest {
                topic: "news".into(),
                message: Some(msg),
            })
            .await?;
    }
    let mut got = Vec::new();
    for _ in 0..30 {
        let m = tokio::time::timeout(LONG, plain.message())
            .await??
            .expect("message");
        got.push(String::from_utf8(m.body)?);
    }
    assert_eq!(
        got,
        (0..30).map(|i| format!("m{i}")).collect::<Vec<_>>(),
        "node 3 got node 1's messages in order"
    );

    // Each message went to exactly one queue subscriber, and both got some.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    for (name, mut s) in [(2u64, q2), (3, q3)] {
        let tx = tx.clone();
        tokio::spawn(async move {
            while let Ok(Some(m)) = s.message().await {
                let _ = tx.send((name, String::from_utf8_lossy(&m.body).into_owned()));
            }
        });
    }
    let mut shared = Vec::new();
    while shared.len() < 30 {
        let x = tokio::time::timeout(LONG, rx.recv())
            .await?
            .expect("queue message");
        shared.push(x);
    }
    let bodies: BTreeSet<_> = shared.iter().map(|(_, b)| b.clone()).collect();
    assert_eq!(
        bodies.len(),
        30,
        "no message delivered to two queue members"
    );
    assert!(
        shared.iter().any(|(n, _)| *n == 2) && shared.iter().any(|(n, _)| *n == 3),
        "both queue members got a share"
    );
    // And nothing more arrives: 30 messages, 30 queue deliveries.
    assert!(tokio::time::timeout(Duration::from_millis(300), rx.recv())
        .await
        .is_err());
    Ok(())
}

#[tokio::test]
async fn events_over_http_including_a_live_sse_stream() -> anyhow::Result<()> {
    let c = TestCluster::start(1).await?;
    let http = c.spec(1).http.clone();
    let client = c.http().await?;
    // Publish through the gateway (`/events/publish` resolves to events.Stream/Publish).
    for i in 1..=3 {
        let body = serde_json::json!({"topic": "web", "payload": base64_of(&format!("p{i}"))});
        let v: serde_json::Value = client
            .post(format!("http://{http}/events/publish"))
            .json(&body)
            .send()
            .await?
            .json()
            .await?;
        assert_eq!(v["sequence"], i, "{v}");
    }
    // The backlog as one JSON answer: every event, in order (merged into one message, as
    // store List's pages are, only the last event was left).
    let v: serde_json::Value = client
        .post(format!("http://{http}/events/consume"))
        .json(&serde_json::json!({"topic": "web", "from_sequence": 1, "stop_at_end": true}))
        .send()
        .await?
        .json()
        .await?;
    let got: Vec<_> = v
        .as_array()
        .unwrap_or_else(|| panic!("an array of events: {v}"))
        .iter()
        .map(|e| (e["sequence"].clone(), e["payload"].clone()))
        .collect();
    let want: Vec<_> = (1..=3)
        .map(|i| {
            (
                serde_json::json!(i),
                serde_json::json!(base64_of(&format!("p{i}"))),
            )
        })
        .collect();
    assert_eq!(got, want);
    // Store List still answers one object: its pages merge into one `keys` array.
    c.client(1).await?.store().write("k", b"v".to_vec()).await?;
    let v: serde_json::Value = client
        .post(format!("http://{http}/store/list"))
        .json(&serde_json::json!({}))
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(v, serde_json::json!({"keys": ["k"]}));
    // Live, as Server-Sent Events: the backlog first, then an event published afterwards.
    let mut resp = client
        .post(format!("http://{http}/events/consume"))
        .header("accept", "text/event-stream")
        .json(&serde_json::json!({"topic": "web", "from_sequence": 3}))
        .send()
        .await?;
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let mut text = String::new();
    let mut published_live = false;
    while text.matches("data:").count() < 2 {
        let chunk = tokio::time::timeout(LONG, resp.chunk())
            .await??
            .expect("stream open");
        text.push_str(&String::from_utf8_lossy(&chunk));
        if !published_live && text.contains("data:") {
            c.client(1)
                .await?
                .events()
                .publish("web", b"live".to_vec(), HashMap::new())
                .await?;
            published_live = true;
        }
    }
    let events: Vec<serde_json::Value> = text
        .lines()
        .filter_map(|l| l.strip_prefix("data:"))
        .map(|d| serde_json::from_str(d.trim()))
        .collect::<Result<_, _>>()?;
    assert_eq!(events[0]["sequence"], 3);
    assert_eq!(events[1]["sequence"], 4);
    assert_eq!(events[1]["payload"], base64_of("live"));
    Ok(())
}

fn base64_of(s: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(s)
}

/// A client that nacks every event the moment it arrives, on the consume stream: each nack
/// makes the event due again and each redelivery is a claim, so without a bound the server
/// would write two log entries per round trip for as long as the stream stays open. Each
/// stream may make the server write at most `Pace::RATE` claims (and as many ack entries) a
/// second after a burst of `Pace::BURST` (services/src/grpc/pace.rs): the client still gets
/// its redeliveries, at that pace, and the log grows by what the bound allows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nack_loop_on_one_stream_writes_at_a_bounded_rate() -> anyhow::Result<()> {
    use micro::proto::events::{AckRequest, Event};
    use prost::Message;
    // Mirrors micro_services::grpc::pace::Pace::{RATE, BURST}.
    const RATE: f64 = 50.0;
    const BURST: f64 = 20.0;
    let c = TestCluster::start(1).await?;
    publish_n(&c, 1, "nacks", 1).await?;
    let before = c.applied(1).await?;

    let channel = c.client(1).await?.channel();
    let (send, outgoing) = futures::channel::mpsc::unbounded::<bytes::Bytes>();
    let first = ConsumeRequest {
        topic: "nacks".into(),
        group: "g".into(),
        from_sequence: 1,
        ack_wait: Duration::from_secs(30).as_nanos() as i64,
        ..Default::default()
    };
    send.unbounded_send(first.encode_to_vec().into())?;
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await?;
    // The window starts before the stream opens, so every claim the server's pace allowed
    // since the stream's start falls in it.
    let started = tokio::time::Instant::now();
    let mut incoming = grpc
        .streaming(
            tonic::Request::new(outgoing),
            "/events.Stream/Consume".parse()?,
            RawCodec,
        )
        .await?
        .into_inner();
    let window = Duration::from_secs(3);
    let mut deliveries = 0u64;
    while started.elapsed() < window {
        let raw = tokio::time::timeout(LONG, incoming.message())
            .await
            .map_err(|_| anyhow::anyhow!("redeliveries stopped after {deliveries}"))??
            .expect("stream open");
        let e = Event::decode(raw)?;
        assert_eq!(e.sequence, 1);
        deliveries += 1;
        let nack = AckRequest {
            id: e.id,
            success: false,
            ..Default::default()
        };
        send.unbounded_send(nack.encode_to_vec().into())?;
    }
    let elapsed = started.elapsed().as_secs_f64();
    drop(send);
    drop(incoming);
    let allowed = BURST + RATE * elapsed + 1.0;
    assert!(
        deliveries as f64 <= allowed,
        "{deliveries} claims in {elapsed:.2} s: more than the {allowed:.0} the pace allows"
    );
    // The loop is paced, not stopped: the client keeps getting its redeliveries.
    assert!(
        deliveries >= 20,
        "only {deliveries} redeliveries in {elapsed:.2} s"
    );
    // Claims, nacks and the release at the end: two entries per round trip at most.
    let grew = c.applied(1).await? - before;
    assert!(
        grew as f64 <= 2.0 * allowed + 5.0,
        "the log grew by {grew} entries for {deliveries} deliveries in {elapsed:.2} s"
    );
    eprintln!("{deliveries} redeliveries, {grew} entries in {elapsed:.2} s");
    Ok(())
}
