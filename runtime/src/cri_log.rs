//! Container logs in the CRI format the kubelet uses (`/var/log/pods/…`): one line per
//! record, `<RFC 3339 nanosecond time> <stdout|stderr> <F|P> <content>`, where `P` marks
//! a partial line (a long line split, or the unterminated end of a stream) and `F` the
//! record that completes it. The shim writes them; [`read_log`] reads them back for
//! `kubectl logs`, optionally following a file that is still being written.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::time::{Duration, SystemTime};

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// The longest record content written; longer lines are split into partial records.
pub const MAX_RECORD: usize = 16 * 1024;

/// Which output stream of a container a record came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

impl Stream {
    fn tag(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
}

/// One record of a log file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// When the shim read it.
    pub time: OffsetDateTime,
    /// The stream it came from.
    pub stream: Stream,
    /// Whether it completes a line (`F`) rather than being a part of one (`P`).
    pub full: bool,
    /// The bytes, without the newline.
    pub content: Vec<u8>,
}

/// Formats `time` as RFC 3339 with nanoseconds in UTC.
fn timestamp(time: SystemTime) -> String {
    let time = OffsetDateTime::from(time);
    // Formatting a UTC time as RFC 3339 cannot fail (years 0..=9999).
    time.format(&Rfc3339)
        .unwrap_or_else(|_| String::from("1970-01-01T00:00:00Z"))
}

/// Copies one container stream into a CRI log, a record per line (split at
/// [`MAX_RECORD`]). Several copiers may share one file: each record is one `write`.
pub struct LogCopier<W> {
    out: W,
    stream: Stream,
}

impl<W: Write> LogCopier<W> {
    /// A copier writing records of `stream` to `out`.
    pub fn new(out: W, stream: Stream) -> Self {
        Self { out, stream }
    }

    /// Writes one record.
    pub fn record(&mut self, content: &[u8], full: bool) -> io::Result<()> {
        let mut line = Vec::with_capacity(content.len() + 48);
        line.extend_from_slice(timestamp(SystemTime::now()).as_bytes());
        line.push(b' ');
        line.extend_from_slice(self.stream.tag().as_bytes());
        line.extend_from_slice(if full { b" F " } else { b" P " });
        line.extend_from_slice(content);
        line.push(b'\n');
        self.out.write_all(&line)
    }

    /// Reads `input` to its end, writing a record per line; an unterminated last line
    /// becomes a partial record.
    pub fn copy(&mut self, input: impl Read) -> io::Result<()> {
        let mut input = BufReader::with_capacity(MAX_RECORD, input);
        let mut line = Vec::with_capacity(MAX_RECORD);
        loop {
            line.clear();
            let read = (&mut input)
                .take(MAX_RECORD as u64)
                .read_until(b'\n', &mut line)?;
            if read == 0 {
                return Ok(());
            }
            if line.last() == Some(&b'\n') {
                line.pop();
                self.record(&line, true)?;
            } else {
                self.record(&line, false)?;
            }
        }
    }
}

/// Why a log could not be read.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// The file could not be opened or read.
    #[error("reading log {path}: {source}")]
    Io {
        /// The log file.
        path: std::path::PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// A line is not a CRI log record.
    #[error("log {path} line {line}: not a CRI log record")]
    Malformed {
        /// The log file.
        path: std::path::PathBuf,
        /// The line number (from 1).
        line: u64,
    },
}

/// Parses one record line (without its newline).
pub fn parse_record(line: &[u8]) -> Option<Record> {
    let mut parts = line.splitn(4, |b| *b == b' ');
    let time = std::str::from_utf8(parts.next()?).ok()?;
    let time = OffsetDateTime::parse(time, &Rfc3339).ok()?;
    let stream = match parts.next()? {
        b"stdout" => Stream::Stdout,
        b"stderr" => Stream::Stderr,
        _ => return None,
    };
    let full = match parts.next()? {
        b"F" => true,
        b"P" => false,
        _ => return None,
    };
    Some(Record {
        time,
        stream,
        full,
        content: parts.next().unwrap_or_default().to_vec(),
    })
}

/// What to read of a log.
#[derive(Debug, Clone, Default)]
pub struct ReadOptions {
    /// Only the last this many lines (`kubectl logs --tail`).
    pub tail: Option<usize>,
    /// Keep reading as the file grows until `still_running` says the writer is done.
    pub follow: bool,
    /// Prefix each line with its time (`kubectl logs --timestamps`).
    pub timestamps: bool,
    /// Only what was written at or after this time (`kubectl logs --since`,
    /// `--since-time`). Applied after `tail`, as the kubelet does.
    pub since: Option<OffsetDateTime>,
    /// Stop after this many bytes of output (`kubectl logs --limit-bytes`), cutting
    /// the last line if it must.
    pub limit_bytes: Option<u64>,
}

