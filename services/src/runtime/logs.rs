//! Instance logs on the node that runs them: one file per instance under
//! `<data>/runtime/logs/<namespace>/<service>/<instance>.log`, a line per write
//! (`<unix ms> <stream> <text>`), rotated to `.log.1` when it passes its size bound, so an
//! instance never holds more than twice the bound on disk. Followers are woken by the writer
//! (no polling) and read the file by offset, reopening it when it was rotated.

use std::io::{BufRead, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

/// The longest line kept (longer ones are cut): a runaway writer cannot make one line the
/// whole file.
const MAX_LINE: usize = 16 * 1024;

/// One line of an instance's log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    pub ms: u64,
    /// `stdout`, `stderr`, `build` (the build's output) or `runtime` (the supervisor's notes).
    pub stream: String,
    pub text: String,
}

impl Line {
    fn parse(raw: &str) -> Option<Line> {
        let (ms, rest) = raw.split_once(' ')?;
        let (stream, text) = rest.split_once(' ').unwrap_or((rest, ""));
        Some(Line {
            ms: ms.parse().ok()?,
            stream: stream.to_string(),
            text: text.to_string(),
        })
    }
}

/// A directory name for any namespace or service name (they may hold characters a path may not).
fn segment(s: &str) -> String {
    if !s.is_empty()
        && s != "."
        && s != ".."
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
    {
        s.to_string()
    } else {
        let hex: String = s.bytes().map(|b| format!("{b:02x}")).collect();
        format!("x-{hex}")
    }
}

/// Where a node keeps its instances' logs.
#[derive(Clone)]
pub struct LogDir {
    root: PathBuf,
    max_bytes: u64,
    writers: Arc<Mutex<std::collections::HashMap<PathBuf, Arc<Writer>>>>,
}

impl LogDir {
    pub fn new(root: PathBuf, max_bytes: u64) -> LogDir {
        LogDir {
            root,
            max_bytes: max_bytes.max(1024),
            writers: Default::default(),
        }
    }

    pub fn path(&self, ns: &str, name: &str, instance: u32) -> PathBuf {
        self.root
            .join(segment(ns))
            .join(segment(name))
            .join(format!("{instance}.log"))
    }

    /// The writer of an instance's log (one per file, shared by its followers).
    pub fn writer(&self, ns: &str, name: &str, instance: u32) -> Arc<Writer> {
        let path = self.path(ns, name, instance);
        let mut w = self.writers.lock().unwrap_or_else(|e| e.into_inner());
        w.entry(path.clone())
            .or_insert_with(|| {
                Arc::new(Writer {
                    path,
                    max_bytes: self.max_bytes,
                    file: Mutex::new(None),
                    written: watch::channel(0).0,
                })
            })
            .clone()
    }
}

/// Appends lines to one instance's log.
pub struct Writer {
    path: PathBuf,
    max_bytes: u64,
    file: Mutex<Option<std::fs::File>>,
    /// Lines written so far: followers wait on it.
    written: watch::Sender<u64>,
}

impl Writer {
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one line; a log that cannot be written is reported once in the node's log and
    /// skipped (an instance is not stopped because its log disk is full).
    pub fn line(&self, stream: &str, text: &str) {
        let ms = micro_cluster::now_ms();
        let mut text = text.trim_end_matches(['\n', '\r']);
        if text.len() > MAX_LINE {
            let mut cut = MAX_LINE;
            while !text.is_char_boundary(cut) {
                cut -= 1;
            }
            text = &text[..cut];
        }
        let record = format!("{ms} {stream} {text}\n");
        let mut guard = self.file.lock().unwrap_or_else(|e| e.into_inner());
        if let Err(e) = self.append(&mut guard, record.as_bytes()) {
            tracing::warn!(path = %self.path.display(), "cannot write an instance log: {e}");
            *guard = None;
            return;
        }
        drop(guard);
        self.written.send_modify(|n| *n += 1);
    }

    fn append(&self, file: &mut Option<std::fs::File>, bytes: &[u8]) -> std::io::Result<()> {
        if file.is_none() {
            if let Some(dir) = self.path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            *file = Some(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&self.path)?,
            );
        }
        let f = file.as_mut().expect("opened above");
        if f.metadata()?.len() + bytes.len() as u64 > self.max_bytes {
            let rotated = rotated(&self.path);
            std::fs::rename(&self.path, rotated)?;
            *f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.path)?;
        }
        f.write_all(bytes)
    }

    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.written.subscribe()
    }
}

fn rotated(path: &Path) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(".1");
    PathBuf::from(p)
}

/// Every line kept for an instance (the rotated file, then the current one), oldest first.
pub fn read_all(path: &Path) -> Vec<Line> {
    read_until(path, u64::MAX)
}

