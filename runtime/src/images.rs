//! The node's images: which names point at which manifest, and imports of OCI image
//! layouts and `docker save` archives into the blob store, every blob verified against
//! its digest. Multi-architecture indexes resolve to linux/amd64. Blobs no image
//! refers to are garbage.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

use oci_spec::image::{
    ANNOTATION_REF_NAME, Arch, Descriptor, DescriptorBuilder, ImageConfiguration, ImageIndex,
    ImageManifest, ImageManifestBuilder, MediaType, Os,
};
use serde::{Deserialize, Serialize};

use crate::blobs::{BlobError, BlobStore};
use crate::digest::Digest;

/// The largest manifest, index or config accepted.
const MAX_METADATA: u64 = 4 << 20;
/// The largest layer accepted.
const MAX_LAYER: u64 = 16 << 30;
/// Annotation containerd and others put the full image name in.
const CONTAINERD_NAME: &str = "io.containerd.image.name";

/// One image the node has.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageRecord {
    /// Its name (`registry/repository:tag`, or the manifest digest when unnamed).
    pub name: String,
    /// The manifest.
    pub manifest: Digest,
    /// The image configuration.
    pub config: Digest,
    /// The layers, lowest first.
    pub layers: Vec<Digest>,
    /// Bytes of its blobs.
    pub size: u64,
}

/// Why an image operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// The blob store failed or refused a blob.
    #[error(transparent)]
    Blob(#[from] BlobError),
    /// A file of the image could not be read.
    #[error("{path}: {source}")]
    Io {
        /// Where.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A document of the image is not what it should be.
    #[error("{what}: {reason}")]
    Invalid {
        /// Which document (file or digest).
        what: String,
        /// What is wrong.
        reason: String,
    },
    /// Neither an OCI layout (`oci-layout`, `index.json`) nor a `docker save` archive
    /// (`manifest.json`).
    #[error("{0}: not an OCI image layout nor a docker save archive")]
    UnknownFormat(PathBuf),
    /// An index has no linux/amd64 manifest.
    #[error("{0}: no manifest for linux/amd64")]
    NoPlatform(String),
}

/// The full form of an image reference as Docker and the kubelet read it: a registry
/// (`docker.io` when the first part names none), `library/` for official Docker Hub
/// images, and `:latest` when neither a tag nor a digest is given.
pub fn normalize_reference(reference: &str) -> String {
    let (first, rest) = reference.split_once('/').unwrap_or(("", reference));
    let names_registry =
        !first.is_empty() && (first.contains('.') || first.contains(':') || first == "localhost");
    let mut full = if names_registry {
        reference.to_owned()
    } else if first.is_empty() {
        format!("docker.io/library/{rest}")
    } else {
        format!("docker.io/{reference}")
    };
    let last = full.rsplit('/').next().unwrap_or_default();
    if !last.contains(':') && !last.contains('@') {
        full.push_str(":latest");
    }
    full
}

/// Maps an I/O error on `path` to [`ImageError::Io`].
pub(crate) fn io_at(path: &Path) -> impl FnOnce(std::io::Error) -> ImageError + '_ {
    move |source| ImageError::Io {
        path: path.to_owned(),
        source,
    }
}

/// An [`ImageError::Invalid`] about `what`.
pub(crate) fn invalid(what: impl ToString, reason: impl ToString) -> ImageError {
    ImageError::Invalid {
        what: what.to_string(),
        reason: reason.to_string(),
    }
}

fn digest_of(descriptor: &Descriptor) -> Result<Digest, ImageError> {
    Digest::parse(descriptor.digest().as_ref()).map_err(|e| invalid("descriptor", e))
}

/// The images of one node, kept in `<root>/images.json` beside the blob store.
#[derive(Debug)]
pub struct ImageStore {
    blobs: BlobStore,
    root: PathBuf,
    records: Mutex<BTreeMap<String, ImageRecord>>,
}