/// Reads the log at `path` as `kubectl logs` shows it (partial records joined, a
/// newline after each full one), passing each chunk to `out`. With `follow`, polls for
/// new records until `still_running()` is false and the file has no more; `out`
/// returning an error (the reader went away) ends the read.
pub fn read_log(
    path: &Path,
    options: &ReadOptions,
    mut still_running: impl FnMut() -> bool,
    mut out: impl FnMut(&[u8]) -> io::Result<()>,
) -> Result<(), LogError> {
    let io_err = |source| LogError::Io {
        path: path.to_owned(),
        source,
    };
    let file = File::open(path).map_err(io_err)?;
    let mut reader = BufReader::new(file);
    if let Some(tail) = options.tail {
        let start = tail_offset(&mut reader, tail).map_err(io_err)?;
        reader.seek(SeekFrom::Start(start)).map_err(io_err)?;
    }
    let mut line = Vec::new();
    let mut number = 0u64;
    let mut at_line_start = true;
    let mut room = options.limit_bytes.unwrap_or(u64::MAX);
    loop {
        if room == 0 {
            return Ok(());
        }
        let position = reader.stream_position().map_err(io_err)?;
        line.clear();
        let read = reader.read_until(b'\n', &mut line).map_err(io_err)?;
        if read == 0 || line.last() != Some(&b'\n') {
            // End of what is written so far (maybe mid-record): wait for more or stop.
            if !options.follow {
                return Ok(());
            }
            let running = still_running();
            reader.seek(SeekFrom::Start(position)).map_err(io_err)?;
            if !running {
                // The writer is gone: one last look, then stop.
                let mut rest = Vec::new();
                reader.read_to_end(&mut rest).map_err(io_err)?;
                if rest.is_empty() || rest.last() != Some(&b'\n') {
                    return Ok(());
                }
                reader.seek(SeekFrom::Start(position)).map_err(io_err)?;
                continue;
            }
            std::thread::sleep(Duration::from_millis(100));
            continue;
        }
        number += 1;
        line.pop();
        let record = parse_record(&line).ok_or_else(|| LogError::Malformed {
            path: path.to_owned(),
            line: number,
        })?;
        if options.since.is_some_and(|since| record.time < since) {
            at_line_start = record.full;
            continue;
        }
        let mut chunk = Vec::with_capacity(record.content.len() + 40);
        if options.timestamps && at_line_start {
            chunk.extend_from_slice(record.time.format(&Rfc3339).unwrap_or_default().as_bytes());
            chunk.push(b' ');
        }
        chunk.extend_from_slice(&record.content);
        if record.full {
            chunk.push(b'\n');
        }
        at_line_start = record.full;
        let allowed = usize::try_from(room).unwrap_or(usize::MAX).min(chunk.len());
        room -= allowed as u64;
        if out(&chunk[..allowed]).is_err() {
            return Ok(());
        }
    }
}

