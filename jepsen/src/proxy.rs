//! TCP proxies on the directed peer links: node i reaches node j only through the proxy of
//! link i→j, which passes traffic or drops it.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// What a link does with traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Pass,
    /// Reset existing connections; accept new ones and close them at once (like a refused
    /// connection: the dialer learns quickly).
    Close,
    /// Reset existing connections; accept new ones and never forward a byte (like lost
    /// packets: the dialer waits for its timeouts).
    Blackhole,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::Pass => "pass",
            Mode::Close => "close",
            Mode::Blackhole => "blackhole",
        }
    }
}

struct Link {
    port: u16,
    mode: watch::Sender<Mode>,
    task: JoinHandle<()>,
}

/// The proxies of every directed link `(from, to)` between nodes.
pub struct Net {
    links: BTreeMap<(u64, u64), Link>,
}

impl Net {
    /// Starts a proxy for every `(from, to, listen port, target)`.
    pub async fn start(links: Vec<(u64, u64, u16, SocketAddr)>) -> anyhow::Result<Net> {
        let mut out = BTreeMap::new();
        for (from, to, port, target) in links {
            let listener = TcpListener::bind(("127.0.0.1", port)).await?;
            let (tx, rx) = watch::channel(Mode::Pass);
            let task = tokio::spawn(serve(listener, target, rx));
            out.insert(
                (from, to),
                Link {
                    port,
                    mode: tx,
                    task,
                },
            );
        }
        Ok(Net { links: out })
    }

    /// The port node `from` dials to reach node `to`.
    pub fn port(&self, from: u64, to: u64) -> u16 {
        self.links[&(from, to)].port
    }

    pub fn set(&self, from: u64, to: u64, mode: Mode) {
        if let Some(l) = self.links.get(&(from, to)) {
            l.mode.send_replace(mode);
        }
    }

    pub fn mode(&self, from: u64, to: u64) -> Mode {
        self.links
            .get(&(from, to))
            .map_or(Mode::Pass, |l| *l.mode.borrow())
    }

    /// Drops both directions between every node of `a` and every node of `b`.
    pub fn cut(&self, a: &[u64], b: &[u64], mode: Mode) {
        for x in a {
            for y in b {
                if x != y {
                    self.set(*x, *y, mode);
                    self.set(*y, *x, mode);
                }
            }
        }
    }

    /// Every link passes again.
    pub fn heal(&self) {
        for l in self.links.values() {
            l.mode.send_replace(Mode::Pass);
        }
    }

    /// The links currently dropping traffic.
    pub fn dropped(&self) -> Vec<(u64, u64)> {
        self.links
            .iter()
            .filter(|(_, l)| *l.mode.borrow() != Mode::Pass)
            .map(|(k, _)| *k)
            .collect()
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for l in self.links.values() {
            l.task.abort();
        }
    }
}

async fn serve(listener: TcpListener, target: SocketAddr, mode: watch::Receiver<Mode>) {
    let mut conns = tokio::task::JoinSet::new();
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            // reap finished connections so the set does not grow
            Some(_) = conns.join_next(), if !conns.is_empty() => continue,
        };
        let Ok((inbound, _)) = accepted else {
            continue;
        };
        let mut rx = mode.clone();
        conns.spawn(async move {
            let m = *rx.borrow_and_update();
            match m {
                Mode::Close => drop(inbound),
                Mode::Blackhole => {
                    // hold the connection, forwarding nothing, until the link heals
                    let _ = rx.wait_for(|m| *m == Mode::Pass).await;
                    drop(inbound);
                }
                Mode::Pass => forward(inbound, target, rx).await,
            }
        });
    }
}

async fn forward(mut inbound: TcpStream, target: SocketAddr, mut rx: watch::Receiver<Mode>) {
    let Ok(mut outbound) = TcpStream::connect(target).await else {
        return;
    };
    let _ = inbound.set_nodelay(true);
    let _ = outbound.set_nodelay(true);
    tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
        _ = rx.wait_for(|m| *m != Mode::Pass) => {
            // the partition starts: both sides see their connection reset
            let _ = inbound.set_zero_linger();
            let _ = outbound.set_zero_linger();
        }
    }
}