impl ImageStore {
    /// Opens (or creates) the store under `root`.
    pub fn open(root: &Path) -> Result<Self, ImageError> {
        let blobs = BlobStore::open(root)?;
        let path = root.join("images.json");
        let records = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| invalid(path.display(), e))?,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(err) => return Err(io_at(&path)(err)),
        };
        Ok(Self {
            blobs,
            root: root.to_owned(),
            records: Mutex::new(records),
        })
    }

    /// The blob store under the images.
    pub fn blobs(&self) -> &BlobStore {
        &self.blobs
    }

    fn records(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, ImageRecord>> {
        self.records.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn save(&self, records: &BTreeMap<String, ImageRecord>) -> Result<(), ImageError> {
        let path = self.root.join("images.json");
        let bytes = serde_json::to_vec_pretty(records).map_err(|e| invalid(path.display(), e))?;
        let staged = self.root.join("images.json.partial");
        std::fs::write(&staged, bytes).map_err(io_at(&staged))?;
        std::fs::File::open(&staged)
            .and_then(|f| f.sync_all())
            .map_err(io_at(&staged))?;
        std::fs::rename(&staged, &path).map_err(io_at(&path))
    }

    /// Every image, by name.
    pub fn list(&self) -> Vec<ImageRecord> {
        self.records().values().cloned().collect()
    }

    /// The image called `name`.
    pub fn get(&self, name: &str) -> Option<ImageRecord> {
        self.records().get(name).cloned()
    }

    /// The image a Kubernetes image reference means: the name as given, or else as
    /// normalised (`busybox` → `docker.io/library/busybox:latest`).
    pub fn resolve(&self, reference: &str) -> Option<ImageRecord> {
        let records = self.records();
        records
            .get(reference)
            .or_else(|| records.get(&normalize_reference(reference)))
            .cloned()
    }

    /// The configuration (entrypoint, command, environment, user, …) of `image`.
    pub fn configuration(&self, image: &ImageRecord) -> Result<ImageConfiguration, ImageError> {
        let bytes = self.blobs.read(&image.config, MAX_METADATA)?;
        ImageConfiguration::from_reader(&bytes[..])
            .map_err(|e| invalid(format!("configuration of {}", image.name), e))
    }

    /// Records `image` under its name (its blobs must be in the store already).
    pub fn add(&self, image: ImageRecord) -> Result<(), ImageError> {
        for digest in std::iter::once(&image.manifest)
            .chain(std::iter::once(&image.config))
            .chain(&image.layers)
        {
            if !self.blobs.contains(digest) {
                return Err(invalid(&image.name, format!("blob {digest} is missing")));
            }
        }
        let mut records = self.records();
        records.insert(image.name.clone(), image);
        self.save(&records)
    }

    /// A directory on the store's file system for staging downloads.
    pub fn staging_dir(&self) -> PathBuf {
        self.root.join("ingest")
    }

    /// Forgets the image called `name` (its blobs go at the next [`Self::gc`]).
    pub fn remove(&self, name: &str) -> Result<bool, ImageError> {
        let mut records = self.records();
        let removed = records.remove(name).is_some();
        if removed {
            self.save(&records)?;
        }
        Ok(removed)
    }

    /// Removes every blob no image refers to; returns them.
    pub fn gc(&self) -> Result<Vec<Digest>, ImageError> {
        let records = self.records();
        let keep: BTreeSet<Digest> = records
            .values()
            .flat_map(|r| {
                [r.manifest.clone(), r.config.clone()]
                    .into_iter()
                    .chain(r.layers.iter().cloned())
            })
            .collect();
        Ok(self.blobs.retain(&keep)?)
    }

    /// Imports an OCI image layout or a `docker save` archive, as a directory or a tar
    /// file; returns the images it named.
    pub fn import(&self, path: &Path) -> Result<Vec<ImageRecord>, ImageError> {
        let meta = std::fs::metadata(path).map_err(io_at(path))?;
        if meta.is_dir() {
            return self.import_dir(path);
        }
        let staging = tempfile::Builder::new()
            .prefix("import-")
            .tempdir_in(&self.root)
            .map_err(io_at(&self.root))?;
        let file = std::fs::File::open(path).map_err(io_at(path))?;
        // tar's own unpack refuses entries with `..` and writes nothing outside.
        tar::Archive::new(file)
            .unpack(staging.path())
            .map_err(|e| invalid(path.display(), format!("cannot read the archive: {e}")))?;
        self.import_dir(staging.path()).map_err(|err| match err {
            ImageError::UnknownFormat(_) => ImageError::UnknownFormat(path.to_owned()),
            other => other,
        })
    }

    fn import_dir(&self, dir: &Path) -> Result<Vec<ImageRecord>, ImageError> {
        let imported = if dir.join("index.json").is_file() && dir.join("oci-layout").is_file() {
            self.import_oci_layout(dir)?
        } else if dir.join("manifest.json").is_file() {
            self.import_docker_save(dir)?
        } else {
            return Err(ImageError::UnknownFormat(dir.to_owned()));
        };
        let mut records = self.records();
        for record in &imported {
            records.insert(record.name.clone(), record.clone());
        }
        self.save(&records)?;
        Ok(imported)
    }

    /// Copies a blob of a layout into the store, verified against its descriptor.
    fn copy_blob(
        &self,
        dir: &Path,
        descriptor: &Descriptor,
        limit: u64,
    ) -> Result<Digest, ImageError> {
        let digest = digest_of(descriptor)?;
        let size = descriptor.size();
        if size > limit {
            return Err(BlobError::TooLarge { limit }.into());
        }
        if self.blobs.contains(&digest) {
            return Ok(digest);
        }
        let path = dir.join("blobs").join("sha256").join(digest.hex());
        let file = std::fs::File::open(&path).map_err(io_at(&path))?;
        let (stored, stored_size) = self.blobs.put(file, Some(&digest), size)?;
        if stored_size != size {
            return Err(invalid(
                &digest,
                format!("{stored_size} bytes where the descriptor says {size}"),
            ));
        }
        Ok(stored)
    }

    fn import_oci_layout(&self, dir: &Path) -> Result<Vec<ImageRecord>, ImageError> {
        let index_path = dir.join("index.json");
        let index =
            ImageIndex::from_file(&index_path).map_err(|e| invalid(index_path.display(), e))?;
        let mut imported = Vec::new();
        for descriptor in index.manifests() {
            let name = descriptor
                .annotations()
                .as_ref()
                .and_then(|a| {
                    a.get(CONTAINERD_NAME)
                        .or_else(|| a.get(ANNOTATION_REF_NAME))
                })
                .cloned();
            let manifest_descriptor = self.resolve_platform(dir, descriptor)?;
            let record = self.import_manifest(dir, &manifest_descriptor, name)?;
            imported.push(record);
        }
        Ok(imported)
    }

    /// Follows nested indexes down to the linux/amd64 manifest.
    fn resolve_platform(
        &self,
        dir: &Path,
        descriptor: &Descriptor,
    ) -> Result<Descriptor, ImageError> {
        let mut current = descriptor.clone();
        for _ in 0..4 {
            if *current.media_type() != MediaType::ImageIndex
                && current.media_type().to_string()
                    != "application/vnd.docker.distribution.manifest.list.v2+json"
            {
                return Ok(current);
            }
            let digest = self.copy_blob(dir, &current, MAX_METADATA)?;
            let bytes = self.blobs.read(&digest, MAX_METADATA)?;
            let index = ImageIndex::from_reader(&bytes[..]).map_err(|e| invalid(&digest, e))?;
            current = linux_amd64(&index)
                .cloned()
                .ok_or_else(|| ImageError::NoPlatform(digest.to_string()))?;
        }
        Err(invalid(descriptor.digest(), "indexes nested too deep"))
    }

    fn import_manifest(
        &self,
        dir: &Path,
        descriptor: &Descriptor,
        name: Option<String>,
    ) -> Result<ImageRecord, ImageError> {
        let manifest_digest = self.copy_blob(dir, descriptor, MAX_METADATA)?;
        let bytes = self.blobs.read(&manifest_digest, MAX_METADATA)?;
        let manifest =
            ImageManifest::from_reader(&bytes[..]).map_err(|e| invalid(&manifest_digest, e))?;
        let config = self.copy_blob(dir, manifest.config(), MAX_METADATA)?;
        let mut size = descriptor.size() + manifest.config().size();
        let mut layers = Vec::new();
        for layer in manifest.layers() {
            layers.push(self.copy_blob(dir, layer, MAX_LAYER)?);
            size += layer.size();
        }
        Ok(ImageRecord {
            name: name.unwrap_or_else(|| manifest_digest.to_string()),
            manifest: manifest_digest,
            config,
            layers,
            size,
        })
    }

    fn import_docker_save(&self, dir: &Path) -> Result<Vec<ImageRecord>, ImageError> {
        #[derive(Deserialize)]
        #[serde(rename_all = "PascalCase")]
        struct Entry {
            config: String,
            #[serde(default)]
            repo_tags: Option<Vec<String>>,
            layers: Vec<String>,
        }
        let manifest_path = dir.join("manifest.json");
        let text = std::fs::read(&manifest_path).map_err(io_at(&manifest_path))?;
        let entries: Vec<Entry> =
            serde_json::from_slice(&text).map_err(|e| invalid(manifest_path.display(), e))?;
        let inside = |name: &str| -> Result<PathBuf, ImageError> {
            let relative = Path::new(name);
            if relative.is_absolute()
                || relative
                    .components()
                    .any(|c| matches!(c, std::path::Component::ParentDir))
            {
                return Err(invalid(
                    "manifest.json",
                    format!("{name:?} leads outside the archive"),
                ));
            }
            Ok(dir.join(relative))
        };
        let mut imported = Vec::new();
        for entry in entries {
            let config_path = inside(&entry.config)?;
            let config_file = std::fs::File::open(&config_path).map_err(io_at(&config_path))?;
            let (config, config_size) = self.blobs.put(config_file, None, MAX_METADATA)?;
            let config_bytes = self.blobs.read(&config, MAX_METADATA)?;
            let image_config = ImageConfiguration::from_reader(&config_bytes[..])
                .map_err(|e| invalid(&entry.config, e))?;
            let diff_ids = image_config.rootfs().diff_ids();
            if diff_ids.len() != entry.layers.len() {
                return Err(invalid(
                    &entry.config,
                    format!(
                        "{} diff ids for {} layers",
                        diff_ids.len(),
                        entry.layers.len()
                    ),
                ));
            }
            let mut layers = Vec::new();
            let mut descriptors = Vec::new();
            let mut size = config_size;
            for (layer, diff_id) in entry.layers.iter().zip(diff_ids) {
                let path = inside(layer)?;
                let file = std::fs::File::open(&path).map_err(io_at(&path))?;
                // Docker saves layers uncompressed: the digest is the diff id.
                let expected = Digest::parse(diff_id).map_err(|e| invalid(&entry.config, e))?;
                let (digest, layer_size) = self.blobs.put(file, Some(&expected), MAX_LAYER)?;
                descriptors.push(descriptor(MediaType::ImageLayer, &digest, layer_size)?);
                layers.push(digest);
                size += layer_size;
            }
            let manifest = ImageManifestBuilder::default()
                .schema_version(2u32)
                .media_type(MediaType::ImageManifest)
                .config(descriptor(MediaType::ImageConfig, &config, config_size)?)
                .layers(descriptors)
                .build()
                .map_err(|e| invalid("manifest", e))?;
            let manifest_bytes = manifest.to_string().map_err(|e| invalid("manifest", e))?;
            let manifest_digest = self.blobs.put_bytes(manifest_bytes.as_bytes(), None)?;
            size += manifest_bytes.len() as u64;
            let names = entry.repo_tags.unwrap_or_default();
            let names = if names.is_empty() {
                vec![manifest_digest.to_string()]
            } else {
                names
            };
            for name in names {
                imported.push(ImageRecord {
                    name,
                    manifest: manifest_digest.clone(),
                    config: config.clone(),
                    layers: layers.clone(),
                    size,
                });
            }
        }
        Ok(imported)
    }
}

/// A descriptor of a stored blob.
pub fn descriptor(
    media_type: MediaType,
    digest: &Digest,
    size: u64,
) -> Result<Descriptor, ImageError> {
    let oci_digest: oci_spec::image::Digest =
        digest.to_string().parse().map_err(|e| invalid(digest, e))?;
    DescriptorBuilder::default()
        .media_type(media_type)
        .digest(oci_digest)
        .size(size)
        .build()
        .map_err(|e| invalid(digest, e))
}

/// The linux/amd64 manifest an image index lists, if it lists one.
pub(crate) fn linux_amd64(index: &ImageIndex) -> Option<&Descriptor> {
    index.manifests().iter().find(|m| {
        m.platform()
            .as_ref()
            .is_some_and(|p| *p.os() == Os::Linux && *p.architecture() == Arch::Amd64)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::write_oci_layout;
    use oci_spec::image::{ImageConfigurationBuilder, RootFsBuilder};

    fn layer(file: &str, content: &str) -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        let mut header = tar::Header::new_gnu();
        header.set_size(content.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        builder
            .append_data(&mut header, file, content.as_bytes())
            .unwrap();
        builder.into_inner().unwrap()
    }

    #[test]
    fn references_are_normalised_as_docker_does() {
        assert_eq!(
            normalize_reference("busybox"),
            "docker.io/library/busybox:latest"
        );
        assert_eq!(normalize_reference("me/app:1"), "docker.io/me/app:1");
        assert_eq!(
            normalize_reference("cairn.test/busybox"),
            "cairn.test/busybox:latest"
        );
        assert_eq!(
            normalize_reference("localhost:5000/x"),
            "localhost:5000/x:latest"
        );
        assert_eq!(
            normalize_reference("busybox@sha256:abc"),
            "docker.io/library/busybox@sha256:abc"
        );
    }

    fn config(layers: &[&[u8]]) -> ImageConfiguration {
        let diff_ids: Vec<String> = layers.iter().map(|l| Digest::of(l).to_string()).collect();
        ImageConfigurationBuilder::default()
            .architecture(Arch::Amd64)
            .os(Os::Linux)
            .rootfs(
                RootFsBuilder::default()
                    .typ("layers")
                    .diff_ids(diff_ids)
                    .build()
                    .unwrap(),
            )
            .build()
            .unwrap()
    }

    fn tar_dir(dir: &Path, into: &Path) {
        let mut builder = tar::Builder::new(std::fs::File::create(into).unwrap());
        builder.append_dir_all(".", dir).unwrap();
        builder.finish().unwrap();
    }

    #[test]
    fn an_oci_layout_imports_verified_and_unreferenced_blobs_are_collected() {
        let work = tempfile::tempdir().unwrap();
        let layout = work.path().join("layout");
        let base = layer("bin/hello", "hi");
        let manifest = write_oci_layout(
            &layout,
            "cairn.test/hello:1",
            &config(&[&base]),
            &[(MediaType::ImageLayer, base.clone())],
        )
        .unwrap();
        let archive = work.path().join("hello.tar");
        tar_dir(&layout, &archive);

        let store = ImageStore::open(&work.path().join("store")).unwrap();
        let imported = store.import(&archive).unwrap();
        assert_eq!(imported.len(), 1);
        assert_eq!(imported[0].name, "cairn.test/hello:1");
        assert_eq!(imported[0].manifest, manifest);
        assert_eq!(imported[0].layers, [Digest::of(&base)]);
        // Importing the directory again is idempotent.
        store.import(&layout).unwrap();
        assert_eq!(store.list().len(), 1);

        let stray = store.blobs().put_bytes(b"nobody's", None).unwrap();
        assert_eq!(store.gc().unwrap(), [stray]);
        // The record survives a reopen.
        let store = ImageStore::open(&work.path().join("store")).unwrap();
        assert_eq!(store.get("cairn.test/hello:1").unwrap().manifest, manifest);
        assert!(store.remove("cairn.test/hello:1").unwrap());
        assert_eq!(store.gc().unwrap().len(), 3, "manifest, config and layer");
        assert!(store.blobs().list().unwrap().is_empty());
    }

    #[test]
    fn a_tampered_blob_is_refused_and_nothing_is_recorded() {
        let work = tempfile::tempdir().unwrap();
        let layout = work.path().join("layout");
        let base = layer("etc/motd", "genuine");
        write_oci_layout(
            &layout,
            "cairn.test/motd:1",
            &config(&[&base]),
            &[(MediaType::ImageLayer, base.clone())],
        )
        .unwrap();
        let blob = layout.join("blobs/sha256").join(Digest::of(&base).hex());
        std::fs::write(&blob, layer("etc/motd", "evil!!!")).unwrap();
        let store = ImageStore::open(&work.path().join("store")).unwrap();
        let err = store.import(&layout).unwrap_err();
        assert!(
            err.to_string().contains("does not match its digest"),
            "{err}"
        );
        assert!(store.list().is_empty());
    }

    #[test]
    fn a_docker_save_archive_imports_with_its_tags_and_diff_ids_checked() {
        let work = tempfile::tempdir().unwrap();
        let saved = work.path().join("saved");
        std::fs::create_dir_all(saved.join("abc")).unwrap();
        let base = layer("bin/tool", "x");
        std::fs::write(saved.join("abc/layer.tar"), &base).unwrap();
        let config_text = config(&[&base]).to_string().unwrap();
        std::fs::write(saved.join("cfg.json"), &config_text).unwrap();
        let manifest = r#"[{"Config":"cfg.json","RepoTags":["tool:latest","tool:1"],"Layers":["abc/layer.tar"]}]"#;
        std::fs::write(saved.join("manifest.json"), manifest).unwrap();
        let archive = work.path().join("tool.tar");
        tar_dir(&saved, &archive);

        let store = ImageStore::open(&work.path().join("store")).unwrap();
        let imported = store.import(&archive).unwrap();
        let names: Vec<&str> = imported.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["tool:latest", "tool:1"]);
        assert_eq!(imported[0].layers, [Digest::of(&base)]);
        // The synthesised manifest is a real OCI manifest in the store.
        let bytes = store.blobs().read(&imported[0].manifest, 1 << 20).unwrap();
        let manifest = ImageManifest::from_reader(&bytes[..]).unwrap();
        assert_eq!(manifest.layers().len(), 1);

        // A layer that is not what the config's diff ids say is refused.
        std::fs::write(saved.join("abc/layer.tar"), layer("bin/tool", "y")).unwrap();
        let other = ImageStore::open(&work.path().join("other")).unwrap();
        assert!(matches!(
            other.import(&saved),
            Err(ImageError::Blob(BlobError::Mismatch { .. }))
        ));
    }

    /// Rewrites a one-image layout so that `index.json` points at a multi-platform
    /// index listing the image for `platforms` (the real manifest for each).
    fn make_multi_platform(layout: &Path, platforms: &[(Os, Arch)]) {
        use oci_spec::image::{ImageIndexBuilder, PlatformBuilder};
        let top = ImageIndex::from_file(layout.join("index.json")).unwrap();
        let image = top.manifests()[0].clone();
        let entries: Vec<Descriptor> = platforms
            .iter()
            .map(|(os, arch)| {
                let mut entry = image.clone();
                entry.set_annotations(None);
                if *arch != Arch::Amd64 {
                    // Another platform's manifest, absent here: choosing it would fail.
                    let other = Digest::of(format!("{arch} manifest").as_bytes());
                    entry.set_digest(other.to_string().parse().unwrap());
                }
                entry.set_platform(Some(
                    PlatformBuilder::default()
                        .os(os.clone())
                        .architecture(arch.clone())
                        .build()
                        .unwrap(),
                ));
                entry
            })
            .collect();
        let nested = ImageIndexBuilder::default()
            .schema_version(2u32)
            .media_type(MediaType::ImageIndex)
            .manifests(entries)
            .build()
            .unwrap()
            .to_string()
            .unwrap();
        let digest = Digest::of(nested.as_bytes());
        std::fs::write(layout.join("blobs/sha256").join(digest.hex()), &nested).unwrap();
        let mut pointer = descriptor(MediaType::ImageIndex, &digest, nested.len() as u64).unwrap();
        pointer.set_annotations(image.annotations().clone());
        ImageIndexBuilder::default()
            .schema_version(2u32)
            .manifests(vec![pointer])
            .build()
            .unwrap()
            .to_file(layout.join("index.json"))
            .unwrap();
    }

    #[test]
    fn a_multi_platform_index_resolves_to_linux_amd64_or_says_there_is_none() {
        let work = tempfile::tempdir().unwrap();
        let base = layer("bin/hello", "hi");
        let make = |dir: &str| {
            let layout = work.path().join(dir);
            let manifest = write_oci_layout(
                &layout,
                "cairn.test/multi:1",
                &config(&[&base]),
                &[(MediaType::ImageLayer, base.clone())],
            )
            .unwrap();
            (layout, manifest)
        };
        let (layout, manifest) = make("multi");
        make_multi_platform(
            &layout,
            &[(Os::Linux, Arch::ARM64), (Os::Linux, Arch::Amd64)],
        );
        let store = ImageStore::open(&work.path().join("store")).unwrap();
        let imported = store.import(&layout).unwrap();
        assert_eq!(imported[0].name, "cairn.test/multi:1");
        assert_eq!(imported[0].manifest, manifest);

        let (arm_only, _) = make("arm-only");
        make_multi_platform(&arm_only, &[(Os::Linux, Arch::ARM64)]);
        let err = store.import(&arm_only).unwrap_err();
        assert!(matches!(err, ImageError::NoPlatform(_)), "{err}");
    }

    #[test]
    fn a_directory_that_is_no_image_says_so() {
        let work = tempfile::tempdir().unwrap();
        let store = ImageStore::open(&work.path().join("store")).unwrap();
        let empty = work.path().join("empty");
        std::fs::create_dir(&empty).unwrap();
        let err = store.import(&empty).unwrap_err();
        assert!(err.to_string().contains("not an OCI image layout"), "{err}");
    }
}
