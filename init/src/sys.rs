//! The system calls boot and shutdown make on the machine, behind [`Syscalls`], so the
//! logic around them (what to mount, in which order to unmount, which module first)
//! is unit-tested with a recording fake instead of root and a VM (youki's pattern).
//!
//! Only this module calls into the kernel for mounts, modules and files of `/proc`,
//! `/sys` and `/dev`; everything is safe code through `nix`.

use std::fs::{self, File};
use std::io;
use std::path::Path;

use nix::errno::Errno;
use nix::kmod::{ModuleInitFlags, finit_module};
use nix::mount::{MntFlags, MsFlags, mount, umount2};

/// The kernel operations PID 1 performs while booting and shutting down.
pub trait Syscalls: Send + Sync {
    /// `mount(2)`.
    fn mount(
        &self,
        source: &str,
        target: &Path,
        fstype: &str,
        flags: MsFlags,
        data: Option<&str>,
    ) -> Result<(), Errno>;
    /// `umount2(2)`, lazily (`MNT_DETACH`) when `detach` is set.
    fn umount(&self, target: &Path, detach: bool) -> Result<(), Errno>;
    /// `mkdir -p`.
    fn create_dir_all(&self, path: &Path) -> io::Result<()>;
    /// Reads a whole (small) file as text.
    fn read_to_string(&self, path: &Path) -> io::Result<String>;
    /// Reads a whole file as bytes.
    fn read(&self, path: &Path) -> io::Result<Vec<u8>>;
    /// Writes a whole (small) file, as for `/proc/sys` and cgroup knobs.
    fn write(&self, path: &Path, contents: &str) -> io::Result<()>;
    /// Creates a symbolic link at `link` pointing to `target`.
    fn symlink(&self, target: &Path, link: &Path) -> io::Result<()>;
    /// `finit_module(2)` of an uncompressed `.ko` file.
    fn load_module(&self, path: &Path) -> Result<(), ModuleLoadError> {
        self.load_module_with(path, "")
    }
    /// `finit_module(2)` with module parameters (`key=value key=value`).
    fn load_module_with(&self, path: &Path, parameters: &str) -> Result<(), ModuleLoadError>;
}

/// Why a kernel module did not load.
#[derive(Debug, thiserror::Error)]
pub enum ModuleLoadError {
    /// The `.ko` file could not be opened.
    #[error("cannot open module file")]
    Open(#[source] io::Error),
    /// The kernel refused the module.
    #[error("kernel refused the module")]
    Refused(#[source] Errno),
}

impl ModuleLoadError {
    /// Whether the module was refused because it is already loaded.
    pub fn is_already_loaded(&self) -> bool {
        matches!(self, ModuleLoadError::Refused(Errno::EEXIST))
    }
}

/// The real kernel.
#[derive(Debug, Default, Clone, Copy)]
pub struct RealSyscalls;

impl Syscalls for RealSyscalls {
    fn mount(
        &self,
        source: &str,
        target: &Path,
        fstype: &str,
        flags: MsFlags,
        data: Option<&str>,
    ) -> Result<(), Errno> {
        mount(Some(source), target, Some(fstype), flags, data)
    }

    fn umount(&self, target: &Path, detach: bool) -> Result<(), Errno> {
        let flags = if detach {
            MntFlags::MNT_DETACH
        } else {
            MntFlags::empty()
        };
        umount2(target, flags)
    }

    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        fs::create_dir_all(path)
    }

    fn read_to_string(&self, path: &Path) -> io::Result<String> {
        fs::read_to_string(path)
    }

    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        fs::read(path)
    }

    fn write(&self, path: &Path, contents: &str) -> io::Result<()> {
        fs::write(path, contents)
    }

    fn symlink(&self, target: &Path, link: &Path) -> io::Result<()> {
        std::os::unix::fs::symlink(target, link)
    }