/// The offset of the first of the last `lines` full lines of a log.
fn tail_offset(reader: &mut BufReader<File>, lines: usize) -> io::Result<u64> {
    let mut starts = std::collections::VecDeque::with_capacity(lines + 1);
    let mut line = Vec::new();
    let mut offset = 0u64;
    let mut line_start = 0u64;
    loop {
        line.clear();
        let read = reader.read_until(b'\n', &mut line)?;
        if read == 0 {
            break;
        }
        offset += read as u64;
        // Only a full record ends a line; partial records belong to the next one.
        let full = parse_record(line.strip_suffix(b"\n").unwrap_or(&line)).is_some_and(|r| r.full);
        if full {
            starts.push_back(line_start);
            if starts.len() > lines {
                starts.pop_front();
            }
            line_start = offset;
        }
    }
    reader.seek(SeekFrom::Start(0))?;
    Ok(if lines == 0 {
        offset
    } else {
        starts.front().copied().unwrap_or(0)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_all(path: &Path, options: &ReadOptions) -> String {
        let mut text = Vec::new();
        read_log(
            path,
            options,
            || false,
            |chunk| {
                text.extend_from_slice(chunk);
                Ok(())
            },
        )
        .unwrap();
        String::from_utf8(text).unwrap()
    }

    #[test]
    fn lines_become_full_records_and_an_unterminated_end_a_partial_one() {
        let mut out = Vec::new();
        LogCopier::new(&mut out, Stream::Stdout)
            .copy(&b"one\ntwo\nthree"[..])
            .unwrap();
        let text = String::from_utf8(out).unwrap();
        let records: Vec<Record> = text
            .lines()
            .map(|l| parse_record(l.as_bytes()).unwrap())
            .collect();
        assert_eq!(records.len(), 3);
        assert_eq!(records[0].content, b"one");
        assert!(records[0].full && records[1].full && !records[2].full);
        assert_eq!(records[2].stream, Stream::Stdout);
        assert!(text.lines().all(|l| l.contains("Z stdout ")), "{text}");
    }

    #[test]
    fn long_lines_are_split_and_joined_again_on_reading() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0.log");
        let long = "x".repeat(MAX_RECORD * 2 + 5);
        let mut file = File::create(&path).unwrap();
        LogCopier::new(&mut file, Stream::Stderr)
            .copy(format!("{long}\nshort\n").as_bytes())
            .unwrap();
        let written = std::fs::read_to_string(&path).unwrap();
        assert_eq!(written.lines().filter(|l| l.contains(" P ")).count(), 2);
        assert_eq!(
            read_all(&path, &ReadOptions::default()),
            format!("{long}\nshort\n")
        );
    }

    #[test]
    fn tail_counts_whole_lines_and_timestamps_prefix_them() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0.log");
        let mut file = File::create(&path).unwrap();
        LogCopier::new(&mut file, Stream::Stdout)
            .copy(&b"a\nb\nc\nd\n"[..])
            .unwrap();
        let tail = ReadOptions {
            tail: Some(2),
            ..ReadOptions::default()
        };
        assert_eq!(read_all(&path, &tail), "c\nd\n");
        let none = ReadOptions {
            tail: Some(0),
            ..ReadOptions::default()
        };
        assert_eq!(read_all(&path, &none), "");
        let stamped = ReadOptions {
            timestamps: true,
            ..ReadOptions::default()
        };
        let text = read_all(&path, &stamped);
        assert!(
            text.lines()
                .all(|l| l.split_once(' ').is_some_and(|(t, _)| t.ends_with('Z'))),
            "{text}"
        );
    }

    #[test]
    fn since_skips_older_records_and_limit_bytes_cuts_the_output() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0.log");
        let old = "2026-12-07T10:00:00.000000000Z stdout F old\n";
        let new = "2026-12-07T10:00:05.000000000Z stdout F new\n";
        let newer = "2026-12-07T10:00:09.000000000Z stdout F newer\n";
        std::fs::write(&path, format!("{old}{new}{newer}")).unwrap();
        let at = |text: &str| OffsetDateTime::parse(text, &Rfc3339).unwrap();
        let since = ReadOptions {
            since: Some(at("2026-12-07T10:00:05Z")),
            ..ReadOptions::default()
        };
        assert_eq!(read_all(&path, &since), "new\nnewer\n");
        let limited = ReadOptions {
            limit_bytes: Some(6),
            ..ReadOptions::default()
        };
        assert_eq!(read_all(&path, &limited), "old\nne");
        // Tail first, then since: the last two lines, of which one is recent enough.
        let both = ReadOptions {
            tail: Some(2),
            since: Some(at("2026-12-07T10:00:06Z")),
            ..ReadOptions::default()
        };
        assert_eq!(read_all(&path, &both), "newer\n");
    }

    #[test]
    fn following_sees_records_written_later_and_stops_when_the_writer_is_done() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0.log");
        File::create(&path).unwrap();
        let writer_path = path.clone();
        let writer = std::thread::spawn(move || {
            let mut file = std::fs::OpenOptions::new()
                .append(true)
                .open(writer_path)
                .unwrap();
            for word in ["first", "second"] {
                std::thread::sleep(Duration::from_millis(150));
                LogCopier::new(&mut file, Stream::Stdout)
                    .copy(format!("{word}\n").as_bytes())
                    .unwrap();
            }
        });
        let mut text = Vec::new();
        let options = ReadOptions {
            follow: true,
            ..ReadOptions::default()
        };
        read_log(
            &path,
            &options,
            || !writer.is_finished(),
            |chunk| {
                text.extend_from_slice(chunk);
                Ok(())
            },
        )
        .unwrap();
        assert_eq!(String::from_utf8(text).unwrap(), "first\nsecond\n");
    }

    #[test]
    fn a_line_that_is_not_a_record_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0.log");
        std::fs::write(&path, "garbage\n").unwrap();
        let err = read_log(&path, &ReadOptions::default(), || false, |_| Ok(())).unwrap_err();
        assert!(err.to_string().contains("line 1"), "{err}");
    }
}
