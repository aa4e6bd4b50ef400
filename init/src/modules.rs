//! Loading the kernel modules shipped in the image, in dependency order.
//!
//! The image carries `lib/modules/<release>/` with the `.ko` files (uncompressed: the
//! kernel refuses compressed ones through `finit_module`), a `modules.dep` in depmod's
//! format and a `modules.softdep` whose names the image builder already resolved from
//! aliases (`softdep libcrc32c pre: crc32c_generic`). There is no modprobe: this module
//! is it. A module that fails is reported and boot goes on; modules that depend on
//! it are skipped with a reason.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tracing::{debug, warn};

use crate::error_chain;
use crate::sys::Syscalls;

/// The modules of an image and what each needs loaded first.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ModuleIndex {
    /// Module name → path of its `.ko` relative to the modules directory.
    paths: BTreeMap<String, PathBuf>,
    /// Module name → modules that must be loaded before it (hard and soft `pre:`).
    before: BTreeMap<String, BTreeSet<String>>,
}

/// The kernel's name for a module file: `kernel/net/veth.ko` → `veth`, with `-` as `_`.
pub fn module_name(path: &str) -> String {
    let file = path.rsplit('/').next().unwrap_or(path);
    let stem = file
        .strip_suffix(".ko")
        .or_else(|| file.split_once(".ko.").map(|(stem, _)| stem))
        .unwrap_or(file);
    stem.replace('-', "_")
}

impl ModuleIndex {
    /// Builds the index from the text of `modules.dep` and `modules.softdep`.
    pub fn parse(dep: &str, softdep: &str) -> Self {
        let mut index = ModuleIndex::default();
        for line in dep.lines() {
            let Some((path, deps)) = line.split_once(':') else {
                continue;
            };
            let name = module_name(path.trim());
            index.paths.insert(name.clone(), PathBuf::from(path.trim()));
            let needs = index.before.entry(name).or_default();
            needs.extend(deps.split_whitespace().map(module_name));
        }
        for line in softdep.lines() {
            let mut words = line.split_whitespace();
            if words.next() != Some("softdep") {
                continue;
            }
            let Some(module) = words.next().map(|m| m.replace('-', "_")) else {
                continue;
            };
            let mut in_pre = false;
            for word in words {
                match word {
                    "pre:" => in_pre = true,
                    "post:" => in_pre = false,
                    dep if in_pre => {
                        index
                            .before
                            .entry(module.clone())
                            .or_default()
                            .insert(dep.replace('-', "_"));
                    }
                    _ => {}
                }
            }
        }
        index
    }

    /// Number of modules in the image.
    pub fn len(&self) -> usize {
        self.paths.len()
    }

    /// Whether the image ships no modules.
    pub fn is_empty(&self) -> bool {
        self.paths.is_empty()
    }

    /// Every module of the image, each after everything it needs. Soft dependencies the
    /// image does not ship (built in, or left out) are ignored; cycles are broken
    /// instead of looping.
    pub fn load_order(&self) -> Vec<String> {
        let mut order = Vec::new();
        let mut done = BTreeSet::new();
        let mut visiting = BTreeSet::new();
        for name in self.paths.keys() {
            self.visit(name, &mut visiting, &mut done, &mut order);
        }
        order
    }

    fn visit(
        &self,
        name: &str,
        visiting: &mut BTreeSet<String>,
        done: &mut BTreeSet<String>,
        order: &mut Vec<String>,
    ) {
        if done.contains(name) || !self.paths.contains_key(name) || !visiting.insert(name.into()) {
            return;
        }
        if let Some(needs) = self.before.get(name) {
            for dep in needs {
                self.visit(dep, visiting, done, order);
            }
        }
        visiting.remove(name);
        done.insert(name.to_owned());
        order.push(name.to_owned());
    }

    /// The path of a module's file relative to the modules directory.
    pub fn path_of(&self, name: &str) -> Option<&Path> {
        self.paths
            .get(&name.replace('-', "_"))
            .map(PathBuf::as_path)
    }

    /// What `name` needs loaded first (shipped modules only).
    pub fn needs(&self, name: &str) -> impl Iterator<Item = &String> {
        self.before
            .get(name)
            .into_iter()
            .flatten()
            .filter(|dep| self.paths.contains_key(dep.as_str()))
    }
}

/// The outcome of loading every module of the image.
#[derive(Debug, Default)]
pub struct ModuleReport {
    /// Loaded now.
    pub loaded: Vec<String>,
    /// Already in the kernel.
    pub already_loaded: Vec<String>,
    /// Refused, with the reason.
    pub failed: Vec<(String, String)>,
    /// Not tried because something they need failed.
    pub skipped: Vec<(String, String)>,
    /// Time spent, including the drivers' device probes.
    pub elapsed: Duration,
}

/// Parameters the image's modules are loaded with: without `max_bonds=0` the bonding
/// driver makes a `bond0` of its own (balance-rr) as it loads, which a machine config's
/// `bond0` would find in its way.
pub const BOOT_PARAMETERS: &[(&str, &str)] = &[("bonding", "max_bonds=0")];

/// The parameters `name` is loaded with at boot.
pub fn boot_parameters(name: &str) -> &'static str {
    BOOT_PARAMETERS
        .iter()
        .find(|(module, _)| *module == name)
        .map_or("", |(_, parameters)| parameters)
}

