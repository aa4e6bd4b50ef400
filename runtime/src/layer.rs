//! Unpacking image layers (tar, gzip or zstd) into a directory, safely: every entry
//! must stay inside the target, never write through a symbolic link, and hard links
//! must point at something already inside. Device nodes are refused unless allowed,
//! and the total size and entry count are bounded. OCI whiteouts (`.wh.NAME`,
//! `.wh..wh..opq`) either delete what lower layers put there (a flattened root) or
//! become overlayfs whiteouts (one lower directory per layer).

use std::io::{BufRead, BufReader, Read};
use std::path::{Component, Path, PathBuf};

use tar::EntryType;

/// How a layer's bytes are compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// A plain tar.
    None,
    /// gzip (`application/vnd.oci.image.layer.v1.tar+gzip`, Docker's default).
    Gzip,
    /// zstd (`…tar+zstd`).
    Zstd,
}

impl Compression {
    /// Recognises the compression from the first bytes of the stream.
    pub fn sniff(magic: &[u8]) -> Self {
        if magic.starts_with(&[0x1f, 0x8b]) {
            Compression::Gzip
        } else if magic.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Compression::Zstd
        } else {
            Compression::None
        }
    }
}

/// What to do with whiteout entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Whiteouts {
    /// Delete the named path (or the directory's lower content) in the target: for
    /// layers unpacked one over the other into one directory.
    Apply,
    /// Write overlayfs whiteouts (a 0:0 character device; `trusted.overlay.opaque=y`
    /// on opaque directories): for one lower directory per layer. Needs root.
    Overlay,
}

/// Limits and choices of one unpack.
#[derive(Debug, Clone)]
pub struct UnpackOptions {
    /// How whiteouts are carried out.
    pub whiteouts: Whiteouts,
    /// Whether character and block devices may be created.
    pub allow_devices: bool,
    /// Whether owners (uid/gid) are set from the archive (needs root).
    pub preserve_owners: bool,
    /// The most bytes of file content.
    pub max_bytes: u64,
    /// The most entries.
    pub max_entries: u64,
}

impl Default for UnpackOptions {
    fn default() -> Self {
        Self {
            whiteouts: Whiteouts::Apply,
            allow_devices: false,
            preserve_owners: true,
            max_bytes: 16 << 30,
            max_entries: 1 << 20,
        }
    }
}

/// What an unpack did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Unpacked {
    /// Entries written (files, directories, links, devices).
    pub entries: u64,
    /// Bytes of file content written.
    pub bytes: u64,
    /// Whiteouts carried out.
    pub whiteouts: u64,
}

