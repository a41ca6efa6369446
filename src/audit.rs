//! The audit log (`--audit-log PATH`): one JSON object per line for every token the server
//! issues or refuses and every key lifecycle change this process makes, appended to a file
//! that nothing else writes through this process.
//!
//! How a line reaches the disk: callers queue it (a bounded queue, [`QUEUE_LINES`]) for one
//! writer thread, which writes each line with a single `write(2)` on an `O_APPEND`
//! descriptor (so lines of several processes, a server and the CLI, never interleave), then
//! `fdatasync`s the batch it wrote before it tells the callers waiting for it. A token is
//! answered only after its `token_issued` line is on disk, so neither a `SIGKILL` nor a
//! power loss can lose the line of a token that was handed out; what a crash can lose is
//! the lines still queued (refusals and key events of the last moments, which nobody waits
//! for, by design).
//!
//! When a line cannot be written (a full disk, an I/O error) the token endpoint fails
//! closed: the token is not handed out and the client gets `503 temporarily_unavailable`,
//! until writes succeed again. The failure is logged once per episode at error level, its
//! recovery once, and every lost line counted ([`AuditLog::stats`]).

use std::fs::File;
use std::io::{self, Write as _};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, mpsc};
use std::time::Duration;

use serde::Serialize;

use crate::files::{self, ReadError};
use crate::keys::{KeyChange, KeyState};
use crate::report::Report;

/// Lines queued for the writer at most; a line that finds the queue full is lost (and
/// counted), and a token waiting for it is refused.
pub const QUEUE_LINES: usize = 4096;

/// How long a token request waits for its line to be written and synced before it is
/// refused (fail closed): a stuck disk must not hold requests and connections for ever.
pub const TOKEN_WAIT: Duration = Duration::from_secs(2);

/// Lines written by one `fdatasync` at most.
const BATCH_LINES: usize = 256;

/// The audit log of a process: a handle to its writer thread, cheap to clone; disabled
/// (records nothing) without `--audit-log`.
#[derive(Clone, Default)]
pub struct AuditLog {
    inner: Option<Arc<Inner>>,
}

/// The audit log could not be opened.
#[derive(Debug, thiserror::Error)]
pub struct AuditOpenError {
    /// The file.
    pub path: PathBuf,
    /// Why.
    #[source]
    pub source: ReadError,
}

impl std::fmt::Display for AuditOpenError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.source {
            // The rule it breaks names the path.
            ReadError::Unsafe(_) => f.write_str("cannot open the audit log"),
            ReadError::Io(_) => write!(f, "cannot open the audit log {}", self.path.display()),
        }
    }
}

/// A line that is not on disk: the queue was full, the writer failed, or it did not answer
/// within [`TOKEN_WAIT`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the audit log cannot be written")]
pub struct AuditUnavailable;

/// Lines written and lost since the log was opened.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AuditStats {
    /// Lines written and synced.
    pub written: u64,
    /// Lines lost: not written, not synced, or never queued (the queue was full).
    pub lost: u64,
}

/// A token the server issued, as the audit log records it.
#[derive(Debug, Clone, Copy)]
pub struct TokenIssued<'a> {
    /// The request's id (the `X-Request-Id` the response carries).
    pub request_id: &'a str,
    /// The registered client it was issued to.
    pub client_id: &'a str,
    /// The key that signed it.
    pub kid: &'a str,
    /// Its algorithm.
    pub alg: &'a str,
    /// Its `jti`.
    pub jti: &'a str,
    /// Its audiences.
    pub aud: &'a [String],
    /// The granted scopes, space-separated.
    pub scope: &'a str,
    /// Its `exp` (seconds since the epoch).
    pub exp: u64,
    /// The client's address (through trusted proxies).
    pub source: Option<IpAddr>,
    /// For a federation grant: the external issuer and subject the token was issued for.
    pub act: Option<(&'a str, &'a str)>,
}

