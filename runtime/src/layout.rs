//! Writing OCI image layouts (`oci-layout`, `index.json`, `blobs/sha256/…`): how Cairn
//! builds its own test images without a network, and how tests make images to import.

use std::collections::HashMap;
use std::path::Path;

use oci_spec::image::{
    ANNOTATION_REF_NAME, ImageConfiguration, ImageIndexBuilder, ImageManifestBuilder, MediaType,
    OciLayoutBuilder,
};

use crate::digest::Digest;
use crate::images::{ImageError, descriptor, invalid, io_at};

fn write_blob(dir: &Path, bytes: &[u8]) -> Result<(Digest, u64), ImageError> {
    let digest = Digest::of(bytes);
    let blobs = dir.join("blobs").join("sha256");
    std::fs::create_dir_all(&blobs).map_err(io_at(&blobs))?;
    let path = blobs.join(digest.hex());
    std::fs::write(&path, bytes).map_err(io_at(&path))?;
    Ok((digest, bytes.len() as u64))
}

/// Writes a one-image OCI layout into `dir`: `layers` (tar bytes, gzip or not, lowest
/// first, with their media types) under `config`, named `name` (both the full-name
/// annotation and `org.opencontainers.image.ref.name`). Returns the manifest digest.
pub fn write_oci_layout(
    dir: &Path,
    name: &str,
    config: &ImageConfiguration,
    layers: &[(MediaType, Vec<u8>)],
) -> Result<Digest, ImageError> {
    std::fs::create_dir_all(dir).map_err(io_at(dir))?;
    let config_bytes = config.to_string().map_err(|e| invalid("config", e))?;
    let (config_digest, config_size) = write_blob(dir, config_bytes.as_bytes())?;
    let mut layer_descriptors = Vec::new();
    for (media_type, bytes) in layers {
        let (digest, size) = write_blob(dir, bytes)?;
        layer_descriptors.push(descriptor(media_type.clone(), &digest, size)?);
    }
    let manifest = ImageManifestBuilder::default()
        .schema_version(2u32)
        .media_type(MediaType::ImageManifest)
        .config(descriptor(
            MediaType::ImageConfig,
            &config_digest,
            config_size,
        )?)
        .layers(layer_descriptors)
        .build()
        .map_err(|e| invalid("manifest", e))?;
    let manifest_bytes = manifest.to_string().map_err(|e| invalid("manifest", e))?;
    let (manifest_digest, manifest_size) = write_blob(dir, manifest_bytes.as_bytes())?;
    let mut entry = descriptor(MediaType::ImageManifest, &manifest_digest, manifest_size)?;
    entry.set_annotations(Some(HashMap::from([
        ("io.containerd.image.name".to_owned(), name.to_owned()),
        (ANNOTATION_REF_NAME.to_owned(), name.to_owned()),
    ])));
    let index = ImageIndexBuilder::default()
        .schema_version(2u32)
        .media_type(MediaType::ImageIndex)
        .manifests(vec![entry])
        .build()
        .map_err(|e| invalid("index", e))?;
    let index_path = dir.join("index.json");
    index
        .to_file_pretty(&index_path)
        .map_err(|e| invalid("index.json", e))?;
    let layout = OciLayoutBuilder::default()
        .image_layout_version("1.0.0")
        .build()
        .map_err(|e| invalid("oci-layout", e))?;
    let layout_path = dir.join("oci-layout");
    let text = serde_json::to_string(&layout).map_err(|e| invalid("oci-layout", e))?;
    std::fs::write(&layout_path, text).map_err(io_at(&layout_path))?;
    Ok(manifest_digest)
}
