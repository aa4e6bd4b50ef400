//! Hidden helper commands the node runs as separate processes of its own binary
//! (`cairn internal …`): the orphan maker used by the `orphans` test service.

use std::process::Command;
use std::time::Duration;

/// Starts `count` children that each live `linger` and exits at once without waiting,
/// so they become orphans of whoever reaps for this process.
pub fn spawn_orphans(count: u32, linger: Duration) -> std::io::Result<()> {
    let exe = std::env::current_exe()?;
    for _ in 0..count {
        // Intentionally never waited for: these must become orphans.
        let _child = Command::new(&exe)
            .args([
                "internal",
                "linger",
                "--ms",
                &linger.as_millis().to_string(),
            ])
            .spawn()?;
    }
    Ok(())
}

/// Sleeps, then exits.
pub fn linger(duration: Duration) {
    std::thread::sleep(duration);
}