/// A token request the server refused.
#[derive(Debug, Clone, Copy)]
pub struct TokenRefused<'a> {
    /// The request's id.
    pub request_id: &'a str,
    /// The client id, only when it names a registered client (an unregistered id may be
    /// a secret pasted in the wrong field).
    pub client_id: Option<&'a str>,
    /// The OAuth error code answered.
    pub error: &'a str,
    /// The client's address (through trusted proxies).
    pub source: Option<IpAddr>,
}

/// Which process made a key change: the server's own maintenance or a CLI command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyChangeBy {
    /// `jwt-issuer serve` (first start, automatic rotation, removals).
    Server,
    /// A `jwt-issuer keys` command.
    Cli,
}

impl AuditLog {
    /// The log of a process run without `--audit-log`: records nothing.
    pub fn disabled() -> Self {
        Self::default()
    }

    /// Opens (or creates, mode 0600) `path` for appending and starts its writer thread.
    ///
    /// # Errors
    /// The file cannot be opened, or breaks the store rules (a symbolic link, writable
    /// by group or others, another user's).
    pub fn open(path: &Path) -> Result<Self, AuditOpenError> {
        let file = files::open_append(path).map_err(|source| AuditOpenError {
            path: path.to_owned(),
            source,
        })?;
        let (queue, jobs) = mpsc::sync_channel(QUEUE_LINES);
        let inner = Arc::new(Inner {
            path: path.to_owned(),
            queue,
            written: AtomicU64::new(0),
            lost: AtomicU64::new(0),
            failing: AtomicBool::new(false),
        });
        let writer = Writer {
            file,
            torn: false,
            inner: Arc::downgrade(&inner),
            path: path.to_owned(),
        };
        std::thread::Builder::new()
            .name("audit-log".into())
            .spawn(move || writer.run(&jobs))
            .map_err(|e| AuditOpenError {
                path: path.to_owned(),
                source: ReadError::Io(e),
            })?;
        Ok(Self { inner: Some(inner) })
    }

    /// Opens `path` when given, else a disabled log.
    ///
    /// # Errors
    /// As [`AuditLog::open`].
    pub fn open_if(path: Option<&Path>) -> Result<Self, AuditOpenError> {
        path.map_or_else(|| Ok(Self::disabled()), Self::open)
    }

    /// Whether lines are recorded.
    pub fn is_enabled(&self) -> bool {
        self.inner.is_some()
    }

    /// The file, when enabled.
    pub fn path(&self) -> Option<&Path> {
        self.inner.as_ref().map(|i| i.path.as_path())
    }

    /// Records an issued token and waits (at most [`TOKEN_WAIT`]) until its line is
    /// written and synced. Ok at once when disabled.
    ///
    /// # Errors
    /// [`AuditUnavailable`]: the token must not be handed out.
    pub async fn token_issued(&self, token: TokenIssued<'_>) -> Result<(), AuditUnavailable> {
        let Some(inner) = &self.inner else {
            return Ok(());
        };
        let line = Line {
            time: now(),
            event: "token_issued",
            request_id: Some(token.request_id),
            client_id: Some(token.client_id),
            kid: Some(token.kid),
            alg: Some(token.alg),
            jti: Some(token.jti),
            aud: Some(token.aud),
            scope: Some(token.scope),
            act_iss: token.act.map(|a| a.0),
            act_sub: token.act.map(|a| a.1),
            exp: Some(token.exp),
            source: token.source.map(|ip| ip.to_string()),
            ..Line::default()
        };
        let (done, written) = tokio::sync::oneshot::channel();
        if !inner.send(line.to_bytes(), Some(done)) {
            return Err(AuditUnavailable);
        }
        match tokio::time::timeout(TOKEN_WAIT, written).await {
            Ok(Ok(true)) => Ok(()),
            Ok(_) => Err(AuditUnavailable),
            Err(_) => {
                tracing::error!(path = %inner.path.display(), wait = ?TOKEN_WAIT, "the audit log did not write a line in time; the token is refused");
                Err(AuditUnavailable)
            }
        }
    }

