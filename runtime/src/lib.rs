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
//!   hostile archives.

pub mod blobs;
pub mod digest;
pub mod layer;
