//! `micro events`: publish, replay, consume in groups, retention.

use super::*;

#[derive(Subcommand)]
pub(super) enum EventsCmd {
    /// Publish an event
    Publish {
        topic: String,
        data: String,
        /// Metadata as key=value (repeatable)
        #[arg(long = "metadata", short = 'm', value_parser = parse_kv)]
        metadata: Vec<(String, String)>,
    },
    /// Print events of a topic: the backlog from a position, then (with --follow) live ones
    Consume {
        topic: String,
        /// Start at this sequence
        #[arg(long, conflicts_with_all = ["since", "from_start"])]
        offset: Option<u64>,
        /// Start at events published this long ago, e.g. 10m
        #[arg(long, value_parser = humantime::parse_duration, conflicts_with = "from_start")]
        since: Option<Duration>,
        /// Start at the first retained event
        #[arg(long)]
        from_start: bool,
        /// Consume as a member of this group (events are shared, acked, resumable)
        #[arg(long)]
        group: Option<String>,
        /// Stop after this many events
        #[arg(long, default_value_t = 0)]
        limit: u64,
        /// Keep following new events (default: stop once caught up)
        #[arg(long)]
        follow: bool,
        /// Fail if the start was trimmed by retention (default: start at the first retained)
        #[arg(long)]
        strict: bool,
    },
    /// List topics with their retained range
    Topics,
    /// Set a topic's retention
    Retention {
        topic: String,
        /// Keep at most this many events (0: unlimited)
        #[arg(long, default_value_t = 0)]
        max_events: u64,
        /// Keep none older than this, e.g. 7d (default: unlimited)
        #[arg(long, value_parser = humantime::parse_duration)]
        max_age: Option<Duration>,
    },
}

fn event_json(e: &micro::events::Event) -> Value {
    let mut v = json!({
        "id": e.id,
        "topic": e.topic,
        "sequence": e.sequence,
        "timestamp": e.timestamp,
        "metadata": e.metadata,
    });
    put_bytes(&mut v, "payload", &e.payload);
    v
}

pub(super) async fn events(
    server: &Target,
    out: Output,
    cmd: EventsCmd,
) -> anyhow::Result<ExitCode> {
    let client = server.connect().await?;
    let events = client.events();
    match cmd {
        EventsCmd::Publish {
            topic,
            data,
            metadata,
        } => {
            let seq = events
                .publish(&topic, data.into_bytes(), metadata.into_iter().collect())
                .await?;
            match out {
                Output::Json => print_json(
                    &json!({"topic": topic, "sequence": seq, "id": format!("{topic}/{seq}")}),
                ),
                Output::Table => println!("published {topic}/{seq}"),
            }
        }
        EventsCmd::Consume {
            topic,
            offset,
            since,
            from_start,
            group,
            limit,
            follow,
            strict,
        } => {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default();
            let req = micro::events::ConsumeRequest {
                group: group.clone().unwrap_or_default(),
                topic: topic.clone(),
                offset: since.map_or(0, |d| now.saturating_sub(d).as_secs().max(1) as i64),
                from_sequence: offset.unwrap_or(0),
                from_start,
                strict,
                stop_at_end: !follow,
                limit,
                ..Default::default()
            };
            let mut c = events.consume(req).await?;
            if let Some(first) = c.trimmed_to {
                eprintln!("note: the requested start was trimmed by retention; starting at sequence {first}");
            }
            while let Some(e) = c.next().await? {
                match out {
                    Output::Json => println!("{}", event_json(&e)),
                    Output::Table => println!(
                        "{}\t{}\t{}",
                        e.sequence,
                        e.timestamp,
                        String::from_utf8_lossy(&e.payload)
                    ),
                }
                if let Some(g) = &group {
                    events.ack(g, &e.id, true).await?;
                }
            }
        }
        EventsCmd::Topics => {
            let topics = events.topics().await?;
            match out {
                Output::Json => print_json(&json!(topics.iter().map(|t| json!({
                    "name": t.name, "first_sequence": t.first_sequence, "last_sequence": t.last_sequence,
                    "max_events": t.max_events, "max_age_ms": t.max_age,
                })).collect::<Vec<_>>())),
                Output::Table => {
                    let mut t = table(&["topic", "first", "last", "max events", "max age"]);
                    for x in &topics {
                        let age = if x.max_age == 0 { "-".to_string() } else { humantime::format_duration(Duration::from_millis(x.max_age)).to_string() };
                        t.add_row(vec![x.name.clone(), x.first_sequence.to_string(), x.last_sequence.to_string(), x.max_events.to_string(), age]);
                    }
                    println!("{t}");
                }
            }
        }
        EventsCmd::Retention {
            topic,
            max_events,
            max_age,
        } => {
            events
                .set_retention(
                    &topic,
                    max_events,
                    max_age.map_or(0, |d| d.as_millis() as u64),
                )
                .await?;
            if out == Output::Table {
                println!("retention of {topic} set");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
