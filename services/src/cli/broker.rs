//! `micro broker`: ephemeral pub/sub.

use super::*;

#[derive(Subcommand)]
pub(super) enum BrokerCmd {
    /// Publish a message to every subscriber of TOPIC, on every node
    Publish {
        topic: String,
        data: String,
        /// Header as key=value (repeatable)
        #[arg(long = "header", short = 'H', value_parser = parse_kv)]
        header: Vec<(String, String)>,
    },
    /// Print messages published to TOPIC from now on
    Subscribe {
        topic: String,
        /// Share messages with other subscribers of this queue
        #[arg(long, default_value = "")]
        queue: String,
        /// Stop after this many messages
        #[arg(long, default_value_t = 0)]
        limit: u64,
    },
}

pub(super) async fn broker(
    server: &Target,
    out: Output,
    cmd: BrokerCmd,
) -> anyhow::Result<ExitCode> {
    use micro::proto::broker as pb;
    let mut client = server.connect().await?.broker();
    match cmd {
        BrokerCmd::Publish {
            topic,
            data,
            header,
        } => {
            let req = pb::PublishRequest {
                topic,
                message: Some(pb::Message {
                    header: header.into_iter().collect(),
                    body: data.into_bytes(),
                }),
            };
            client.publish(req).await.map_err(micro::Error::from)?;
        }
        BrokerCmd::Subscribe {
            topic,
            queue,
            limit,
        } => {
            let mut stream = client
                .subscribe(pb::SubscribeRequest { topic, queue })
                .await
                .map_err(micro::Error::from)?
                .into_inner();
            let mut n = 0;
            while let Some(m) = stream.message().await.map_err(micro::Error::from)? {
                match out {
                    Output::Json => println!(
                        "{}",
                        json!({"header": m.header, "body": String::from_utf8_lossy(&m.body)})
                    ),
                    Output::Table => println!("{}", String::from_utf8_lossy(&m.body)),
                }
                n += 1;
                if limit > 0 && n >= limit {
                    break;
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