/// Why a layer was refused or could not be unpacked.
#[derive(Debug, thiserror::Error)]
pub enum LayerError {
    /// The archive itself is broken.
    #[error("layer archive is malformed: {0}")]
    Malformed(#[source] std::io::Error),
    /// An entry's path leaves the target.
    #[error("entry {entry:?} leads outside the root (absolute after '..' or climbing above it)")]
    Escapes {
        /// The entry's path in the archive.
        entry: String,
    },
    /// An entry would be written through a symbolic link.
    #[error("entry {entry:?} goes through the symbolic link {link:?}")]
    ThroughSymlink {
        /// The entry.
        entry: String,
        /// The link on its way.
        link: String,
    },
    /// A link points outside the target.
    #[error("link {entry:?} points outside the root: {target:?}")]
    LinkOutside {
        /// The link entry.
        entry: String,
        /// Its target.
        target: String,
    },
    /// A hard link's target is not there.
    #[error("hard link {entry:?} points at {target:?}, which is not in the layer or below")]
    MissingLinkTarget {
        /// The link entry.
        entry: String,
        /// Its target.
        target: String,
    },
    /// A device node where none are allowed.
    #[error("entry {entry:?} is a device node, which this unpack does not allow")]
    Device {
        /// The entry.
        entry: String,
    },
    /// An entry type that cannot be unpacked.
    #[error("entry {entry:?} has an unsupported type ({kind})")]
    Unsupported {
        /// The entry.
        entry: String,
        /// Its type.
        kind: String,
    },
    /// Over the byte limit.
    #[error("layer content is over the {limit} byte limit")]
    TooLarge {
        /// The limit.
        limit: u64,
    },
    /// Over the entry limit.
    #[error("layer has more than {limit} entries")]
    TooManyEntries {
        /// The limit.
        limit: u64,
    },
    /// Writing into the target failed.
    #[error("{path}: {source}")]
    Io {
        /// Where.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

fn io_at(path: &Path) -> impl FnOnce(std::io::Error) -> LayerError + '_ {
    move |source| LayerError::Io {
        path: path.to_owned(),
        source,
    }
}

/// The entry's path made relative to the target: a leading `/` and `.` are dropped;
/// `..` anywhere is refused (no legitimate layer needs it).
fn relative(entry: &Path) -> Result<PathBuf, LayerError> {
    let mut out = PathBuf::new();
    for component in entry.components() {
        match component {
            Component::Normal(part) => out.push(part),
            Component::CurDir | Component::RootDir => {}
            Component::ParentDir | Component::Prefix(_) => {
                return Err(LayerError::Escapes {
                    entry: entry.display().to_string(),
                });
            }
        }
    }
    Ok(out)
}

/// Makes sure every directory above `relative` exists in `root` and none is a
/// symbolic link (creating missing ones).
fn prepare_parents(root: &Path, relative: &Path, entry: &str) -> Result<(), LayerError> {
    let mut at = root.to_path_buf();
    let Some(parent) = relative.parent() else {
        return Ok(());
    };
    for part in parent.components() {
        at.push(part);
        match std::fs::symlink_metadata(&at) {
            Ok(meta) if meta.file_type().is_symlink() => {
                return Err(LayerError::ThroughSymlink {
                    entry: entry.to_owned(),
                    link: at.strip_prefix(root).unwrap_or(&at).display().to_string(),
                });
            }
            Ok(meta) if meta.is_dir() => {}
            Ok(_) => {
                // A file of a lower layer where this layer has a directory.
                std::fs::remove_file(&at).map_err(io_at(&at))?;
                std::fs::create_dir(&at).map_err(io_at(&at))?;
            }
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                std::fs::create_dir(&at).map_err(io_at(&at))?;
            }
            Err(err) => return Err(io_at(&at)(err)),
        }
    }
    Ok(())
}

/// Removes whatever is at `path` (not following a link there).
fn remove_any(path: &Path) -> Result<(), LayerError> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => std::fs::remove_dir_all(path).map_err(io_at(path)),
        Ok(_) => std::fs::remove_file(path).map_err(io_at(path)),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(err) => Err(io_at(path)(err)),
    }
}

/// Whether a relative symlink target, resolved from the link's directory, climbs above
/// the root. (Absolute targets resolve inside the container's root, so they are fine.)
fn climbs_out(link_dir_depth: usize, target: &Path) -> bool {
    if target.is_absolute() {
        return false;
    }
    let mut depth = link_dir_depth as i64;
    for component in target.components() {
        match component {
            Component::ParentDir => depth -= 1,
            Component::Normal(_) => depth += 1,
            _ => {}
        }
        if depth < 0 {
            return true;
        }
    }
    false
}

fn whiteout(at: &Path, options: &UnpackOptions) -> Result<(), LayerError> {
    match options.whiteouts {
        Whiteouts::Apply => remove_any(at),
        Whiteouts::Overlay => {
            remove_any(at)?;
            nix::sys::stat::mknod(
                at,
                nix::sys::stat::SFlag::S_IFCHR,
                nix::sys::stat::Mode::empty(),
                0,
            )
            .map_err(|e| io_at(at)(e.into()))?;
            Ok(())
        }
    }
}

