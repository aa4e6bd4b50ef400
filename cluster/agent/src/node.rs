//! The Node object the agent registers and keeps current: who the node is (labels,
//! addresses, pod CIDR, system info), what it offers (capacity and allocatable), and
//! its conditions. Pure: [`NodeFacts::detect`] reads the machine, the rest builds
//! objects from facts so unit tests can check them.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    DaemonEndpoint, Node, NodeAddress, NodeCondition, NodeDaemonEndpoints, NodeSpec, NodeStatus,
    NodeSystemInfo,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;

/// The label every node carries with its name.
pub const HOSTNAME_LABEL: &str = "kubernetes.io/hostname";
/// The label (empty value) of control-plane nodes.
pub const CONTROL_PLANE_LABEL: &str = "node-role.kubernetes.io/control-plane";
/// Pods a node runs at most, as the kubelet's default `maxPods`.
pub const DEFAULT_MAX_PODS: u32 = 110;
/// Memory the kubelet keeps back from pods by default (its hard eviction threshold
/// `memory.available<100Mi`).
const EVICTION_RESERVE_BYTES: u64 = 100 * 1024 * 1024;

/// What the node offers pods.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Capacity {
    /// Logical CPUs.
    pub cpus: u32,
    /// Memory, bytes.
    pub memory_bytes: u64,
    /// Pods at most.
    pub pods: u32,
}

/// Versions and identifiers the Node's `status.nodeInfo` reports.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SystemInfo {
    /// The kernel release (`uname -r`).
    pub kernel_version: String,
    /// The boot id, new at every boot.
    pub boot_id: String,
    /// The machine's DMI product UUID, where the firmware has one.
    pub system_uuid: String,
    /// The operating system image (`Cairn 0.1.0`).
    pub os_image: String,
    /// The agent's Kubernetes version (`kubectl get nodes` prints it as VERSION).
    pub kubelet_version: String,
}

/// Everything the Node object says about this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeFacts {
    /// The node's name (its hostname).
    pub name: String,
    /// Whether it is a control plane.
    pub control_plane: bool,
    /// Its addresses on the cluster network (`InternalIP`).
    pub addresses: Vec<String>,
    /// The range its pods take addresses from.
    pub pod_cidr: Option<String>,
    /// The port of its machine API, which serves the pods' logs and exec sessions
    /// (published as the kubelet's endpoint).
    pub machine_api_port: Option<u16>,
    /// What it offers.
    pub capacity: Capacity,
    /// Versions and identifiers.
    pub system: SystemInfo,
}

impl NodeFacts {
    /// The facts of the machine this runs on, for a node named `name` reached at
    /// `addresses`, reporting `kubelet_version` and `os_image`.
    pub fn detect(
        name: &str,
        control_plane: bool,
        addresses: Vec<String>,
        pod_cidr: Option<String>,
        kubelet_version: &str,
        os_image: &str,
    ) -> Self {
        let read = |path: &str| {
            std::fs::read_to_string(path)
                .map(|s| s.trim().to_owned())
                .unwrap_or_default()
        };
        let cpus = std::thread::available_parallelism()
            .map(|n| u32::try_from(n.get()).unwrap_or(u32::MAX))
            .unwrap_or(1);
        Self {
            name: name.to_owned(),
            control_plane,
            addresses,
            pod_cidr,
            machine_api_port: None,
            capacity: Capacity {
                cpus,
                memory_bytes: memory_total(&read("/proc/meminfo")).unwrap_or(0),
                pods: DEFAULT_MAX_PODS,
            },
            system: SystemInfo {
                kernel_version: read("/proc/sys/kernel/osrelease"),
                boot_id: read("/proc/sys/kernel/random/boot_id"),
                system_uuid: read("/sys/class/dmi/id/product_uuid"),
                os_image: os_image.to_owned(),
                kubelet_version: kubelet_version.to_owned(),
            },
        }
    }

    /// The labels the agent owns on its Node.
    pub fn labels(&self) -> BTreeMap<String, String> {
        let mut labels = BTreeMap::from([
            (HOSTNAME_LABEL.to_owned(), self.name.clone()),
            ("kubernetes.io/os".to_owned(), "linux".to_owned()),
            ("kubernetes.io/arch".to_owned(), ARCH.to_owned()),
            ("beta.kubernetes.io/os".to_owned(), "linux".to_owned()),
            ("beta.kubernetes.io/arch".to_owned(), ARCH.to_owned()),
        ]);
        if self.control_plane {
            labels.insert(CONTROL_PLANE_LABEL.to_owned(), String::new());
        }
        labels
    }

    /// The Node to create when the node registers.
    pub fn node(&self) -> Node {
        Node {
            metadata: ObjectMeta {
                name: Some(self.name.clone()),
                labels: Some(self.labels()),
                ..ObjectMeta::default()
            },
            spec: Some(NodeSpec {
                pod_cidr: self.pod_cidr.clone(),
                pod_cidrs: self.pod_cidr.clone().map(|cidr| vec![cidr]),
                ..NodeSpec::default()
            }),
            status: None,
        }
    }

