//! A guest's serial console: read from QEMU's socket on a thread, split into lines,
//! stamped with the host time since QEMU started, written to a log file and kept in
//! memory for [`SerialLog::wait_for`].

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::Child;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// The line the kernel prints when it panics.
pub const KERNEL_PANIC: &str = "Kernel panic - not syncing";

#[derive(Default)]
struct State {
    lines: Vec<String>,
    /// Index of the first line the next wait looks at.
    cursor: usize,
    closed: bool,
}

/// How a wait ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WaitOutcome {
    /// A line matched.
    Matched(String),
    /// The kernel panicked first.
    Panic,
    /// The console closed (QEMU exited) first.
    Closed,
    /// Nothing matched in time.
    TimedOut,
}

/// The console of one VM.
pub struct SerialLog {
    shared: Arc<(Mutex<State>, Condvar)>,
}

impl SerialLog {
    /// Connects to QEMU's serial socket (QEMU waits for us before starting the guest,
    /// so no output is lost) and starts capturing.
    pub fn connect(
        socket: &Path,
        log_path: &Path,
        started: Instant,
        child: &Arc<Mutex<Option<Child>>>,
    ) -> std::io::Result<Self> {
        let stream = connect_while_alive(socket, child)?;
        let mut log = std::fs::File::create(log_path)?;
        let shared: Arc<(Mutex<State>, Condvar)> = Arc::default();
        let reader_shared = Arc::clone(&shared);
        std::thread::Builder::new()
            .name("serial".into())
            .spawn(move || {
                let mut reader = BufReader::new(stream);
                let mut raw = Vec::new();
                loop {
                    raw.clear();
                    match reader.read_until(b'\n', &mut raw) {
                        Ok(0) | Err(_) => break,
                        Ok(_) => {
                            let line = String::from_utf8_lossy(&raw)
                                .trim_end_matches(['\r', '\n'])
                                .to_owned();
                            let at = started.elapsed();
                            let _ = writeln!(
                                log,
                                "[+{:>4}.{:03}s] {line}",
                                at.as_secs(),
                                at.subsec_millis()
                            );
                            let (state, wake) = &*reader_shared;
                            lock(state).lines.push(line);
                            wake.notify_all();
                        }
                    }
                }
                let (state, wake) = &*reader_shared;
                lock(state).closed = true;
                wake.notify_all();
            })?;
        Ok(Self { shared })
    }

    /// Waits until every pattern has matched some line after the previous match, in
    /// any order; afterwards the next wait starts after the last of those lines.
    pub fn wait_for_each(&self, patterns: &[regex::Regex], timeout: Duration) -> WaitOutcome {
        let deadline = Instant::now() + timeout;
        let (state, wake) = &*self.shared;
        let mut guard = lock(state);
        let mut found: Vec<Option<usize>> = vec![None; patterns.len()];
        let mut scanned = guard.cursor;
        loop {
            while scanned < guard.lines.len() {
                let line = &guard.lines[scanned];
                if line.contains(KERNEL_PANIC) {
                    guard.cursor = scanned + 1;
                    return WaitOutcome::Panic;
                }
                for (slot, pattern) in found.iter_mut().zip(patterns) {
                    if slot.is_none() && pattern.is_match(line) {
                        *slot = Some(scanned);
                    }
                }
                scanned += 1;
            }
            if found.iter().all(Option::is_some) {
                let last = found
                    .iter()
                    .flatten()
                    .max()
                    .copied()
                    .unwrap_or(guard.cursor);
                guard.cursor = last + 1;
                return WaitOutcome::Matched(guard.lines[last].clone());
            }
            if guard.closed {
                return WaitOutcome::Closed;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return WaitOutcome::TimedOut;
            }
            guard = wake
                .wait_timeout(guard, left)
                .map(|(g, _)| g)
                .unwrap_or_else(|p| p.into_inner().0);
        }
    }

