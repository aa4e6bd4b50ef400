//! Root file systems of containers: every image layer unpacked once into its own
//! directory (overlayfs whiteouts), and per container an overlay mount of those
//! directories (read-only lowers, top layer first) with a private upper directory.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags};

use crate::blobs::{BlobError, BlobStore};
use crate::digest::Digest;
use crate::layer::{LayerError, UnpackOptions, Whiteouts, unpack};

/// Why a root file system could not be prepared.
#[derive(Debug, thiserror::Error)]
pub enum RootfsError {
    /// The layer's blob is missing or damaged.
    #[error(transparent)]
    Blob(#[from] BlobError),
    /// The layer was refused or could not be unpacked.
    #[error("unpacking layer {digest}: {source}")]
    Layer {
        /// The layer.
        digest: Digest,
        /// Why.
        #[source]
        source: LayerError,
    },
    /// A file system operation failed.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// Where.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

fn io<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> RootfsError + 'a {
    move |source| RootfsError::Io {
        what,
        path: path.to_owned(),
        source,
    }
}

/// Unpacked layers, one directory per layer digest.
#[derive(Debug, Clone)]
pub struct LayerCache {
    root: PathBuf,
    /// Held while a layer is unpacked: pods starting together from one image would
    /// otherwise unpack the same layer into one temporary directory at once.
    unpacking: std::sync::Arc<std::sync::Mutex<()>>,
}

impl LayerCache {
    /// The cache at `root` (created if missing).
    pub fn open(root: &Path) -> Result<Self, RootfsError> {
        std::fs::create_dir_all(root.join("sha256")).map_err(io("creating", root))?;
        std::fs::create_dir_all(root.join("empty")).map_err(io("creating", root))?;
        Ok(Self {
            root: root.to_owned(),
            unpacking: std::sync::Arc::default(),
        })
    }

    fn dir(&self, layer: &Digest) -> PathBuf {
        self.root.join("sha256").join(layer.hex())
    }

    /// The directory holding `layer` unpacked, unpacking it from `blobs` first if
    /// needed (into a temporary directory renamed into place when complete).
    pub fn ensure(&self, blobs: &BlobStore, layer: &Digest) -> Result<PathBuf, RootfsError> {
        let dir = self.dir(layer);
        if dir.is_dir() {
            return Ok(dir);
        }
        let _unpacking = self
            .unpacking
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // Another caller may have unpacked it while this one waited.
        if dir.is_dir() {
            return Ok(dir);
        }
        let partial = self.root.join(format!("unpacking-{}", layer.hex()));
        if partial.exists() {
            std::fs::remove_dir_all(&partial).map_err(io("removing", &partial))?;
        }
        std::fs::create_dir(&partial).map_err(io("creating", &partial))?;
        let options = UnpackOptions {
            whiteouts: Whiteouts::Overlay,
            ..UnpackOptions::default()
        };
        let result = blobs
            .open_blob(layer)
            .map_err(RootfsError::from)
            .and_then(|blob| {
                unpack(blob, &partial, &options).map_err(|source| RootfsError::Layer {
                    digest: layer.clone(),
                    source,
                })
            });
        if let Err(err) = result {
            let _ = std::fs::remove_dir_all(&partial);
            return Err(err);
        }
        std::fs::rename(&partial, &dir).map_err(io("renaming", &partial))?;
        Ok(dir)
    }

    /// The lower directories of an image with `layers` (lowest first), unpacking
    /// what is missing; an image without layers gets one empty directory.
    pub fn lowers(
        &self,
        blobs: &BlobStore,
        layers: &[Digest],
    ) -> Result<Vec<PathBuf>, RootfsError> {
        if layers.is_empty() {
            return Ok(vec![self.root.join("empty")]);
        }
        layers
            .iter()
            .map(|layer| self.ensure(blobs, layer))
            .collect()
    }