    fn load_module_with(&self, path: &Path, parameters: &str) -> Result<(), ModuleLoadError> {
        let file = File::open(path).map_err(ModuleLoadError::Open)?;
        let parameters = std::ffi::CString::new(parameters)
            .map_err(|_| ModuleLoadError::Refused(Errno::EINVAL))?;
        finit_module(&file, &parameters, ModuleInitFlags::empty()).map_err(ModuleLoadError::Refused)
    }
}

/// A fake kernel that records every call, serves files from memory, and fails the
/// calls a test tells it to.
#[cfg(test)]
#[allow(missing_docs)]
pub mod fake {
    use std::collections::BTreeMap;
    use std::sync::Mutex;

    use super::*;

    /// One recorded call.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub enum Call {
        Mount { target: String, fstype: String },
        Umount { target: String, detach: bool },
        Mkdir(String),
        Write { path: String, contents: String },
        Symlink { link: String },
        LoadModule(String),
    }

    #[derive(Default)]
    pub struct RecordingSyscalls {
        pub calls: Mutex<Vec<Call>>,
        pub files: Mutex<BTreeMap<String, Vec<u8>>>,
        /// Targets whose mount/umount fails with the given errno (umount: non-detached only).
        pub failing: Mutex<BTreeMap<String, Errno>>,
    }

    impl RecordingSyscalls {
        pub fn with_file(self, path: &str, contents: &str) -> Self {
            self.files
                .lock()
                .unwrap()
                .insert(path.to_owned(), contents.as_bytes().to_vec());
            self
        }

        pub fn failing(self, target: &str, errno: Errno) -> Self {
            self.failing
                .lock()
                .unwrap()
                .insert(target.to_owned(), errno);
            self
        }

        pub fn calls(&self) -> Vec<Call> {
            self.calls.lock().unwrap().clone()
        }

        fn record(&self, call: Call) {
            self.calls.lock().unwrap().push(call);
        }

        fn failure(&self, path: &Path) -> Option<Errno> {
            self.failing
                .lock()
                .unwrap()
                .get(path.to_string_lossy().as_ref())
                .copied()
        }
    }

    impl Syscalls for RecordingSyscalls {
        fn mount(
            &self,
            _source: &str,
            target: &Path,
            fstype: &str,
            _flags: MsFlags,
            _data: Option<&str>,
        ) -> Result<(), Errno> {
            self.record(Call::Mount {
                target: target.display().to_string(),
                fstype: fstype.to_owned(),
            });
            self.failure(target).map_or(Ok(()), Err)
        }

        fn umount(&self, target: &Path, detach: bool) -> Result<(), Errno> {
            self.record(Call::Umount {
                target: target.display().to_string(),
                detach,
            });
            match self.failure(target) {
                Some(errno) if !detach => Err(errno),
                _ => Ok(()),
            }
        }

        fn create_dir_all(&self, path: &Path) -> io::Result<()> {
            self.record(Call::Mkdir(path.display().to_string()));
            Ok(())
        }

        fn read_to_string(&self, path: &Path) -> io::Result<String> {
            self.read(path)
                .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
        }

        fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
            self.files
                .lock()
                .unwrap()
                .get(path.to_string_lossy().as_ref())
                .cloned()
                .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))
        }

        fn write(&self, path: &Path, contents: &str) -> io::Result<()> {
            self.record(Call::Write {
                path: path.display().to_string(),
                contents: contents.to_owned(),
            });
            Ok(())
        }

        fn symlink(&self, _target: &Path, link: &Path) -> io::Result<()> {
            self.record(Call::Symlink {
                link: link.display().to_string(),
            });
            Ok(())
        }

        fn load_module_with(&self, path: &Path, _parameters: &str) -> Result<(), ModuleLoadError> {
            self.record(Call::LoadModule(path.display().to_string()));
            match self.failure(path) {
                Some(errno) => Err(ModuleLoadError::Refused(errno)),
                None => Ok(()),
            }
        }
    }
}
