//! [`BatchedStderr`]: where every command's log lines go. A line is appended to one
//! in-memory buffer under a lock (no thread woken, no system call), and one writer thread
//! writes what gathered to stderr at most every [`GATHER`], with one `write` for many
//! lines: a server logging one line per token spends on the log a copy, not a wake-up and a
//! system call per line. Lines keep the order they were written in. Nothing is dropped: a
//! writer waits while the buffer holds [`MAX_BUFFERED`] bytes that stderr has not taken
//! (stderr blocked), and the guard writes the rest when the command ends.

use std::io::{self, Write};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

/// How long the writer thread gathers lines after the first one before writing them.
pub const GATHER: Duration = Duration::from_millis(5);
/// Bytes gathered at which the writer thread is woken at once.
const WRITE_AT: usize = 64 * 1024;
/// How long the end of a command waits for the last lines to be written.
const EXIT_WAIT: Duration = Duration::from_secs(2);
/// Bytes waiting for stderr at which writers of new lines wait.
const MAX_BUFFERED: usize = 4 * 1024 * 1024;

/// The [`tracing_subscriber::fmt::MakeWriter`] of the log; clones share one buffer.
#[derive(Clone)]
pub struct BatchedStderr {
    shared: Arc<Shared>,
}

/// Writes what is left and stops the writer thread when dropped (at the end of `main`).
pub struct FlushGuard {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

struct Shared {
    state: Mutex<State>,
    /// The writer thread waits here for a first line (or for [`WRITE_AT`] bytes).
    gathered: Condvar,
    /// Writers wait here while [`MAX_BUFFERED`] bytes wait for stderr (so up to twice
    /// that is held: the batch being written and the next one).
    drained: Condvar,
    /// Set by the writer thread when it has written everything after the close.
    finished: (Mutex<bool>, Condvar),
}

#[derive(Default)]
struct State {
    buffer: Vec<u8>,
    closed: bool,
}

impl BatchedStderr {
    /// The writer and its guard; the writer thread runs until the guard is dropped.
    ///
    /// # Errors
    /// The writer thread cannot be started.
    pub fn start() -> io::Result<(Self, FlushGuard)> {
        Self::start_with(io::stderr())
    }

    fn start_with(mut out: impl Write + Send + 'static) -> io::Result<(Self, FlushGuard)> {
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            gathered: Condvar::new(),
            drained: Condvar::new(),
            finished: (Mutex::new(false), Condvar::new()),
        });
        let thread = {
            let shared = Arc::clone(&shared);
            std::thread::Builder::new()
                .name("log-writer".into())
                .spawn(move || {
                    shared.write_loop(&mut out);
                    let (done, finished) = &shared.finished;
                    *done.lock().unwrap_or_else(PoisonError::into_inner) = true;
                    finished.notify_all();
                })?
        };
        let guard = FlushGuard {
            shared: Arc::clone(&shared),
            thread: Some(thread),
        };
        Ok((Self { shared }, guard))
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn write_loop(&self, out: &mut impl Write) {
        let mut spare = Vec::new();
        loop {
            let mut state = self.lock();
            while state.buffer.is_empty() && !state.closed {
                state = self
                    .gathered
                    .wait(state)
                    .unwrap_or_else(PoisonError::into_inner);
            }
            if state.buffer.is_empty() && state.closed {
                return;
            }
            // Gather for a moment: the lines of the next few requests share the write.
            if state.buffer.len() < WRITE_AT && !state.closed {
                state = self
                    .gathered
                    .wait_timeout(state, GATHER)
                    .unwrap_or_else(PoisonError::into_inner)
                    .0;
            }
            std::mem::swap(&mut state.buffer, &mut spare);
            drop(state);
            self.drained.notify_all();
            // stderr gone (a closed pipe): the lines are dropped, the program goes on.
            let _ = out.write_all(&spare).and_then(|()| out.flush());
            spare.clear();
            // A burst's buffer is not kept for ever.
            spare.shrink_to(WRITE_AT);
        }
    }

    fn append(&self, line: &[u8]) {
        let mut state = self.lock();
        if state.closed {
            // After the guard: written at once (under the lock, so in order).
            let _ = io::stderr().write_all(line);
            return;
        }
        while state.buffer.len() >= MAX_BUFFERED && !state.closed {
            state = self
                .drained
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
        }
        let was_empty = state.buffer.is_empty();
        state.buffer.extend_from_slice(line);
        let full = state.buffer.len() >= WRITE_AT;
        drop(state);
        if was_empty || full {
            self.gathered.notify_one();
        }
    }
}

impl Drop for FlushGuard {
    fn drop(&mut self) {
        self.shared.lock().closed = true;
        self.shared.gathered.notify_one();
        self.shared.drained.notify_all();
        // The rest is written, but an exit never waits long on a stderr nobody reads.
        let (done, finished) = &self.shared.finished;
        let done = done.lock().unwrap_or_else(PoisonError::into_inner);
        let (done, _) = finished
            .wait_timeout_while(done, EXIT_WAIT, |done| !*done)
            .unwrap_or_else(PoisonError::into_inner);
        if *done && let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// One event's writer: tracing's formatter writes a whole line with one `write_all`.
pub struct LineWriter<'a> {
    shared: &'a Shared,
}

impl Write for LineWriter<'_> {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.shared.append(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for BatchedStderr {
    type Writer = LineWriter<'a>;

    fn make_writer(&'a self) -> Self::Writer {
        LineWriter {
            shared: &self.shared,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stderr stand-in that records each write.
    #[derive(Clone, Default)]
    struct Recorder(Arc<Mutex<Vec<Vec<u8>>>>);

    impl Write for Recorder {
        fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().push(bytes.to_vec());
            Ok(bytes.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn lines_from_many_threads_arrive_whole_in_order_and_in_few_writes() {
        let recorder = Recorder::default();
        let (writer, guard) = BatchedStderr::start_with(recorder.clone()).unwrap();
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let writer = writer.clone();
                std::thread::spawn(move || {
                    use tracing_subscriber::fmt::MakeWriter as _;
                    for i in 0..1000 {
                        let line = format!("thread {t} line {i:04}\n");
                        writer.make_writer().write_all(line.as_bytes()).unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        drop(guard);
        let writes = recorder.0.lock().unwrap().clone();
        let text = String::from_utf8(writes.concat()).unwrap();
        assert_eq!(text.lines().count(), 4000, "nothing lost at the end");
        for t in 0..4 {
            let own: Vec<&str> = text
                .lines()
                .filter(|l| l.starts_with(&format!("thread {t} ")))
                .collect();
            let mut sorted = own.clone();
            sorted.sort_unstable();
            assert_eq!(own, sorted, "each thread's lines in the order written");
        }
        assert!(writes.len() < 400, "{} writes for 4000 lines", writes.len());
    }

    #[test]
    fn an_idle_log_costs_no_write() {
        let recorder = Recorder::default();
        let (_writer, guard) = BatchedStderr::start_with(recorder.clone()).unwrap();
        std::thread::sleep(GATHER * 4);
        drop(guard);
        assert!(recorder.0.lock().unwrap().is_empty());
    }
}
