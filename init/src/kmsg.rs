//! Reading the kernel log from `/dev/kmsg` (each `read` returns one record), for
//! `cairnctl dmesg [-f]`.

use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Read};
use std::os::unix::fs::OpenOptionsExt;

use tokio::sync::mpsc;

/// One kernel log record, formatted like `dmesg`: `[    5.140900] message`.
pub fn format_record(raw: &str) -> Option<String> {
    let (header, message) = raw.split_once(';')?;
    let mut fields = header.split(',');
    let _priority = fields.next()?;
    let _sequence = fields.next()?;
    let micros: u64 = fields.next()?.parse().ok()?;
    // Continuation lines (" KEY=value") follow the first line; keep only the message.
    let message = message.lines().next().unwrap_or("");
    Some(format!(
        "[{:>5}.{:06}] {}",
        micros / 1_000_000,
        micros % 1_000_000,
        message
    ))
}

fn open(follow: bool) -> std::io::Result<File> {
    let flags = if follow { 0 } else { libc::O_NONBLOCK };
    OpenOptions::new()
        .read(true)
        .custom_flags(flags)
        .open("/dev/kmsg")
}

/// Reads every record on a blocking thread and sends it formatted; with `follow`, keeps
/// waiting for new records until the receiver is dropped (noticed at the next record).
pub fn stream(follow: bool) -> std::io::Result<mpsc::Receiver<String>> {
    let mut file = open(follow)?;
    let (tx, rx) = mpsc::channel(256);
    std::thread::Builder::new()
        .name("kmsg-reader".into())
        .spawn(move || {
            let mut buffer = vec![0u8; 8192];
            loop {
                match file.read(&mut buffer) {
                    Ok(0) => return,
                    Ok(n) => {
                        let raw = String::from_utf8_lossy(&buffer[..n]);
                        if let Some(line) = format_record(&raw)
                            && tx.blocking_send(line).is_err()
                        {
                            return;
                        }
                    }
                    // Records were overwritten before we read them: go on with the next.
                    Err(err) if err.raw_os_error() == Some(libc::EPIPE) => {}
                    Err(err) if err.kind() == ErrorKind::Interrupted => {}
                    // End of the buffer (non-blocking) or a real error: stop.
                    Err(_) => return,
                }
            }
        })?;
    Ok(rx)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_format_like_dmesg() {
        assert_eq!(
            format_record("6,339,5140900,-;virtio_net virtio0 eth0: renamed\n SUBSYSTEM=net\n"),
            Some("[    5.140900] virtio_net virtio0 eth0: renamed".to_owned())
        );
        assert_eq!(format_record("garbage"), None);
    }
}