/// As [`read_all`], reading the current file only up to `offset` (where a [`Tail`] starts).
pub fn read_until(path: &Path, offset: u64) -> Vec<Line> {
    let mut out = Vec::new();
    for (p, limit) in [(rotated(path), u64::MAX), (path.to_path_buf(), offset)] {
        if let Ok(f) = std::fs::File::open(&p) {
            for l in std::io::BufReader::new(f.take(limit))
                .lines()
                .map_while(Result::ok)
            {
                out.extend(Line::parse(&l));
            }
        }
    }
    out
}

/// Follows a log file from its current end: each call of [`Tail::read_new`] returns the lines
/// written since the last one, across rotations.
pub struct Tail {
    path: PathBuf,
    file: Option<std::fs::File>,
    ino: u64,
    offset: u64,
    pending: String,
}

impl Tail {
    /// Starts at the end of what is there now.
    pub fn at_end(path: &Path) -> Tail {
        let mut t = Tail {
            path: path.to_path_buf(),
            file: None,
            ino: 0,
            offset: 0,
            pending: String::new(),
        };
        if let Ok(mut f) = std::fs::File::open(path) {
            t.offset = f.seek(SeekFrom::End(0)).unwrap_or(0);
            t.ino = f.metadata().map(|m| m.ino()).unwrap_or(0);
            t.file = Some(f);
        }
        t
    }

    /// Where it started in the current file.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// The complete lines written since the last call.
    pub fn read_new(&mut self) -> Vec<Line> {
        let mut out = Vec::new();
        self.drain(&mut out);
        // Rotated (or created since): finish the old file above, then read the new one.
        let now = std::fs::metadata(&self.path).map(|m| m.ino()).ok();
        if now.is_some_and(|ino| ino != self.ino) {
            if let Ok(f) = std::fs::File::open(&self.path) {
                self.ino = now.unwrap_or(0);
                self.file = Some(f);
                self.pending.clear();
                self.drain(&mut out);
            }
        }
        out
    }

    fn drain(&mut self, out: &mut Vec<Line>) {
        let Some(f) = self.file.as_mut() else { return };
        let mut buf = String::new();
        if f.read_to_string(&mut buf).is_err() {
            return;
        }
        self.pending.push_str(&buf);
        while let Some(nl) = self.pending.find('\n') {
            let line: String = self.pending.drain(..=nl).collect();
            out.extend(Line::parse(line.trim_end_matches('\n')));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Whatever a program writes comes back as written (a line is cut at MAX_LINE and
        /// loses trailing CR/LF); whatever a damaged file holds never makes a reader panic.
        #[test]
        fn lines_round_trip_and_garbage_is_skipped(
            texts in prop::collection::vec("[^\n]{0,40}", 1..20),
            garbage in prop::collection::vec(any::<u8>(), 0..200),
        ) {
            let dir = std::env::temp_dir().join(format!(
                "micro-logs-prop-{}-{}",
                std::process::id(),
                std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos()
            ));
            let w = LogDir::new(dir.clone(), 1 << 20).writer("micro", "p", 0);
            for t in &texts {
                w.line("stdout", t);
            }
            let back: Vec<String> = read_all(w.path()).into_iter().map(|l| l.text).collect();
            let want: Vec<String> =
                texts.iter().map(|t| t.trim_end_matches(['\n', '\r']).to_string()).collect();
            prop_assert_eq!(back, want);
            std::fs::write(w.path(), &garbage).unwrap();
            let _ = read_all(w.path());
            let _ = Line::parse(&String::from_utf8_lossy(&garbage));
            let _ = std::fs::remove_dir_all(&dir);
        }
    }

    #[test]
    fn rotates_within_its_bound_and_tails_across_rotations() {
        let dir = std::env::temp_dir().join(format!("micro-logs-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let logs = LogDir::new(dir.clone(), 2048);
        let w = logs.writer("team/a", "svc", 0);
        assert!(w.path().starts_with(dir.join("x-7465616d2f61")));
        let mut tail = Tail::at_end(w.path());
        let mut seen = Vec::new();
        for i in 0..200 {
            w.line("stdout", &format!("line {i}"));
            if i % 7 == 0 {
                seen.extend(tail.read_new());
            }
        }
        seen.extend(tail.read_new());
        let texts: Vec<String> = seen.iter().map(|l| l.text.clone()).collect();
        let want: Vec<String> = (0..200).map(|i| format!("line {i}")).collect();
        assert_eq!(texts, want, "the tail saw every line once, in order");
        let size = |p: &Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
        assert!(size(w.path()) <= 2048 && size(&rotated(w.path())) <= 2048);
        assert!(size(&rotated(w.path())) > 0, "it rotated");
        let kept = read_all(w.path());
        assert_eq!(kept.last().unwrap().text, "line 199");
        assert!(kept.windows(2).all(|p| p[0].ms <= p[1].ms));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
