//! Hidden helper commands the node runs as separate processes of its own binary
//! (`cairn internal …`): helpers of the test services (orphans, a SIGTERM-proof child).

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

/// Blocks SIGTERM (it stays pending, so the process never ends by it) and sleeps until
/// killed: the stand-in for a process that ignores a polite shutdown.
pub fn ignore_term() -> ! {
    let mut blocked = nix::sys::signal::SigSet::empty();
    blocked.add(nix::sys::signal::Signal::SIGTERM);
    let _ = blocked.thread_block();
    println!("SIGTERM blocked");
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

/// Sleeps, then exits.
pub fn linger(duration: Duration) {
    std::thread::sleep(duration);
}