fn opaque(dir: &Path, options: &UnpackOptions) -> Result<(), LayerError> {
    match options.whiteouts {
        Whiteouts::Apply => {
            // Everything lower layers put in this directory goes; this layer's own
            // entries for it come after the marker or are written again below.
            for child in std::fs::read_dir(dir).map_err(io_at(dir))? {
                let child = child.map_err(io_at(dir))?;
                remove_any(&child.path())?;
            }
            Ok(())
        }
        Whiteouts::Overlay => xattr::set(dir, "trusted.overlay.opaque", b"y").map_err(io_at(dir)),
    }
}

/// Unpacks a layer from `reader` (compression sniffed from its first bytes) into
/// `target`, which must exist.
pub fn unpack(
    reader: impl Read,
    target: &Path,
    options: &UnpackOptions,
) -> Result<Unpacked, LayerError> {
    let mut buffered = BufReader::new(reader);
    let magic = buffered.fill_buf().map_err(LayerError::Malformed)?;
    let stream: Box<dyn Read> = match Compression::sniff(magic) {
        Compression::None => Box::new(buffered),
        Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(buffered)),
        Compression::Zstd => Box::new(
            zstd::stream::read::Decoder::with_buffer(buffered).map_err(LayerError::Malformed)?,
        ),
    };
    let mut archive = tar::Archive::new(stream);
    archive.set_preserve_permissions(true);
    archive.set_preserve_mtime(true);
    archive.set_unpack_xattrs(true);
    archive.set_preserve_ownerships(options.preserve_owners);
    let mut done = Unpacked::default();
    let mut seen = 0u64;
    for entry in archive.entries().map_err(LayerError::Malformed)? {
        let mut entry = entry.map_err(LayerError::Malformed)?;
        seen += 1;
        if seen > options.max_entries {
            return Err(LayerError::TooManyEntries {
                limit: options.max_entries,
            });
        }
        let raw = entry.path().map_err(LayerError::Malformed)?.into_owned();
        let name = raw.display().to_string();
        let relative = relative(&raw)?;
        if relative.as_os_str().is_empty() {
            continue; // the root itself
        }
        prepare_parents(target, &relative, &name)?;
        let at = target.join(&relative);
        let file_name = relative
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        if file_name == ".wh..wh..opq" {
            let dir = at.parent().unwrap_or(target);
            opaque(dir, options)?;
            done.whiteouts += 1;
            continue;
        }
        if let Some(hidden) = file_name.strip_prefix(".wh.") {
            whiteout(&at.with_file_name(hidden), options)?;
            done.whiteouts += 1;
            continue;
        }
        let kind = entry.header().entry_type();
        match kind {
            EntryType::Block | EntryType::Char if !options.allow_devices => {
                return Err(LayerError::Device { entry: name });
            }
            EntryType::Regular
            | EntryType::Continuous
            | EntryType::Directory
            | EntryType::Symlink
            | EntryType::Fifo
            | EntryType::Block
            | EntryType::Char
            | EntryType::Link => {}
            other => {
                // PAX and GNU long-name headers are consumed by the tar reader.
                return Err(LayerError::Unsupported {
                    entry: name,
                    kind: format!("{other:?}"),
                });
            }
        }
        let size = entry.header().size().map_err(LayerError::Malformed)?;
        done.bytes = done.bytes.saturating_add(size);
        if done.bytes > options.max_bytes {
            return Err(LayerError::TooLarge {
                limit: options.max_bytes,
            });
        }
        if kind == EntryType::Symlink {
            let target_path = entry
                .link_name()
                .map_err(LayerError::Malformed)?
                .map(|t| t.into_owned())
                .unwrap_or_default();
            let depth = relative.components().count().saturating_sub(1);
            if climbs_out(depth, &target_path) {
                return Err(LayerError::LinkOutside {
                    entry: name,
                    target: target_path.display().to_string(),
                });
            }
        }
        if kind == EntryType::Link {
            let linked = entry
                .link_name()
                .map_err(LayerError::Malformed)?
                .map(|t| t.into_owned())
                .unwrap_or_default();
            let inside = relative_link(&linked, &name)?;
            prepare_parents(target, &inside, &name)?;
            let source = target.join(&inside);
            if std::fs::symlink_metadata(&source).is_err() {
                return Err(LayerError::MissingLinkTarget {
                    entry: name,
                    target: linked.display().to_string(),
                });
            }
            remove_any(&at)?;
            std::fs::hard_link(&source, &at).map_err(io_at(&at))?;
            done.entries += 1;
            continue;
        }
        // A directory over a directory keeps the content; anything else replaces
        // what a lower layer had (never writing through an old symlink).
        let existing_dir = std::fs::symlink_metadata(&at).is_ok_and(|m| m.is_dir());
        if !(kind == EntryType::Directory && existing_dir) {
            remove_any(&at)?;
        }
        entry.unpack(&at).map_err(io_at(&at))?;
        done.entries += 1;
    }
    Ok(done)
}