    /// Records a refused token request; queued, never waited for.
    pub fn token_refused(&self, refused: TokenRefused<'_>) {
        let Some(inner) = &self.inner else {
            return;
        };
        let line = Line {
            time: now(),
            event: "token_refused",
            request_id: Some(refused.request_id),
            client_id: refused.client_id,
            error: Some(refused.error),
            source: refused.source.map(|ip| ip.to_string()),
            ..Line::default()
        };
        inner.send(line.to_bytes(), None);
    }

    /// Records a token its client revoked (RFC 7009); queued, never waited for (the
    /// revocation is in the store already).
    pub fn token_revoked(&self, request_id: &str, client_id: &str, jti: &str, exp: u64) {
        let Some(inner) = &self.inner else {
            return;
        };
        let line = Line {
            time: now(),
            event: "token_revoked",
            request_id: Some(request_id),
            client_id: Some(client_id),
            jti: Some(jti),
            exp: Some(exp),
            ..Line::default()
        };
        inner.send(line.to_bytes(), None);
    }

    /// Records key changes this process committed; queued, never waited for (call
    /// [`AuditLog::close`] before the process ends).
    pub fn key_changes(&self, by: KeyChangeBy, changes: &[KeyChange]) {
        let Some(inner) = &self.inner else {
            return;
        };
        let by = match by {
            KeyChangeBy::Server => "server",
            KeyChangeBy::Cli => "cli",
        };
        for change in changes {
            let line = Line {
                time: now(),
                event: key_event(change),
                kid: Some(&change.kid),
                alg: Some(change.alg.as_str()),
                state: Some(change.to.as_str()),
                previous_state: change.from.map(KeyState::as_str),
                by: Some(by),
                ..Line::default()
            };
            inner.send(line.to_bytes(), None);
        }
    }

    /// A [`KeyStore::on_change`](crate::KeyStore::on_change) observer recording into this log.
    pub fn key_observer(&self, by: KeyChangeBy) -> impl Fn(&[KeyChange]) + Send + Sync + 'static {
        let log = self.clone();
        move |changes| log.key_changes(by, changes)
    }

    /// Waits until every line queued so far is written and synced.
    ///
    /// # Errors
    /// Some line since the log was opened was lost; the message says how many.
    pub fn close(&self) -> Result<(), AuditCloseError> {
        let Some(inner) = &self.inner else {
            return Ok(());
        };
        let (done, flushed) = mpsc::channel();
        // A writer that is gone has counted what it lost.
        if inner.queue.send(Job::Flush(done)).is_ok() {
            let _ = flushed.recv();
        }
        let stats = inner.stats();
        if stats.lost > 0 {
            return Err(AuditCloseError {
                path: inner.path.clone(),
                lost: stats.lost,
            });
        }
        Ok(())
    }

    /// Lines written and lost so far.
    pub fn stats(&self) -> AuditStats {
        self.inner
            .as_ref()
            .map_or_else(AuditStats::default, |i| i.stats())
    }
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.path() {
            Some(path) => write!(f, "AuditLog({})", path.display()),
            None => f.write_str("AuditLog(disabled)"),
        }
    }
}

/// Lines were lost.
#[derive(Debug, thiserror::Error)]
#[error("{lost} line(s) could not be written to the audit log {path} (see the errors logged)")]
pub struct AuditCloseError {
    /// The file.
    pub path: PathBuf,
    /// Lines lost.
    pub lost: u64,
}

/// The event name of a key change.
fn key_event(change: &KeyChange) -> &'static str {
    match (change.from, change.to) {
        (None, _) if change.imported => "key_imported",
        (None, _) => "key_generated",
        (_, KeyState::Revoked) => "key_revoked",
        (_, KeyState::Removed) => "key_removed",
        // A next key that signs now, an active key that retired.
        (Some(_), _) => "key_rotated",
    }
}

/// One line of the file. Fields are written in this order, those without a value left out.
#[derive(Default, Serialize)]
struct Line<'a> {
    time: String,
    event: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    request_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    client_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    kid: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    alg: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    jti: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    aud: Option<&'a [String]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    scope: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    act_iss: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    act_sub: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    exp: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    state: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    previous_state: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    by: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    source: Option<String>,
}

