//! Cairn's control plane (empty until the replicated store issue lands).
//!
//! It will own the replicated store (openraft + redb, MVCC revisions as
//! `resourceVersion`), the Kubernetes-compatible API server, the scheduler, the
//! reconciliation controllers and the node agent (the kubelet role). Controllers and
//! the node agent reach the API server over loopback like any other client.