    /// The Node's status now: `previous` (the status on the server) keeps each
    /// condition's transition time while its value holds.
    pub fn status(&self, previous: Option<&NodeStatus>, now: Timestamp) -> NodeStatus {
        let resources = |memory: u64| {
            BTreeMap::from([
                ("cpu".to_owned(), Quantity(self.capacity.cpus.to_string())),
                (
                    "memory".to_owned(),
                    Quantity(format!("{}Ki", memory / 1024)),
                ),
                ("pods".to_owned(), Quantity(self.capacity.pods.to_string())),
            ])
        };
        let allocatable_memory = self
            .capacity
            .memory_bytes
            .saturating_sub(EVICTION_RESERVE_BYTES);
        let condition = |kind: &str, status: &str, reason: &str, message: &str| {
            let transition = previous
                .and_then(|p| p.conditions.as_ref())
                .and_then(|c| c.iter().find(|c| c.type_ == kind))
                .filter(|c| c.status == status)
                .and_then(|c| c.last_transition_time.clone())
                .unwrap_or(Time(now));
            NodeCondition {
                type_: kind.to_owned(),
                status: status.to_owned(),
                reason: Some(reason.to_owned()),
                message: Some(message.to_owned()),
                last_heartbeat_time: Some(Time(now)),
                last_transition_time: Some(transition),
            }
        };
        let mut addresses: Vec<NodeAddress> = self
            .addresses
            .iter()
            .map(|address| NodeAddress {
                type_: "InternalIP".to_owned(),
                address: address.clone(),
            })
            .collect();
        addresses.push(NodeAddress {
            type_: "Hostname".to_owned(),
            address: self.name.clone(),
        });
        NodeStatus {
            capacity: Some(resources(self.capacity.memory_bytes)),
            allocatable: Some(resources(allocatable_memory)),
            conditions: Some(vec![
                condition(
                    "MemoryPressure",
                    "False",
                    "KubeletHasSufficientMemory",
                    "cairn agent has sufficient memory available",
                ),
                condition(
                    "DiskPressure",
                    "False",
                    "KubeletHasNoDiskPressure",
                    "cairn agent has no disk pressure",
                ),
                condition(
                    "PIDPressure",
                    "False",
                    "KubeletHasSufficientPID",
                    "cairn agent has sufficient PID available",
                ),
                condition(
                    "Ready",
                    "True",
                    "KubeletReady",
                    "cairn agent is posting ready status",
                ),
            ]),
            addresses: Some(addresses),
            daemon_endpoints: self.machine_api_port.map(|port| NodeDaemonEndpoints {
                kubelet_endpoint: Some(DaemonEndpoint {
                    port: i32::from(port),
                }),
            }),
            node_info: Some(NodeSystemInfo {
                architecture: ARCH.to_owned(),
                boot_id: self.system.boot_id.clone(),
                container_runtime_version: format!("cairn://{}", env!("CARGO_PKG_VERSION")),
                kernel_version: self.system.kernel_version.clone(),
                kube_proxy_version: String::new(),
                kubelet_version: self.system.kubelet_version.clone(),
                machine_id: self.system.boot_id.replace('-', ""),
                operating_system: "linux".to_owned(),
                os_image: self.system.os_image.clone(),
                system_uuid: self.system.system_uuid.clone(),
                ..NodeSystemInfo::default()
            }),
            ..NodeStatus::default()
        }
    }
}

/// Kubernetes' name of this machine's architecture.
const ARCH: &str = match std::env::consts::ARCH.as_bytes() {
    b"x86_64" => "amd64",
    b"aarch64" => "arm64",
    _ => std::env::consts::ARCH,
};

/// `MemTotal` of `/proc/meminfo`, in bytes.
fn memory_total(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(control_plane: bool) -> NodeFacts {
        NodeFacts {
            name: "cp-1".into(),
            control_plane,
            addresses: vec!["10.5.0.2".into()],
            pod_cidr: Some("10.244.1.0/24".into()),
            machine_api_port: Some(50000),
            capacity: Capacity {
                cpus: 2,
                memory_bytes: 2048 * 1024 * 1024,
                pods: DEFAULT_MAX_PODS,
            },
            system: SystemInfo {
                kubelet_version: "v1.37.0-cairn.0.1.0".into(),
                ..SystemInfo::default()
            },
        }
    }

    #[test]
    fn control_planes_carry_the_role_label_workers_do_not() {
        assert_eq!(facts(true).labels()[CONTROL_PLANE_LABEL], "");
        assert!(!facts(false).labels().contains_key(CONTROL_PLANE_LABEL));
        assert_eq!(facts(false).labels()[HOSTNAME_LABEL], "cp-1");
        assert_eq!(
            facts(true).node().spec.unwrap().pod_cidr.as_deref(),
            Some("10.244.1.0/24")
        );
    }

    #[test]
    fn allocatable_keeps_back_the_eviction_reserve_and_conditions_keep_their_transition() {
        let first = facts(true).status(None, Timestamp::UNIX_EPOCH);
        assert_eq!(first.capacity.as_ref().unwrap()["memory"].0, "2097152Ki");
        assert_eq!(first.allocatable.as_ref().unwrap()["memory"].0, "1994752Ki");
        assert_eq!(first.allocatable.as_ref().unwrap()["cpu"].0, "2");
        let later = Timestamp::from_second(60).unwrap();
        let second = facts(true).status(Some(&first), later);
        let ready = second
            .conditions
            .unwrap()
            .into_iter()
            .find(|c| c.type_ == "Ready")
            .unwrap();
        assert_eq!(ready.status, "True");
        assert_eq!(ready.last_heartbeat_time, Some(Time(later)));
        assert_eq!(
            ready.last_transition_time,
            Some(Time(Timestamp::UNIX_EPOCH))
        );
        let addresses = second.addresses.unwrap();
        assert_eq!(addresses[0].type_, "InternalIP");
        assert_eq!(addresses[1].address, "cp-1");
    }

    #[test]
    fn memory_total_reads_meminfo_in_kib() {
        let meminfo = "MemTotal:        2030412 kB\nMemFree:          1 kB\n";
        assert_eq!(memory_total(meminfo), Some(2030412 * 1024));
        assert_eq!(memory_total("nothing"), None);
    }
}
