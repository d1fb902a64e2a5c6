//! Child processes that never outlive the bench, free ports, and /proc figures.
//!
//! Every server runs as a [`Proc`], which kills (SIGKILL) and reaps its child on drop. Drops run
//! on the normal path, on an error, on Ctrl-C/SIGTERM (main drops the run's future) and while
//! a panic unwinds; the panic hook of [`install_panic_hook`] additionally kills every live child
//! before unwinding starts. Where `setpriv` exists, children are started with
//! `--pdeathsig KILL`, so even a SIGKILLed bench takes its servers with it.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock};

use anyhow::Context;

static LIVE: Mutex<Vec<u32>> = Mutex::new(Vec::new());

/// On panic, SIGKILL every live child first (the unwinding drops then reap them).
pub fn install_panic_hook() {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        kill_all_live();
        previous(info);
    }));
}

fn kill_all_live() {
    let pids: Vec<u32> = LIVE.lock().map(|l| l.clone()).unwrap_or_default();
    for pid in pids {
        let _ = Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .stderr(Stdio::null())
            .status();
    }
}

/// A running child process, killed and reaped on drop.
pub struct Proc {
    child: Child,
    pub name: String,
    pub log: PathBuf,
}

impl Proc {
    /// Starts `program args...` with stdout and stderr appended to `log`.
    pub fn spawn(
        name: &str,
        program: &Path,
        args: &[String],
        envs: &[(&str, &str)],
        log: &Path,
    ) -> anyhow::Result<Proc> {
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("open {}", log.display()))?;
        let mut cmd = match setpriv() {
            Some(setpriv) => {
                let mut c = Command::new(setpriv);
                c.args(["--pdeathsig", "KILL", "--"]).arg(program);
                c
            }
            None => Command::new(program),
        };
        cmd.args(args)
            .envs(envs.iter().map(|(k, v)| (OsStr::new(k), OsStr::new(v))))
            .stdin(Stdio::null())
            .stdout(Stdio::from(out.try_clone()?))
            .stderr(Stdio::from(out));
        let child = cmd
            .spawn()
            .with_context(|| format!("start {name}: {}", program.display()))?;
        if let Ok(mut live) = LIVE.lock() {
            live.push(child.id());
        }
        Ok(Proc {
            child,
            name: name.to_string(),
            log: log.to_path_buf(),
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `Err` with the exit status and the log's tail if the process has exited.
    pub fn check_running(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait()? {
            anyhow::bail!(
                "{} exited with {status}; last lines of {}:\n{}",
                self.name,
                self.log.display(),
                self.log_tail(30)
            );
        }
        Ok(())
    }

    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let pid = self.child.id();
        if let Ok(mut live) = LIVE.lock() {
            live.retain(|p| *p != pid);
        }
    }
}

fn setpriv() -> Option<&'static Path> {
    static FOUND: OnceLock<Option<PathBuf>> = OnceLock::new();
    FOUND.get_or_init(|| find_on_path("setpriv")).as_deref()
}

/// `name` on `$PATH`, if there.
pub fn find_on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// `n` distinct ports for servers to listen on (see `micro_testkit`: below the ephemeral
/// range, so no outgoing connection can take one before the server binds it).
pub fn free_ports(n: usize) -> anyhow::Result<Vec<u16>> {
    Ok(micro_testkit::free_ports(n))
}

/// Clock ticks per second of /proc/PID/stat's times (`getconf CLK_TCK`, 100 on Linux).
pub fn clk_tck() -> u64 {
    static TCK: OnceLock<u64> = OnceLock::new();
    *TCK.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .filter(|t| *t > 0)
            .unwrap_or(100)
    })
}

/// utime + stime of a process, in clock ticks.
pub fn cpu_ticks(pid: &str) -> Option<u64> {
    parse_stat_cpu(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// CPU seconds (user + system) a process has used so far.
pub fn cpu_seconds(pid: &str) -> Option<f64> {
    cpu_ticks(pid).map(|t| t as f64 / clk_tck() as f64)
}

fn parse_stat_cpu(stat: &str) -> Option<u64> {
    // The command name (field 2) may hold spaces and parentheses: fields 3.. follow the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state); utime is field 14, stime field 15.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// Peak resident set size (VmHWM) of a process, in KiB.
pub fn peak_rss_kib(pid: &str) -> Option<u64> {
    parse_status_kib(
        &std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?,
        "VmHWM:",
    )
}

fn parse_status_kib(status: &str, field: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::net::TcpListener;

    use super::*;

    #[test]
    fn ports_are_distinct_and_bindable() {
        let a = free_ports(9).unwrap();
        let b = free_ports(6).unwrap();
        let all: HashSet<u16> = a.iter().chain(&b).copied().collect();
        assert_eq!(all.len(), 15);
        let l = TcpListener::bind(("127.0.0.1", a[0])).unwrap();
        drop(l);
    }

    #[test]
    fn proc_stat_and_status() {
        let stat = "1234 (micro (x) y) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 75 0 0 20 0 9 0";
        assert_eq!(parse_stat_cpu(stat), Some(325));
        let status = "Name:\tmicro\nVmPeak:\t  900 kB\nVmHWM:\t   51234 kB\nVmRSS:\t 40000 kB\n";
        assert_eq!(parse_status_kib(status, "VmHWM:"), Some(51234));
        assert!(cpu_seconds("self").is_some());
        assert!(peak_rss_kib("self").unwrap() > 0);
    }

    #[test]
    fn dropping_a_proc_kills_it() {
        let dir = tempfile::tempdir().unwrap();
        let p = Proc::spawn(
            "sleep",
            Path::new("/bin/sleep"),
            &["30".into()],
            &[],
            &dir.path().join("log"),
        )
        .unwrap();
        let pid = p.pid().to_string();
        assert!(Path::new(&format!("/proc/{pid}")).exists());
        drop(p);
        assert!(!Path::new(&format!("/proc/{pid}")).exists());
    }
}
