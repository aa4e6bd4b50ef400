//! Cairn's scheduler: decides which node each unbound pod runs on.
//!
//! The decision is pure and synchronous ([`Cluster::schedule`]): filters drop the nodes
//! a pod cannot use (resources against allocatable, node selector and required
//! affinity, taints and tolerations, host ports, cordoned and not-ready nodes) and
//! scores rank the rest (least allocated, balanced CPU/memory, preferred affinity,
//! PreferNoSchedule taints, spreading the pods of one owner over nodes), with
//! kube-scheduler's weights and failure messages. [`run`] feeds it from the API server
//! (watches on Nodes and Pods) and writes its decisions back as bindings and events.

pub mod cluster;
pub mod filter;
pub mod node;
pub mod pod;
pub mod quantity;
pub mod resources;
pub mod run;

pub use cluster::{Cluster, Unschedulable};
pub use node::NodeInfo;
pub use pod::PodInfo;
pub use run::{SchedulerOptions, run};
