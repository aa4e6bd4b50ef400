//! Network namespaces held open by a file descriptor.
//!
//! A namespace made here lives exactly as long as its [`NetNamespace`] value and the
//! processes started inside it: nothing is bind-mounted under `/run/netns`, so a test
//! that fails or is killed leaves nothing behind.

use std::fs::File;
use std::os::fd::AsFd;
use std::thread;

use nix::sched::{CloneFlags, setns, unshare};

use crate::NetError;

/// A network namespace, kept alive by an open `/proc/thread-self/ns/net` handle.
#[derive(Debug)]
pub struct NetNamespace {
    handle: File,
}

impl NetNamespace {
    /// Creates a new, empty network namespace (needs `CAP_SYS_ADMIN`). Its `lo` is
    /// brought up, so loopback traffic (and QEMU's multicast sockets) work inside.
    pub fn create() -> Result<Self, NetError> {
        let made = thread::spawn(|| -> Result<File, NetError> {
            unshare(CloneFlags::CLONE_NEWNET).map_err(|errno| NetError::Namespace {
                what: "unshare(CLONE_NEWNET)",
                source: errno.into(),
            })?;
            File::open("/proc/thread-self/ns/net").map_err(|source| NetError::Namespace {
                what: "open /proc/thread-self/ns/net",
                source,
            })
        })
        .join()
        .map_err(|_| NetError::Namespace {
            what: "namespace thread panicked",
            source: std::io::Error::other("panic"),
        })??;
        let namespace = Self { handle: made };
        namespace.run_async(|| async {
            let netlink = crate::Netlink::connect()?;
            crate::interfaces::bring_up_loopback(&netlink)
                .await
                .map(drop)
        })??;
        Ok(namespace)
    }

    /// The namespace's file, e.g. to move a link into it.
    pub fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.handle.as_fd()
    }

    /// A path that opens this namespace from any thread of this process while the
    /// value lives (`/proc/<pid>/fd/<fd>`), for APIs that take a namespace file.
    pub fn path(&self) -> std::path::PathBuf {
        use std::os::fd::AsRawFd;
        std::path::PathBuf::from(format!(
            "/proc/{}/fd/{}",
            std::process::id(),
            self.handle.as_raw_fd()
        ))
    }

    /// Runs `f` on a thread that has entered this namespace. Sockets opened and
    /// processes spawned by `f` belong to the namespace.
    pub fn run<F, R>(&self, f: F) -> Result<R, NetError>
    where
        F: FnOnce() -> R + Send,
        R: Send,
    {
        run_in(self.handle.as_fd(), f)
    }

    /// Like [`NetNamespace::run`], for async code: `f` runs to completion on a
    /// single-threaded tokio runtime inside the namespace.
    pub fn run_async<F, Fut, R>(&self, f: F) -> Result<R, NetError>
    where
        F: FnOnce() -> Fut + Send,
        Fut: std::future::Future<Output = R>,
        R: Send,
    {
        self.run(|| {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|source| NetError::Namespace {
                    what: "build a runtime inside the namespace",
                    source,
                })?;
            Ok(runtime.block_on(f()))
        })?
    }
}

/// Runs `f` on a thread that has entered the network namespace `namespace` (an open
/// `nsfs` file) and ends afterwards, so no other thread changes namespace. Sockets
/// opened and processes spawned by `f` belong to that namespace.
pub fn run_in<F, R>(namespace: std::os::fd::BorrowedFd<'_>, f: F) -> Result<R, NetError>
where
    F: FnOnce() -> R + Send,
    R: Send,
{
    thread::scope(|scope| {
        scope
            .spawn(move || {
                setns(namespace, CloneFlags::CLONE_NEWNET).map_err(|errno| {
                    NetError::Namespace {
                        what: "setns(CLONE_NEWNET)",
                        source: errno.into(),
                    }
                })?;
                Ok(f())
            })
            .join()
            .map_err(|_| NetError::Namespace {
                what: "thread inside the namespace panicked",
                source: std::io::Error::other("panic"),
            })?
    })
}