impl Line<'_> {
    /// The line as written: JSON (strings escaped, so no field can add a line) and `\n`.
    fn to_bytes(&self) -> Vec<u8> {
        // Strings, numbers and string lists always serialize.
        let mut bytes = serde_json::to_vec(self).unwrap_or_default();
        bytes.push(b'\n');
        bytes
    }
}

/// Now, RFC 3339 UTC with milliseconds.
fn now() -> String {
    crate::keys::lifecycle::rfc3339::format(crate::time::now_ms())
}

struct Inner {
    path: PathBuf,
    queue: mpsc::SyncSender<Job>,
    written: AtomicU64,
    lost: AtomicU64,
    /// Set from the first failure until a line is written again: logged once per episode.
    failing: AtomicBool,
}

impl Inner {
    /// Queues a line; false (and counted as lost) when the queue is full.
    fn send(&self, line: Vec<u8>, done: Option<Done>) -> bool {
        match self.queue.try_send(Job::Line { line, done }) {
            Ok(()) => true,
            Err(_) => {
                self.lost.fetch_add(1, Ordering::Relaxed);
                if !self.failing.swap(true, Ordering::Relaxed) {
                    tracing::error!(path = %self.path.display(), "AUDIT LOG QUEUE FULL: the writer cannot keep up; lines are lost and tokens refused (503) until it does");
                }
                false
            }
        }
    }

    fn stats(&self) -> AuditStats {
        AuditStats {
            written: self.written.load(Ordering::Relaxed),
            lost: self.lost.load(Ordering::Relaxed),
        }
    }
}

/// Tells a waiting request whether its line is on disk.
type Done = tokio::sync::oneshot::Sender<bool>;

enum Job {
    Line {
        line: Vec<u8>,
        done: Option<Done>,
    },
    /// Answered once every line queued before it is handled.
    Flush(mpsc::Sender<()>),
}

struct Writer {
    file: File,
    /// A line was cut short (a full disk): the next write starts with `\n`, so the lines
    /// after it parse.
    torn: bool,
    /// Weak: the thread ends when the last handle goes.
    inner: std::sync::Weak<Inner>,
    path: PathBuf,
}

impl Writer {
    fn run(mut self, jobs: &mpsc::Receiver<Job>) {
        while let Ok(first) = jobs.recv() {
            let mut batch = vec![first];
            while batch.len() < BATCH_LINES {
                match jobs.try_recv() {
                    Ok(job) => batch.push(job),
                    Err(_) => break,
                }
            }
            self.handle(batch);
        }
        let _ = self.file.sync_data();
    }

    /// Writes the batch's lines, syncs them, then answers whoever waits.
    fn handle(&mut self, batch: Vec<Job>) {
        let mut waiting = Vec::new();
        let mut flushes = Vec::new();
        let mut error: Option<io::Error> = None;
        let mut written = 0u64;
        let mut lost = 0u64;
        for job in batch {
            match job {
                Job::Line { line, done } => match self.write_line(&line) {
                    Ok(()) => {
                        written += 1;
                        waiting.push((done, true));
                    }
                    Err(e) => {
                        lost += 1;
                        error.get_or_insert(e);
                        waiting.push((done, false));
                    }
                },
                Job::Flush(done) => flushes.push(done),
            }
        }
        if written > 0
            && let Err(e) = self.file.sync_data()
        {
            // Written, but perhaps not on disk: not good enough for a token.
            lost += written;
            written = 0;
            error.get_or_insert(e);
            for (_, ok) in &mut waiting {
                *ok = false;
            }
        }
        if let Some(inner) = self.inner.upgrade() {
            inner.written.fetch_add(written, Ordering::Relaxed);
            inner.lost.fetch_add(lost, Ordering::Relaxed);
            match &error {
                Some(e) if !inner.failing.swap(true, Ordering::Relaxed) => {
                    tracing::error!(path = %self.path.display(), error = %Report(e), "AUDIT LOG CANNOT BE WRITTEN: tokens are refused (503 temporarily_unavailable) until it can; lines of refusals and key changes are lost meanwhile");
                }
                None if written > 0 && inner.failing.swap(false, Ordering::Relaxed) => {
                    tracing::warn!(path = %self.path.display(), lost = inner.lost.load(Ordering::Relaxed), "the audit log is written again; tokens are issued again");
                }
                _ => {}
            }
        }
        for (done, ok) in waiting {
            if let Some(done) = done {
                // The request may have given up waiting.
                let _ = done.send(ok);
            }
        }
        for done in flushes {
            let _ = done.send(());
        }
    }