    /// Waits for a line matching `pattern` after the previous match.
    pub fn wait_for(&self, pattern: &regex::Regex, timeout: Duration) -> WaitOutcome {
        let deadline = Instant::now() + timeout;
        let (state, wake) = &*self.shared;
        let mut guard = lock(state);
        loop {
            while guard.cursor < guard.lines.len() {
                let index = guard.cursor;
                guard.cursor += 1;
                let line = &guard.lines[index];
                if pattern.is_match(line) {
                    return WaitOutcome::Matched(line.clone());
                }
                if line.contains(KERNEL_PANIC) {
                    return WaitOutcome::Panic;
                }
            }
            if guard.closed {
                return WaitOutcome::Closed;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return WaitOutcome::TimedOut;
            }
            guard = wake
                .wait_timeout(guard, left)
                .map(|(g, _)| g)
                .unwrap_or_else(|p| p.into_inner().0);
        }
    }

    /// The last `n` lines.
    pub fn tail(&self, n: usize) -> Vec<String> {
        let guard = lock(&self.shared.0);
        let skip = guard.lines.len().saturating_sub(n);
        guard.lines[skip..].to_vec()
    }
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state.lock().unwrap_or_else(|p| p.into_inner())
}

fn connect_while_alive(socket: &Path, child: &Mutex<Option<Child>>) -> std::io::Result<UnixStream> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match UnixStream::connect(socket) {
            Ok(stream) => return Ok(stream),
            Err(err) => {
                let exited = child
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .as_mut()
                    .and_then(|c| c.try_wait().ok().flatten());
                if let Some(status) = exited {
                    return Err(std::io::Error::other(format!(
                        "QEMU exited ({status}) before its serial socket appeared; see qemu.stderr"
                    )));
                }
                if Instant::now() >= deadline {
                    return Err(err);
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::net::UnixListener;

    use super::*;

    fn console() -> (SerialLog, UnixStream, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("s");
        let listener = UnixListener::bind(&socket).unwrap();
        let child: Arc<Mutex<Option<Child>>> = Arc::default();
        let log =
            SerialLog::connect(&socket, &dir.path().join("log"), Instant::now(), &child).unwrap();
        let (guest, _) = listener.accept().unwrap();
        (log, guest, dir)
    }

    fn re(p: &str) -> regex::Regex {
        regex::Regex::new(p).unwrap()
    }

    #[test]
    fn waits_continue_after_the_previous_match_and_see_crlf_lines() {
        let (log, mut guest, _dir) = console();
        guest
            .write_all(b"boot\r\nready one\r\nready two\r\n")
            .unwrap();
        let t = Duration::from_secs(5);
        assert_eq!(
            log.wait_for(&re("ready"), t),
            WaitOutcome::Matched("ready one".into())
        );
        assert_eq!(
            log.wait_for(&re("ready"), t),
            WaitOutcome::Matched("ready two".into())
        );
        assert_eq!(
            log.wait_for(&re("ready"), Duration::from_millis(50)),
            WaitOutcome::TimedOut
        );
    }

    #[test]
    fn each_of_several_patterns_may_come_in_any_order() {
        let (log, mut guest, _dir) = console();
        guest.write_all(b"b happened\na happened\nafter\n").unwrap();
        let t = Duration::from_secs(5);
        assert_eq!(
            log.wait_for_each(&[re("^a"), re("^b")], t),
            WaitOutcome::Matched("a happened".into())
        );
        assert_eq!(
            log.wait_for(&re("."), t),
            WaitOutcome::Matched("after".into())
        );
    }

    #[test]
    fn a_kernel_panic_or_a_closed_console_ends_the_wait_at_once() {
        let (log, mut guest, _dir) = console();
        guest
            .write_all(b"[ 1.0] Kernel panic - not syncing: Attempted to kill init!\n")
            .unwrap();
        assert_eq!(
            log.wait_for(&re("ready"), Duration::from_secs(30)),
            WaitOutcome::Panic
        );
        drop(guest);
        assert_eq!(
            log.wait_for(&re("ready"), Duration::from_secs(30)),
            WaitOutcome::Closed
        );
    }
}
