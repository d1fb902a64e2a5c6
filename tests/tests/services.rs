//! Every public service the protos declare is served, over gRPC and through the HTTP gateway:
//! a building block whose service was left out of the server or the gateway's package list
//! fails here (the gateway answers 404/501 for it).

use std::time::Duration;

use micro_tests::TestCluster;
use prost_reflect::DescriptorPool;

/// `ReadAll` → `read-all`, as the gateway's paths spell endpoints.
fn kebab(name: &str) -> String {
    let mut out = String::new();
    for (i, ch) in name.chars().enumerate() {
        if ch.is_ascii_uppercase() && i > 0 {
            out.push('-');
        }
        out.push(ch.to_ascii_lowercase());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_public_method_is_served_over_http_and_grpc() -> anyhow::Result<()> {
    let c = TestCluster::start(1).await?;
    let pool = DescriptorPool::decode(micro_proto::FILE_DESCRIPTOR_SET)?;
    // As the admin: without a token every path would be a 401, routed or not.
    let http = c.http().await?;
    let mut checked = 0;
    for svc in pool.services() {
        let package = svc.package_name().to_string();
        if package == "raft" {
            continue;
        }
        assert!(
            micro_proto::PUBLIC_PACKAGES.contains(&package.as_str()),
            "package {package} has services but is not in micro_proto::PUBLIC_PACKAGES"
        );
        for m in svc.methods() {
            let path = format!(
                "http://{}/{package}/{}/{}",
                c.spec(1).http,
                kebab(svc.name()),
                kebab(m.name())
            );
            match http
                .post(&path)
                .timeout(Duration::from_secs(3))
                .body("{}")
                .send()
                .await
            {
                Ok(resp) => {
                    let code = resp.status().as_u16();
                    let body = resp.text().await.unwrap_or_default();
                    // 501: the gRPC server lacks the service; the gateway's own refusals name
                    // the service or endpoint it could not find. (A 404 from the method itself,
                    // e.g. "lease 0 not found", is an answer.)
                    let unrouted = code == 501
                        || body.contains(&format!("service {package} not found"))
                        || body.contains("has no endpoint");
                    assert!(
                        !unrouted,
                        "{}.{} ({path}) is not served: {code} {body}",
                        svc.full_name(),
                        m.name()
                    );
                }
                // A stream that keeps going (a subscription) is served.
                Err(e) if e.is_timeout() => {}
                Err(e) => anyhow::bail!("{path}: {e}"),
            }
            checked += 1;
        }
    }
    assert!(checked >= 25, "only {checked} methods found");
    Ok(())
}