    /// Removes unpacked layers not in `keep`; returns those removed.
    pub fn retain(&self, keep: &BTreeSet<Digest>) -> Result<Vec<Digest>, RootfsError> {
        let base = self.root.join("sha256");
        let mut removed = Vec::new();
        for entry in std::fs::read_dir(&base).map_err(io("listing", &base))? {
            let entry = entry.map_err(io("listing", &base))?;
            let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            let Ok(digest) = Digest::parse(&format!("sha256:{name}")) else {
                continue;
            };
            if !keep.contains(&digest) {
                std::fs::remove_dir_all(entry.path()).map_err(io("removing", &entry.path()))?;
                removed.push(digest);
            }
        }
        Ok(removed)
    }
}

/// Whether the node's own root is the initramfs (`rootfs`/`ramfs`), which cannot be
/// `pivot_root`ed away: containers then enter their root by moving it over `/` and
/// `chroot`ing into it, as runc's `--no-pivot` does.
pub fn host_root_is_ramfs() -> bool {
    let Ok(mountinfo) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    // The last mount on `/` wins; its file system type follows the ` - ` separator.
    mountinfo
        .lines()
        .rfind(|line| line.split(' ').nth(4) == Some("/"))
        .and_then(|line| line.split(" - ").nth(1))
        .and_then(|rest| rest.split(' ').next())
        .is_some_and(|fstype| fstype == "rootfs" || fstype == "ramfs")
}

/// The overlay mount of one container's root.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct OverlayRoot {
    /// Layer directories, lowest first.
    pub lowers: Vec<PathBuf>,
    /// The container's writable layer.
    pub upper: PathBuf,
    /// overlayfs's work directory (same file system as `upper`).
    pub work: PathBuf,
    /// Where the root is mounted (the bundle's `rootfs`).
    pub target: PathBuf,
}

impl OverlayRoot {
    /// The overlay mount options (lowers top first, as overlayfs wants them).
    pub fn options(&self) -> String {
        let lowers: Vec<String> = self
            .lowers
            .iter()
            .rev()
            .map(|dir| dir.display().to_string())
            .collect();
        format!(
            "lowerdir={},upperdir={},workdir={}",
            lowers.join(":"),
            self.upper.display(),
            self.work.display()
        )
    }

    /// Creates the upper, work and target directories and mounts the overlay.
    pub fn mount(&self) -> Result<(), RootfsError> {
        for dir in [&self.upper, &self.work, &self.target] {
            std::fs::create_dir_all(dir).map_err(io("creating", dir))?;
        }
        nix::mount::mount(
            Some("overlay"),
            &self.target,
            Some("overlay"),
            MsFlags::empty(),
            Some(self.options().as_str()),
        )
        .map_err(|errno| RootfsError::Io {
            what: "mounting an overlay on",
            path: self.target.clone(),
            source: errno.into(),
        })
    }

    /// Unmounts the overlay (lazily, so a process still inside cannot keep it); not
    /// mounted is fine.
    pub fn unmount(target: &Path) -> Result<(), RootfsError> {
        match nix::mount::umount2(target, MntFlags::MNT_DETACH) {
            Ok(()) | Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => Ok(()),
            Err(errno) => Err(RootfsError::Io {
                what: "unmounting",
                path: target.to_owned(),
                source: errno.into(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlay_options_put_the_top_layer_first() {
        let root = OverlayRoot {
            lowers: vec!["/l/base".into(), "/l/top".into()],
            upper: "/c/upper".into(),
            work: "/c/work".into(),
            target: "/c/rootfs".into(),
        };
        assert_eq!(
            root.options(),
            "lowerdir=/l/top:/l/base,upperdir=/c/upper,workdir=/c/work"
        );
    }

    #[test]
    fn an_image_without_layers_gets_an_empty_lower() {
        let dir = tempfile::tempdir().unwrap();
        let cache = LayerCache::open(&dir.path().join("layers")).unwrap();
        let blobs = BlobStore::open(&dir.path().join("blobs")).unwrap();
        let lowers = cache.lowers(&blobs, &[]).unwrap();
        assert_eq!(lowers.len(), 1);
        assert!(lowers[0].is_dir());
    }

    #[test]
    fn pods_unpacking_one_layer_at_once_each_get_it_whole() {
        let dir = tempfile::tempdir().unwrap();
        let cache = LayerCache::open(&dir.path().join("layers")).unwrap();
        let blobs = BlobStore::open(&dir.path().join("blobs")).unwrap();
        let mut layer = tar::Builder::new(Vec::new());
        for n in 0..300 {
            let data = vec![b'x'; 4096];
            let mut header = tar::Header::new_gnu();
            header.set_size(data.len() as u64);
            header.set_mode(0o644);
            header.set_uid(0);
            header.set_gid(0);
            header.set_mtime(0);
            header.set_cksum();
            layer
                .append_data(&mut header, format!("bin/file-{n}"), &data[..])
                .unwrap();
        }
        let digest = blobs.put_bytes(&layer.into_inner().unwrap(), None).unwrap();
        std::thread::scope(|scope| {
            for _ in 0..4 {
                scope.spawn(|| {
                    let unpacked = cache.ensure(&blobs, &digest).unwrap();
                    let files = std::fs::read_dir(unpacked.join("bin")).unwrap().count();
                    assert_eq!(files, 300, "a caller got a partly unpacked layer");
                });
            }
        });
    }
}
