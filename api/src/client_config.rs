//! The client file of `cairnctl` (`~/.cairn/config`, or `$CAIRNCONFIG`): named
//! contexts, each with the nodes to talk to and the credentials to use.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The whole file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientConfig {
    /// The context used when none is named.
    #[serde(default)]
    pub context: String,
    /// Contexts by name.
    #[serde(default)]
    pub contexts: BTreeMap<String, Context>,
}

/// One cluster's connection settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Context {
    /// Machine API addresses (`host:port` or `host`) used when no node is named.
    pub endpoints: Vec<String>,
    /// Nodes targeted by default (by address); `endpoints` when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nodes: Vec<String>,
    /// The cluster CA certificate (PEM) the nodes' certificates must chain to.
    pub ca: String,
    /// The client certificate (PEM), whose Organization is the role.
    pub crt: String,
    /// The client key (PEM).
    pub key: String,
}

impl ClientConfig {
    /// Parses the file's YAML.
    pub fn from_yaml(text: &str) -> Result<Self, String> {
        serde_saphyr::from_str(text).map_err(|e| e.to_string())
    }

    /// Renders the file as YAML.
    pub fn to_yaml(&self) -> Result<String, String> {
        serde_saphyr::to_string(self).map_err(|e| e.to_string())
    }

    /// Adds or replaces a context and makes it the current one.
    pub fn merge(&mut self, name: &str, context: Context) {
        self.contexts.insert(name.to_owned(), context);
        self.context = name.to_owned();
    }
}