    /// One `write(2)` of the whole line (after a `\n` that ends a torn line).
    fn write_line(&mut self, line: &[u8]) -> io::Result<()> {
        files::inject_disk_full()?;
        if self.torn {
            self.write_once(b"\n")?;
            self.torn = false;
        }
        self.write_once(line)
    }

    fn write_once(&mut self, bytes: &[u8]) -> io::Result<()> {
        let n = self.file.write(bytes)?;
        if n < bytes.len() {
            self.torn |= n > 0;
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                format!("wrote {n} of {} bytes (disk full?)", bytes.len()),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;
    use crate::SigningAlg;

    fn lines(path: &Path) -> Vec<serde_json::Value> {
        std::fs::read_to_string(path)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    #[test]
    fn key_changes_are_appended_one_json_line_each_to_a_new_0600_file() {
        let dir = tempfile::TempDir::new().unwrap();
        let path = dir.path().join("audit.log");
        let log = AuditLog::open(&path).unwrap();
        let change = |kid: &str, from, to, imported| KeyChange {
            kid: kid.into(),
            alg: SigningAlg::Es256,
            from,
            to,
            imported,
        };
        log.key_changes(
            KeyChangeBy::Cli,
            &[
                change("a", None, KeyState::Next, false),
                change("b", None, KeyState::Next, true),
                change("c", Some(KeyState::Next), KeyState::Active, false),
                change("d", Some(KeyState::Active), KeyState::Revoked, false),
                change("e", Some(KeyState::Retired), KeyState::Removed, false),
            ],
        );
        log.close().unwrap();
        let found = lines(&path);
        let events: Vec<&str> = found.iter().map(|l| l["event"].as_str().unwrap()).collect();
        assert_eq!(
            events,
            [
                "key_generated",
                "key_imported",
                "key_rotated",
                "key_revoked",
                "key_removed"
            ]
        );
        assert_eq!(found[2]["state"], "active");
        assert_eq!(found[2]["previous_state"], "next");
        assert_eq!(found[0]["by"], "cli");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(log.stats().written, 5);
        // Reopened, it appends.
        let again = AuditLog::open(&path).unwrap();
        again.key_changes(
            KeyChangeBy::Server,
            &[change("f", None, KeyState::Next, false)],
        );
        again.close().unwrap();
        assert_eq!(lines(&path).len(), 6);
    }

    #[test]
    fn a_link_or_a_file_others_may_write_is_refused() {
        let dir = tempfile::TempDir::new().unwrap();
        let real = dir.path().join("real.log");
        std::fs::write(&real, "").unwrap();
        std::fs::set_permissions(&real, std::fs::Permissions::from_mode(0o600)).unwrap();
        let link = dir.path().join("link.log");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        let err = Report(&AuditLog::open(&link).unwrap_err()).to_string();
        assert!(err.contains("symbolic link"), "{err}");
        std::fs::set_permissions(&real, std::fs::Permissions::from_mode(0o620)).unwrap();
        let err = Report(&AuditLog::open(&real).unwrap_err()).to_string();
        assert!(err.contains("chmod 600"), "{err}");
    }

    #[test]
    fn a_disabled_log_records_nothing_and_closes_cleanly() {
        let log = AuditLog::disabled();
        assert!(!log.is_enabled());
        log.key_changes(KeyChangeBy::Server, &[]);
        log.close().unwrap();
        assert_eq!(log.stats(), AuditStats::default());
    }
}
