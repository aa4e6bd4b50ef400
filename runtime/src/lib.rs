//! Cairn's container runtime: OCI images, pod sandboxes, containers through youki's
//! `libcontainer` (one `cairn shim` process per container, never inside PID 1),
//! cgroups, logs, exec and probes. It does not touch the network configuration (that is
//! `cairn-net`) or the cluster store (`cairn-store`).
//!
//! Built so far, the bottom of the image path:
//! - [`digest`]: content digests (`sha256:…`), parsed, computed while streaming;
//! - [`blobs`]: the content-addressed blob store, verified on the way in and out,
//!   with garbage collection;
//! - [`layer`]: unpacking layers (tar, gzip, zstd) with OCI whiteouts, refusing
//!   hostile archives;
//! - [`images`]: names → manifests, imports of OCI layouts and `docker save`
//!   archives (verified), linux/amd64 out of indexes, garbage collection;
//! - [`layout`]: writing OCI layouts;
//! - [`test_images`]: test images built without a network (busybox).

pub mod blobs;
pub mod digest;
pub mod images;
pub mod layer;
pub mod layout;
pub mod test_images;