/// Loads every module listed in `dir/modules.dep`, in dependency order.
pub fn load_all(sys: &dyn Syscalls, dir: &Path) -> Result<ModuleReport, std::io::Error> {
    let started = Instant::now();
    let dep = sys.read_to_string(&dir.join("modules.dep"))?;
    let softdep = sys
        .read_to_string(&dir.join("modules.softdep"))
        .unwrap_or_default();
    let index = ModuleIndex::parse(&dep, &softdep);
    let mut report = ModuleReport::default();
    let mut unusable = BTreeSet::new();
    for name in index.load_order() {
        let failed_dependency = index
            .needs(&name)
            .find(|dep| unusable.contains(dep.as_str()))
            .cloned();
        if let Some(missing) = failed_dependency {
            warn!(module = %name, needs = %missing, "module skipped: a module it needs failed");
            report
                .skipped
                .push((name.clone(), format!("needs {missing}, which failed")));
            unusable.insert(name);
            continue;
        }
        let Some(relative) = index.paths.get(&name) else {
            continue;
        };
        let module_started = Instant::now();
        match sys.load_module_with(&dir.join(relative), boot_parameters(&name)) {
            Ok(()) => {
                debug!(module = %name, elapsed_us = module_started.elapsed().as_micros(), "module loaded");
                report.loaded.push(name);
            }
            Err(err) if err.is_already_loaded() => report.already_loaded.push(name),
            Err(err) => {
                let reason = error_chain(&err);
                warn!(module = %name, error = %reason, "module failed to load");
                report.failed.push((name.clone(), reason));
                unusable.insert(name);
            }
        }
    }
    report.elapsed = started.elapsed();
    Ok(report)
}

#[cfg(test)]
mod tests {
    use nix::errno::Errno;

    use super::*;
    use crate::sys::fake::{Call, RecordingSyscalls};

    const DEP: &str = "\
kernel/drivers/net/virtio_net.ko: kernel/drivers/net/net_failover.ko kernel/net/core/failover.ko
kernel/drivers/net/net_failover.ko: kernel/net/core/failover.ko
kernel/net/core/failover.ko:
kernel/drivers/virtio/virtio_pci.ko: kernel/drivers/virtio/virtio_pci_modern_dev.ko kernel/drivers/virtio/virtio_ring.ko kernel/drivers/virtio/virtio.ko
kernel/drivers/virtio/virtio_pci_modern_dev.ko:
kernel/drivers/virtio/virtio_ring.ko:
kernel/drivers/virtio/virtio.ko:
kernel/lib/libcrc32c.ko:
kernel/crypto/crc32c_generic.ko:
kernel/net/netfilter/nf_tables.ko: kernel/lib/libcrc32c.ko kernel/net/netfilter/nfnetlink.ko
kernel/net/netfilter/nfnetlink.ko:
";
    const SOFTDEP: &str =
        "# resolved by the image builder\nsoftdep libcrc32c pre: crc32c_generic\n";

    fn position(order: &[String], name: &str) -> usize {
        order
            .iter()
            .position(|n| n == name)
            .unwrap_or_else(|| panic!("{name} not in {order:?}"))
    }

    #[test]
    fn names_follow_the_kernel_convention() {
        assert_eq!(
            module_name("kernel/drivers/net/virtio_net.ko"),
            "virtio_net"
        );
        assert_eq!(
            module_name("kernel/crypto/crc32c-generic.ko.xz"),
            "crc32c_generic"
        );
    }

    #[test]
    fn every_module_comes_after_its_dependencies_and_softdeps() {
        let index = ModuleIndex::parse(DEP, SOFTDEP);
        let order = index.load_order();
        assert_eq!(order.len(), index.len());
        assert!(position(&order, "failover") < position(&order, "net_failover"));
        assert!(position(&order, "net_failover") < position(&order, "virtio_net"));
        assert!(position(&order, "virtio_ring") < position(&order, "virtio_pci"));
        assert!(position(&order, "crc32c_generic") < position(&order, "libcrc32c"));
        assert!(position(&order, "libcrc32c") < position(&order, "nf_tables"));
    }

    #[test]
    fn cycles_and_missing_softdeps_do_not_hang_or_drop_modules() {
        let index = ModuleIndex::parse(
            "a.ko: b.ko\nb.ko: a.ko\nc.ko:\n",
            "softdep c pre: not_shipped\n",
        );
        let order = index.load_order();
        assert_eq!(order.len(), 3);
    }

    #[test]
    fn a_failed_module_is_reported_and_its_dependents_skipped_while_the_rest_load() {
        let dir = Path::new("/lib/modules/6.1");
        let sys = RecordingSyscalls::default()
            .with_file("/lib/modules/6.1/modules.dep", DEP)
            .with_file("/lib/modules/6.1/modules.softdep", SOFTDEP)
            .failing(
                "/lib/modules/6.1/kernel/net/core/failover.ko",
                Errno::ENOEXEC,
            );
        let report = load_all(&sys, dir).expect("index readable");
        assert_eq!(report.failed.len(), 1);
        assert_eq!(report.failed[0].0, "failover");
        let skipped: Vec<&str> = report.skipped.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(skipped, ["net_failover", "virtio_net"]);
        assert!(report.loaded.contains(&"virtio_pci".to_owned()));
        assert!(report.loaded.contains(&"nf_tables".to_owned()));
        let loads = sys
            .calls()
            .into_iter()
            .filter(|c| matches!(c, Call::LoadModule(_)))
            .count();
        assert_eq!(loads, index_len() - 2);
    }

    #[test]
    fn already_loaded_modules_are_not_failures() {
        let sys = RecordingSyscalls::default()
            .with_file("/m/modules.dep", "kernel/a.ko:\n")
            .failing("/m/kernel/a.ko", Errno::EEXIST);
        let report = load_all(&sys, Path::new("/m")).expect("index");
        assert_eq!(report.already_loaded, ["a"]);
        assert!(report.failed.is_empty());
    }

    fn index_len() -> usize {
        ModuleIndex::parse(DEP, SOFTDEP).len()
    }
}
