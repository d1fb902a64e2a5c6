//! The web dashboard in a real browser: headless Chromium (Debian's `chromium` and
//! `chromium-driver`, installed by scripts/deps), driven over WebDriver against a live 3-node
//! cluster. Pages render real data (a key written with the CLI shows in the store browser, an
//! event's topic in the streams page), and a killed node shows as down within 5 s on a page
//! left open. Screenshots go to `target/test-artifacts/dashboard/`.

use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use micro_tests::{eventually, free_port, TestCluster};
use serde_json::{json, Value};

const LONG: Duration = Duration::from_secs(30);

/// A chromedriver process and one headless Chromium session it drives.
struct Browser {
    driver: Child,
    base: String,
    session: String,
    http: reqwest::Client,
}

impl Browser {
    async fn start(profile: &std::path::Path) -> anyhow::Result<Browser> {
        let port = free_port();
        // Its own process group, so that dropping the Browser (a failed test) takes Chromium
        // down with chromedriver instead of leaving it running, orphaned.
        let driver = Command::new("chromedriver")
            .process_group(0)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| anyhow::anyhow!("chromedriver: {e} (scripts/deps installs it)"))?;
        let base = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::new();
        let mut b = Browser {
            driver,
            base,
            session: String::new(),
            http,
        };
        eventually("chromedriver ready", LONG, || async {
            let r = b.http.get(format!("{}/status", b.base)).send().await?;
            let v: Value = r.json().await?;
            Ok(v["value"]["ready"].as_bool().filter(|r| *r))
        })
        .await?;
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": "/usr/bin/chromium",
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--disable-background-networking", "--disable-component-update",
                    "--disable-sync", "--no-first-run", "--window-size=1280,860",
                    format!("--user-data-dir={}", profile.display()),
                ]
            }
        }}});
        let v = b.call("POST", "/session", caps).await?;
        b.session = v["sessionId"]
            .as_str()
            .ok_or_else(|| anyhow::anyhow!("no session: {v}"))?
            .to_string();
        Ok(b)
    }

    async fn call(&self, method: &str, path: &str, body: Value) -> anyhow::Result<Value> {
        let url = format!("{}{path}", self.base);
        let req = match method {
            "GET" => self.http.get(url),
            "DELETE" => self.http.delete(url),
            _ => self.http.post(url).json(&body),
        };
        let v: Value = req.send().await?.json().await?;
        if let Some(e) = v["value"]["error"].as_str() {
            anyhow::bail!("webdriver {path}: {e}: {}", v["value"]["message"]);
        }
        Ok(v["value"].clone())
    }

    async fn go(&self, url: &str) -> anyhow::Result<()> {
        let path = format!("/session/{}/url", self.session);
        self.call("POST", &path, json!({ "url": url })).await?;
        Ok(())
    }

    /// Runs `script` (a function body) in the page and returns what it returns.
    async fn eval(&self, script: &str) -> anyhow::Result<Value> {
        let path = format!("/session/{}/execute/sync", self.session);
        self.call("POST", &path, json!({ "script": script, "args": [] }))
            .await
    }

    /// Waits until `script` returns a truthy value.
    async fn until(&self, what: &str, timeout: Duration, script: &str) -> anyhow::Result<Value> {
        eventually(what, timeout, || async {
            let v = self.eval(script).await?;
            Ok(match &v {
                Value::Null | Value::Bool(false) => None,
                Value::String(s) if s.is_empty() => None,
                _ => Some(v),
            })
        })
        .await
    }

    async fn screenshot(&self, to: &std::path::Path) -> anyhow::Result<()> {
        let path = format!("/session/{}/screenshot", self.session);
        let v = self.call("GET", &path, Value::Null).await?;
        let png = base64::engine::general_purpose::STANDARD
            .decode(v.as_str().ok_or_else(|| anyhow::anyhow!("no screenshot"))?)?;
        std::fs::write(to, png)?;
        Ok(())
    }
}

