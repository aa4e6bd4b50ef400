//! Finding and writing the client file (`--cairnconfig`, `$CAIRNCONFIG`,
//! `~/.cairn/config`) and choosing the nodes a command acts on.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use cairn_api::client_config::{ClientConfig, Context};

use crate::cli::Global;

/// The client file's path.
pub fn config_path(global: &Global) -> PathBuf {
    if let Some(path) = &global.cairnconfig {
        return path.clone();
    }
    if let Some(path) = std::env::var_os("CAIRNCONFIG") {
        return PathBuf::from(path);
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/root"));
    home.join(".cairn").join("config")
}

/// Reads the client file (an absent file is an empty one).
pub fn load(path: &Path) -> anyhow::Result<ClientConfig> {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            ClientConfig::from_yaml(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
        }
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(ClientConfig::default()),
        Err(err) => Err(err).with_context(|| format!("reading {}", path.display())),
    }
}

/// Writes the client file (mode 0600: it holds a private key).
pub fn save(path: &Path, config: &ClientConfig) -> anyhow::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let text = config.to_yaml().map_err(|e| anyhow::anyhow!(e))?;
    write_private(path, text.as_bytes())
}

/// Replaces `path` with `contents` atomically, readable by its owner only (it holds a
/// private key).
pub fn write_private(path: &Path, contents: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let temporary = path.with_extension("tmp");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&temporary)
        .with_context(|| format!("writing {}", temporary.display()))?;
    file.write_all(contents)?;
    file.sync_all()?;
    std::fs::rename(&temporary, path).with_context(|| format!("writing {}", path.display()))
}

/// The context a command uses.
pub fn context(global: &Global) -> anyhow::Result<(String, Context)> {
    let path = config_path(global);
    let file = load(&path)?;
    let name = global
        .context
        .clone()
        .unwrap_or_else(|| file.context.clone());
    if name.is_empty() {
        bail!(
            "no context in {} (create one with `cairnctl gen config` or `cairnctl cluster create`, or pass --cairnconfig)",
            path.display()
        );
    }
    match file.contexts.get(&name) {
        Some(context) => Ok((name, context.clone())),
        None => bail!(
            "context {name:?} is not in {} (it has: {})",
            path.display(),
            file.contexts.keys().cloned().collect::<Vec<_>>().join(", ")
        ),
    }
}

/// The nodes to act on: `-n`, else `-e`, else the context's nodes, else its endpoints.
pub fn targets(global: &Global, context: Option<&Context>) -> anyhow::Result<Vec<String>> {
    let chosen = if !global.nodes.is_empty() {
        global.nodes.clone()
    } else if !global.endpoints.is_empty() {
        global.endpoints.clone()
    } else if let Some(context) = context {
        if context.nodes.is_empty() {
            context.endpoints.clone()
        } else {
            context.nodes.clone()
        }
    } else {
        Vec::new()
    };
    if chosen.is_empty() {
        bail!("no node to talk to: pass -n/--nodes, or add endpoints to the context");
    }
    Ok(chosen)
}
