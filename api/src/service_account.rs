//! The names a pod's ServiceAccount credentials are found by, shared by the API
//! server's admission (which mounts them) and the controllers (which publish them).

/// The account a pod runs as when it names none, and that every namespace has.
pub const DEFAULT_ACCOUNT: &str = "default";
/// The ConfigMap with the cluster CA in every namespace.
pub const ROOT_CA_CONFIG_MAP: &str = "kube-root-ca.crt";
/// The key of the CA (PEM) in [`ROOT_CA_CONFIG_MAP`].
pub const ROOT_CA_KEY: &str = "ca.crt";
/// Where the credentials appear in each container.
pub const MOUNT_PATH: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
