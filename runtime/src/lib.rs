//! Cairn's container runtime (empty until the container runtime issue lands).
//!
//! It will own OCI images (registry pull, tarball import, content store, layer unpack),
//! pod sandboxes, containers through youki's `libcontainer` (one `cairn shim` process
//! per container, never inside PID 1), cgroups, logs, exec and probes.
//! It must not touch the network configuration (that is `cairn-net`) or the cluster
//! store (that is `cairn-cluster`).