impl Browser {
    /// Ends the session (chromedriver quits Chromium and its helpers cleanly).
    async fn quit(self) -> anyhow::Result<()> {
        let path = format!("/session/{}", self.session);
        self.call("DELETE", &path, Value::Null).await?;
        Ok(())
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Whatever is left of the group: chromedriver, and Chromium if the session was not
        // ended (a failed test).
        // `--` is not optional: procps-ng 4.0.2's kill reads `kill -KILL -12345` as
        // kill(-1, SIGKILL), every process the user may signal.
        let _ = Command::new("kill")
            .args(["-s", "KILL", "--", &format!("-{}", self.driver.id())])
            .status();
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

fn artifacts() -> anyhow::Result<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/test-artifacts/dashboard");
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_live_cluster_store_and_streams_in_chromium() -> anyhow::Result<()> {
    let mut c = TestCluster::start(3).await?;
    c.wait_leader(LONG).await?;
    let (ok, out, err) = c.cli(1, &["store", "write", "dash-key", "hello from the CLI"]);
    assert!(ok, "{out} {err}");
    let admin = c.client(1).await?;
    admin
        .events()
        .publish("orders", b"first order".to_vec(), Default::default())
        .await?;
    let profile = tempfile::tempdir()?;
    let shots = artifacts()?;
    let b = Browser::start(profile.path()).await?;
    let site = format!("http://{}", c.spec(1).http);

    // Without a token: the sign-in form, no data.
    b.go(&format!("{site}/")).await?;
    b.until(
        "the sign-in form",
        LONG,
        "return document.querySelector('#login-form') !== null",
    )
    .await?;

    // `micro dashboard` prints the address with a token, which becomes the session; the
    // cluster page lists the members.
    let (ok, url, err) = c.cli(1, &["dashboard"]);
    assert!(ok, "{err}");
    let url = url.trim();
    assert!(
        url.starts_with(&format!("{site}/#/cluster?token=")),
        "{url}"
    );
    b.go(url).await?;
    b.until(
        "three members up",
        LONG,
        "return document.querySelectorAll('tr[data-state=\"up\"]').length === 3",
    )
    .await?;
    let address = b.eval("return location.href").await?;
    assert!(
        !address.as_str().unwrap_or("").contains("token="),
        "the token stays out of the address bar: {address}"
    );
    b.screenshot(&shots.join("cluster.png")).await?;

    // Store browser: the CLI's key, and its record.
    b.go(&format!("{site}/#/store")).await?;
    b.until(
        "the CLI's key listed",
        LONG,
        "return document.querySelector('tr[data-key=\"dash-key\"]') !== null",
    )
    .await?;
    b.eval("document.querySelector('tr[data-key=\"dash-key\"]').click(); return true")
        .await?;
    let value = b
        .until(
            "the record shown",
            LONG,
            "const v = document.querySelector('#value'); return v && v.textContent",
        )
        .await?;
    assert_eq!(value, "hello from the CLI");
    b.screenshot(&shots.join("store.png")).await?;

    // Streams: the topic with its group's lag, and a live tail that shows an event published
    // after it started.
    let mut billing = admin
        .events()
        .consume(micro::proto::events::ConsumeRequest {
            topic: "orders".into(),
            group: "billing".into(),
            from_start: true,
            stop_at_end: true,
            ..Default::default()
        })
        .await?;
    while billing.next().await?.is_some() {}
    b.go(&format!("{site}/#/events")).await?;
    b.until(
        "the topic listed with its group",
        LONG,
        "const t = document.querySelector('tr[data-topic=\"orders\"]'); return t && t.textContent.includes('billing')",
    )
    .await?;
    b.eval("document.querySelector('tr[data-topic=\"orders\"]').click(); return true")
        .await?;
    // The tail follows from "now": publish until one shows (the first may precede the
    // subscription, which the page cannot tell us about).
    eventually("the live tail shows a new event", LONG, || async {
        admin
            .events()
            .publish("orders", b"live order".to_vec(), Default::default())
            .await?;
        let shown = b
            .eval("return document.querySelector('#tail').textContent.includes('live order')")
            .await?;
        Ok(shown.as_bool().filter(|s| *s))
    })
    .await?;
    b.screenshot(&shots.join("events.png")).await?;

    // The other pages render without an error.
    for page in ["registry", "config", "locks", "runtime", "auth"] {
        b.go(&format!("{site}/#/{page}")).await?;
        b.until(
            &format!("the {page} page"),
            LONG,
            &format!("return document.querySelector('#main').dataset.page === '{page}' && document.querySelectorAll('#main .card').length > 0"),
        )
        .await?;
        let error = b
            .eval("const e = document.querySelector('#main .error'); return e && e.textContent")
            .await?;
        assert!(error.is_null(), "{page}: {error}");
    }

    // A page left open on the cluster shows a killed node as down within 5 s.
    b.go(&format!("{site}/#/cluster")).await?;
    b.until(
        "three members up",
        LONG,
        "return document.querySelectorAll('tr[data-state=\"up\"]').length === 3",
    )
    .await?;
    c.kill(3);
    let killed = Instant::now();
    b.until(
        "node 3 shown down",
        Duration::from_secs(5),
        "return document.querySelector('tr[data-node=\"3\"][data-state=\"down\"]') !== null",
    )
    .await?;
    eprintln!(
        "the dashboard showed node 3 down {:.2} s after the kill",
        killed.elapsed().as_secs_f64()
    );
    b.screenshot(&shots.join("cluster-node-down.png")).await?;
    b.quit().await
}
