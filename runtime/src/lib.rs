//! Cairn's container runtime: OCI images, pod sandboxes, containers through youki's
//! `libcontainer` (one `cairn shim` process per container, never inside PID 1),
//! cgroups, logs, exec and probes. It does not configure the node's network (that is
//! `cairn-net`) nor talk to the cluster (the node agent hands it pods).
//!
//! From the bottom up:
//! - [`digest`], [`blobs`], [`layer`], [`images`], [`layout`], [`test_images`]: content
//!   digests, the verified blob store, layer unpacking (refusing hostile archives),
//!   image imports and OCI layouts, the busybox test image; [`pull`]: registry pulls;
//! - [`rootfs`]: unpacked layers and per-container overlay roots;
//! - [`spec`], [`seccomp`], [`plan`], [`quantity`]: from a Kubernetes container to an
//!   OCI runtime spec with secure defaults;
//! - [`shim`], [`container`], [`process`], [`cri_log`], [`cgroups`]: the per-container
//!   shim, the runtime's handle on it, starting helpers, CRI logs, and what is read
//!   from cgroups;
//! - [`sandbox`], [`volumes`], [`probes`], [`pod`]: pods — namespaces, volumes, probes,
//!   restart policies and back-off;
//! - [`runtime`]: the interface the node agent uses.

pub mod blobs;
pub mod cgroups;
pub mod container;
pub mod cri_log;
pub mod digest;
pub mod exec;
pub mod images;
pub mod layer;
pub mod layout;
pub mod plan;
pub mod pod;
pub mod probes;
pub mod process;
pub mod pull;
pub mod quantity;
pub mod rootfs;
pub mod runtime;
pub mod sandbox;
pub mod seccomp;
pub mod shim;
pub mod spec;
mod sys;
pub mod test_images;
pub mod test_registry;
pub mod volumes;
