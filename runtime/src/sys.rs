//! The runtime's few raw system calls, each wrapped once: forking the shim into the
//! background, bringing a namespace's loopback interface up, and taking and sizing a
//! container's terminal.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use nix::unistd::ForkResult;

/// Forks the calling process.
///
/// Only for a process that has not started any thread yet (the shim at its start):
/// the child of a multi-threaded process may only call async-signal-safe functions.
pub(crate) fn fork_single_threaded() -> nix::Result<ForkResult> {
    // SAFETY: the caller guarantees the process is single-threaded, so the child is a
    // complete copy of it and may run any code.
    unsafe { nix::unistd::fork() }
}

/// Sets the `lo` interface of the calling thread's network namespace up.
pub(crate) fn loopback_up() -> io::Result<()> {
    // SAFETY: socket(2) with constant arguments; the result is checked before use.
    let raw = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `raw` is a new descriptor nothing else owns.
    let socket = unsafe { OwnedFd::from_raw_fd(raw) };
    // SAFETY: `ifreq` is plain old data; all zeroes is a valid value.
    let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
    for (slot, byte) in request.ifr_name.iter_mut().zip(b"lo\0") {
        *slot = *byte as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS reads the flags into the `ifreq` we own, named "lo".
    if unsafe { libc::ioctl(socket.as_raw_fd(), libc::SIOCGIFFLAGS, &mut request) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: SIOCGIFFLAGS filled the `ifru_flags` member of the union.
    unsafe {
        request.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
    }
    // SAFETY: SIOCSIFFLAGS reads the `ifreq` we own and filled above.
    if unsafe { libc::ioctl(socket.as_raw_fd(), libc::SIOCSIFFLAGS, &request) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Receives one message on the Unix stream `socket` and the descriptor it carries
/// (`SCM_RIGHTS`, close-on-exec). `Ok(None)`: the peer closed without sending one.
pub(crate) fn receive_fd(socket: std::os::fd::RawFd) -> io::Result<Option<OwnedFd>> {
    use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg};
    let mut data = [0u8; 256];
    let mut iov = [io::IoSliceMut::new(&mut data)];
    let mut space = nix::cmsg_space!([std::os::fd::RawFd; 4]);
    let message = recvmsg::<()>(
        socket,
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_CMSG_CLOEXEC | MsgFlags::MSG_DONTWAIT,
    )
    .map_err(io::Error::from)?;
    let mut received = Vec::new();
    for control in message.cmsgs().map_err(io::Error::from)? {
        if let ControlMessageOwned::ScmRights(fds) = control {
            for fd in fds {
                // SAFETY: the kernel installed `fd` in this process for this message;
                // nothing else refers to it.
                received.push(unsafe { OwnedFd::from_raw_fd(fd) });
            }
        }
    }
    if received.is_empty() && message.bytes == 0 {
        return Ok(None);
    }
    // One descriptor is expected; the others, if any, close here.
    let mut received = received.into_iter();
    received
        .next()
        .map(Some)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "a message without a descriptor"))
}

/// Makes reads and writes on `fd` non-blocking.
pub(crate) fn set_nonblocking(fd: &OwnedFd) -> io::Result<()> {
    use nix::fcntl::{FcntlArg, OFlag, fcntl};
    let flags = OFlag::from_bits_truncate(fcntl(fd, FcntlArg::F_GETFL).map_err(io::Error::from)?);
    fcntl(fd, FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK)).map_err(io::Error::from)?;
    Ok(())
}

/// Sets the window size of the terminal whose master is `master`.
pub(crate) fn set_window_size(master: &OwnedFd, columns: u16, rows: u16) -> io::Result<()> {
    let size = libc::winsize {
        ws_row: rows,
        ws_col: columns,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads a `winsize` we own from a pointer valid for the call.
    if unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &size) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Registers `fd` with the Tokio reactor of the calling task's runtime.
pub(crate) fn async_fd(fd: OwnedFd) -> io::Result<tokio::io::unix::AsyncFd<OwnedFd>> {
    // SAFETY: an `OwnedFd` owns an open descriptor that stays open, and is the same
    // descriptor, until the `OwnedFd` (here owned by the `AsyncFd`) is dropped.
    unsafe { tokio::io::unix::AsyncFd::register(fd) }.map_err(io::Error::from)
}