/// A hard link's target as a path inside the root.
fn relative_link(linked: &Path, entry: &str) -> Result<PathBuf, LayerError> {
    relative(linked).map_err(|_| LayerError::LinkOutside {
        entry: entry.to_owned(),
        target: linked.display().to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds a tar in memory from (path, kind, content or link target).
    fn tar(entries: &[(&str, EntryType, &str)]) -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        for (path, kind, data) in entries {
            let mut header = tar::Header::new_gnu();
            header.set_entry_type(*kind);
            header.set_mode(if *kind == EntryType::Directory {
                0o755
            } else {
                0o644
            });
            header.set_mtime(1_700_000_000);
            header.set_uid(0);
            header.set_gid(0);
            match kind {
                EntryType::Symlink | EntryType::Link => {
                    header.set_size(0);
                    builder.append_link(&mut header, path, data).unwrap();
                }
                _ => {
                    header.set_size(data.len() as u64);
                    // Bypass the builder's own path checks: hostile names on purpose.
                    let name = header.as_old_mut();
                    name.name[..path.len()].copy_from_slice(path.as_bytes());
                    header.set_cksum();
                    builder.append(&header, data.as_bytes()).unwrap();
                }
            }
        }
        builder.into_inner().unwrap()
    }

    fn options() -> UnpackOptions {
        UnpackOptions {
            preserve_owners: false,
            ..UnpackOptions::default()
        }
    }

    #[test]
    fn layers_stack_with_whiteouts_and_opaque_directories() {
        let root = tempfile::tempdir().unwrap();
        let lower = tar(&[
            ("etc/", EntryType::Directory, ""),
            ("etc/passwd", EntryType::Regular, "root:x:0:0"),
            ("etc/motd", EntryType::Regular, "hello"),
            ("var/cache/a", EntryType::Regular, "a"),
            ("var/cache/b", EntryType::Regular, "b"),
            ("bin/busybox", EntryType::Regular, "#!"),
            ("bin/sh", EntryType::Symlink, "busybox"),
            ("bin/ls", EntryType::Link, "bin/busybox"),
        ]);
        let done = unpack(&lower[..], root.path(), &options()).unwrap();
        assert_eq!(done.entries, 8);
        let upper = tar(&[
            ("etc/.wh.motd", EntryType::Regular, ""),
            ("var/cache/.wh..wh..opq", EntryType::Regular, ""),
            ("var/cache/c", EntryType::Regular, "c"),
            ("etc/passwd", EntryType::Regular, "root:x:0:0:new"),
        ]);
        let done = unpack(&upper[..], root.path(), &options()).unwrap();
        assert_eq!(done.whiteouts, 2);
        let at = |p: &str| root.path().join(p);
        assert!(!at("etc/motd").exists());
        assert!(!at("var/cache/a").exists() && !at("var/cache/b").exists());
        assert_eq!(std::fs::read_to_string(at("var/cache/c")).unwrap(), "c");
        assert_eq!(
            std::fs::read_to_string(at("etc/passwd")).unwrap(),
            "root:x:0:0:new"
        );
        assert_eq!(
            std::fs::read_link(at("bin/sh")).unwrap(),
            Path::new("busybox")
        );
        assert_eq!(std::fs::read_to_string(at("bin/ls")).unwrap(), "#!");
    }

    #[test]
    fn gzip_and_zstd_layers_are_recognised() {
        let plain = tar(&[("a", EntryType::Regular, "x")]);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut gz, &plain).unwrap();
        let gz = gz.finish().unwrap();
        let zst = zstd::encode_all(&plain[..], 3).unwrap();
        for bytes in [plain.clone(), gz, zst] {
            let root = tempfile::tempdir().unwrap();
            unpack(&bytes[..], root.path(), &options()).unwrap();
            assert_eq!(std::fs::read_to_string(root.path().join("a")).unwrap(), "x");
        }
    }

    #[test]
    fn hostile_layers_are_refused_and_write_nothing_outside() {
        let outside = tempfile::tempdir().unwrap();
        let victim = outside.path().join("victim");
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (
                tar(&[("../victim", EntryType::Regular, "x")]),
                "outside the root",
            ),
            (
                tar(&[("a/../../victim", EntryType::Regular, "x")]),
                "outside the root",
            ),
            (
                tar(&[
                    (
                        "escape",
                        EntryType::Symlink,
                        outside.path().to_str().unwrap(),
                    ),
                    ("escape/victim", EntryType::Regular, "x"),
                ]),
                "goes through the symbolic link",
            ),
            (
                tar(&[("up", EntryType::Symlink, "../../../../etc")]),
                "points outside the root",
            ),
            (
                tar(&[("hard", EntryType::Link, "../../etc/passwd")]),
                "points outside the root",
            ),
            (
                tar(&[("hard", EntryType::Link, "not/there")]),
                "not in the layer",
            ),
            (tar(&[("dev/sda", EntryType::Block, "")]), "device node"),
        ];
        for (bytes, expected) in cases {
            let root = tempfile::tempdir().unwrap();
            let err = unpack(&bytes[..], root.path(), &options()).unwrap_err();
            assert!(
                err.to_string().contains(expected),
                "{err} (wanted {expected:?})"
            );
            assert!(!victim.exists());
        }
    }

    #[test]
    #[ignore = "needs root: overlayfs whiteouts are device nodes and trusted xattrs"]
    fn overlay_whiteouts_are_device_nodes_and_opaque_xattrs() {
        use std::os::unix::fs::{FileTypeExt, MetadataExt};
        let root = tempfile::tempdir().unwrap();
        let layer = tar(&[
            ("etc/.wh.motd", EntryType::Regular, ""),
            ("var/cache/.wh..wh..opq", EntryType::Regular, ""),
            ("var/cache/c", EntryType::Regular, "c"),
        ]);
        let overlay = UnpackOptions {
            whiteouts: Whiteouts::Overlay,
            preserve_owners: true,
            ..UnpackOptions::default()
        };
        unpack(&layer[..], root.path(), &overlay).unwrap();
        let motd = std::fs::symlink_metadata(root.path().join("etc/motd")).unwrap();
        assert!(motd.file_type().is_char_device());
        assert_eq!(motd.rdev(), 0);
        assert_eq!(
            xattr::get(root.path().join("var/cache"), "trusted.overlay.opaque").unwrap(),
            Some(b"y".to_vec())
        );
    }

    #[test]
    fn absurd_sizes_and_counts_are_refused() {
        let root = tempfile::tempdir().unwrap();
        let bytes = tar(&[("a", EntryType::Regular, "0123456789")]);
        let small = UnpackOptions {
            max_bytes: 5,
            ..options()
        };
        assert!(matches!(
            unpack(&bytes[..], root.path(), &small),
            Err(LayerError::TooLarge { limit: 5 })
        ));
        let many = tar(&[("a", EntryType::Regular, ""), ("b", EntryType::Regular, "")]);
        let few = UnpackOptions {
            max_entries: 1,
            ..options()
        };
        assert!(matches!(
            unpack(&many[..], root.path(), &few),
            Err(LayerError::TooManyEntries { limit: 1 })
        ));
        let garbage = [0x1f, 0x8b, 0, 1, 2, 3];
        assert!(matches!(
            unpack(&garbage[..], root.path(), &options()),
            Err(LayerError::Malformed(_))
        ));
    }
}
