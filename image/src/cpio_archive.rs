//! An initramfs in the making: directories, files, device nodes and links, written
//! as a cpio "newc" archive (the format the kernel unpacks) and compressed with zstd.

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::path::Path;

use crate::{ImageError, io_error};

const S_IFDIR: u32 = 0o040_000;
const S_IFREG: u32 = 0o100_000;
const S_IFCHR: u32 = 0o020_000;
const S_IFLNK: u32 = 0o120_000;

/// zstd level: high ratio, and the kernel's decompression speed barely depends on it.
const ZSTD_LEVEL: i32 = 19;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Entry {
    Dir { mode: u32 },
    File { mode: u32, data: Vec<u8> },
    CharDevice { mode: u32, major: u32, minor: u32 },
    Symlink { target: String },
}

/// The contents of an initramfs, by path (relative, no leading `/`).
#[derive(Debug, Default, Clone)]
pub struct Archive {
    entries: BTreeMap<String, Entry>,
}

impl Archive {
    fn parents(&mut self, path: &str) {
        let mut prefix = String::new();
        let parts: Vec<&str> = path.split('/').collect();
        for part in &parts[..parts.len().saturating_sub(1)] {
            if !prefix.is_empty() {
                prefix.push('/');
            }
            prefix.push_str(part);
            self.entries
                .entry(prefix.clone())
                .or_insert(Entry::Dir { mode: 0o755 });
        }
    }

    /// Adds a directory (and its parents).
    pub fn dir(&mut self, path: &str, mode: u32) {
        self.parents(path);
        self.entries.insert(path.to_owned(), Entry::Dir { mode });
    }

    /// Adds a regular file (and its parent directories).
    pub fn file(&mut self, path: &str, mode: u32, data: Vec<u8>) {
        self.parents(path);
        self.entries
            .insert(path.to_owned(), Entry::File { mode, data });
    }

    /// Adds a character device node, e.g. `dev/console` (5, 1): the kernel opens it
    /// for init's stdio before anything is mounted.
    pub fn char_device(&mut self, path: &str, mode: u32, major: u32, minor: u32) {
        self.parents(path);
        self.entries
            .insert(path.to_owned(), Entry::CharDevice { mode, major, minor });
    }

    /// Adds a symbolic link.
    pub fn symlink(&mut self, path: &str, target: &str) {
        self.parents(path);
        self.entries.insert(
            path.to_owned(),
            Entry::Symlink {
                target: target.to_owned(),
            },
        );
    }

    /// Paths in the archive, parents before children.
    pub fn paths(&self) -> impl Iterator<Item = &str> {
        self.entries.keys().map(String::as_str)
    }

    /// Writes the uncompressed cpio archive.
    pub fn write_cpio<W: Write>(&self, mut out: W) -> io::Result<W> {
        for (ino, (path, entry)) in (1u32..).zip(&self.entries) {
            let builder = cpio::newc::Builder::new(path).ino(ino).uid(0).gid(0);
            let (builder, data): (_, &[u8]) = match entry {
                Entry::Dir { mode } => (builder.mode(S_IFDIR | mode).nlink(2), &[]),
                Entry::File { mode, data } => (builder.mode(S_IFREG | mode), data),
                Entry::CharDevice { mode, major, minor } => (
                    builder
                        .mode(S_IFCHR | mode)
                        .rdev_major(*major)
                        .rdev_minor(*minor),
                    &[],
                ),
                Entry::Symlink { target } => (builder.mode(S_IFLNK | 0o777), target.as_bytes()),
            };
            let size = u32::try_from(data.len())
                .map_err(|_| io::Error::other(format!("{path} is over 4 GiB")))?;
            let mut writer = builder.write(out, size);
            writer.write_all(data)?;
            out = writer.finish()?;
        }
        cpio::newc::trailer(out)
    }

    /// Writes the zstd-compressed archive to `path`; returns its size in bytes.
    pub fn write_zstd(&self, path: &Path) -> Result<u64, ImageError> {
        let partial = path.with_extension("partial");
        let file = std::fs::File::create(&partial).map_err(io_error("cannot create", &partial))?;
        let write = || -> io::Result<()> {
            let mut encoder = zstd::stream::Encoder::new(file, ZSTD_LEVEL)?;
            encoder.include_checksum(true)?;
            let encoder = self.write_cpio(encoder)?;
            encoder.finish()?.sync_all()
        };
        write().map_err(io_error("cannot write", &partial))?;
        std::fs::rename(&partial, path).map_err(io_error("cannot rename to", path))?;
        std::fs::metadata(path)
            .map(|m| m.len())
            .map_err(io_error("cannot stat", path))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn archive_round_trips_through_a_cpio_reader_with_parents_first() {
        let mut archive = Archive::default();
        archive.file("lib/modules/6.1/kernel/net/veth.ko", 0o644, b"ko".to_vec());
        archive.char_device("dev/console", 0o600, 5, 1);
        archive.file("init", 0o755, b"#!".to_vec());
        archive.symlink("bin/sh", "busybox");
        let bytes = archive.write_cpio(Vec::new()).expect("write");

        let mut seen = Vec::new();
        let mut input = &bytes[..];
        loop {
            let reader = cpio::NewcReader::new(input).expect("entry");
            if reader.entry().is_trailer() {
                break;
            }
            let entry = reader.entry();
            seen.push((
                entry.name().to_owned(),
                entry.mode(),
                entry.rdev_major(),
                entry.rdev_minor(),
            ));
            input = reader.finish().expect("next");
        }
        let names: Vec<&str> = seen.iter().map(|e| e.0.as_str()).collect();
        let position = |n: &str| names.iter().position(|x| *x == n).unwrap();
        assert!(position("lib") < position("lib/modules/6.1/kernel/net"));
        assert!(
            position("lib/modules/6.1/kernel/net") < position("lib/modules/6.1/kernel/net/veth.ko")
        );
        let console = seen.iter().find(|e| e.0 == "dev/console").unwrap();
        assert_eq!((console.1, console.2, console.3), (S_IFCHR | 0o600, 5, 1));
        let init = seen.iter().find(|e| e.0 == "init").unwrap();
        assert_eq!(init.1, S_IFREG | 0o755);
    }
}
