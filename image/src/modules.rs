//! Choosing the kernel modules of the image: the wanted ones, their `modules.dep`
//! closure and their soft `pre:` dependencies (resolved through `modules.alias`, since
//! the image has no modprobe to do it), written out decompressed with a trimmed index.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::io::{Cursor, Read};
use std::path::Path;

use crate::cpio_archive::Archive;
use crate::kernel::HostKernel;
use crate::{ImageError, io_error};

/// A module's name as the kernel knows it: file stem without `.ko[.xz|.zst]`, `-` as `_`.
pub fn module_name(path: &str) -> String {
    let file = path.rsplit('/').next().unwrap_or(path);
    let stem = file.split(".ko").next().unwrap_or(file);
    stem.replace('-', "_")
}

/// The parsed module index of a kernel.
#[derive(Debug, Default, Clone)]
pub struct KernelIndex {
    /// Name → path relative to the modules directory (possibly compressed).
    pub paths: BTreeMap<String, String>,
    /// Name → hard dependencies, in `modules.dep` order.
    pub deps: BTreeMap<String, Vec<String>>,
    /// Name → soft `pre:` dependencies, as written (names or aliases).
    pub soft_pre: BTreeMap<String, Vec<String>>,
    /// Alias → modules providing it.
    pub aliases: BTreeMap<String, Vec<String>>,
}

impl KernelIndex {
    /// Parses the text of `modules.dep`, `modules.softdep` and `modules.alias`.
    pub fn parse(dep: &str, softdep: &str, alias: &str) -> Self {
        let mut index = KernelIndex::default();
        for line in dep.lines() {
            if let Some((path, deps)) = line.split_once(':') {
                let name = module_name(path.trim());
                index.paths.insert(name.clone(), path.trim().to_owned());
                index
                    .deps
                    .insert(name, deps.split_whitespace().map(module_name).collect());
            }
        }
        for line in softdep.lines() {
            let mut words = line.split_whitespace();
            if words.next() != Some("softdep") {
                continue;
            }
            let Some(module) = words.next() else { continue };
            let mut in_pre = false;
            for word in words {
                match word {
                    "pre:" => in_pre = true,
                    "post:" => in_pre = false,
                    dep if in_pre => index
                        .soft_pre
                        .entry(module.replace('-', "_"))
                        .or_default()
                        .push(dep.to_owned()),
                    _ => {}
                }
            }
        }
        for line in alias.lines() {
            let mut words = line.split_whitespace();
            if let (Some("alias"), Some(name), Some(module)) =
                (words.next(), words.next(), words.next())
                && !name.contains(['*', '?', '['])
            {
                index
                    .aliases
                    .entry(name.to_owned())
                    .or_default()
                    .push(module.replace('-', "_"));
            }
        }
        index
    }

    /// The modules a name or alias stands for: the module itself, or the alias's
    /// providers, preferring the portable `*_generic` ones (they work on any CPU).
    pub fn resolve(&self, name_or_alias: &str) -> Vec<String> {
        let name = name_or_alias.replace('-', "_");
        if self.paths.contains_key(&name) {
            return vec![name];
        }
        let providers: Vec<String> = self
            .aliases
            .get(name_or_alias)
            .into_iter()
            .flatten()
            .filter(|m| self.paths.contains_key(m.as_str()))
            .cloned()
            .collect();
        let generic: Vec<String> = providers
            .iter()
            .filter(|m| m.ends_with("_generic"))
            .cloned()
            .collect();
        if generic.is_empty() {
            providers
        } else {
            generic
        }
    }
}

/// The modules an image ships.
#[derive(Debug, Clone)]
pub struct ModuleSet {
    release: String,
    modules_dir: std::path::PathBuf,
    index: KernelIndex,
    chosen: BTreeSet<String>,
}

impl ModuleSet {
    /// The wanted modules and everything they need, from the kernel's own index.
    pub fn closure(kernel: &HostKernel, wanted: &[&str]) -> Result<Self, ImageError> {
        let read = |file: &str| {
            let path = kernel.modules_dir.join(file);
            std::fs::read_to_string(&path).map_err(io_error("cannot read", &path))
        };
        let index = KernelIndex::parse(
            &read("modules.dep")?,
            &read("modules.softdep").unwrap_or_default(),
            &read("modules.alias").unwrap_or_default(),
        );
        let chosen = closure_of(&index, wanted).map_err(|name| ImageError::UnknownModule {
            release: kernel.release.clone(),
            name,
        })?;
        Ok(Self {
            release: kernel.release.clone(),
            modules_dir: kernel.modules_dir.clone(),
            index,
            chosen,
        })
    }

    /// The names of the chosen modules, sorted.
    pub fn names(&self) -> Vec<String> {
        self.chosen.iter().cloned().collect()
    }

    /// Adds the `.ko` files (decompressed), `modules.dep` and `modules.softdep` under
    /// `lib/modules/<release>/`.
    pub fn add_to(&self, archive: &mut Archive) -> Result<(), ImageError> {
        let base = format!("lib/modules/{}", self.release);
        let mut dep_lines = String::new();
        let mut softdep_lines =
            String::from("# soft dependencies, aliases resolved by cairn-image\n");
        for name in &self.chosen {
            let Some(source) = self.index.paths.get(name) else {
                continue;
            };
            let plain = uncompressed_path(source);
            let data = read_module(&self.modules_dir.join(source))?;
            archive.file(&format!("{base}/{plain}"), 0o644, data);
            let deps: Vec<String> = self
                .index
                .deps
                .get(name)
                .into_iter()
                .flatten()
                .filter_map(|d| self.index.paths.get(d))
                .map(|p| uncompressed_path(p))
                .collect();
            dep_lines.push_str(&format!("{plain}: {}\n", deps.join(" ")));
            let soft: Vec<String> = self
                .index
                .soft_pre
                .get(name)
                .into_iter()
                .flatten()
                .flat_map(|d| self.index.resolve(d))
                .filter(|d| self.chosen.contains(d))
                .collect();
            if !soft.is_empty() {
                softdep_lines.push_str(&format!("softdep {name} pre: {}\n", soft.join(" ")));
            }
        }
        archive.file(
            &format!("{base}/modules.dep"),
            0o644,
            dep_lines.into_bytes(),
        );
        archive.file(
            &format!("{base}/modules.softdep"),
            0o644,
            softdep_lines.into_bytes(),
        );
        Ok(())
    }
}

/// The closure of `wanted` over hard and soft dependencies; an unknown wanted module
/// is an error (its name is returned), an unresolvable soft dependency is not.
pub fn closure_of(index: &KernelIndex, wanted: &[&str]) -> Result<BTreeSet<String>, String> {
    let mut chosen = BTreeSet::new();
    let mut queue: VecDeque<String> = VecDeque::new();
    for name in wanted {
        let name = name.replace('-', "_");
        if !index.paths.contains_key(&name) {
            return Err(name);
        }
        queue.push_back(name);
    }
    while let Some(name) = queue.pop_front() {
        if !chosen.insert(name.clone()) {
            continue;
        }
        for dep in index.deps.get(&name).into_iter().flatten() {
            queue.push_back(dep.clone());
        }
        for soft in index.soft_pre.get(&name).into_iter().flatten() {
            queue.extend(index.resolve(soft));
        }
    }
    Ok(chosen)
}

fn uncompressed_path(path: &str) -> String {
    for suffix in [".xz", ".zst", ".gz"] {
        if let Some(plain) = path.strip_suffix(suffix) {
            return plain.to_owned();
        }
    }
    path.to_owned()
}

/// Reads a module, decompressing `.ko.xz` and `.ko.zst`: the kernel's `finit_module`
/// only takes what it was built to decompress, and an uncompressed file always works.
fn read_module(path: &Path) -> Result<Vec<u8>, ImageError> {
    let raw = std::fs::read(path).map_err(io_error("cannot read", path))?;
    let decompress_error = |source: std::io::Error| ImageError::ModuleDecompress {
        path: path.to_owned(),
        source,
    };
    match path.extension().and_then(|e| e.to_str()) {
        Some("xz") => {
            let mut out = Vec::new();
            liblzma::read::XzDecoder::new(&raw[..])
                .read_to_end(&mut out)
                .map_err(decompress_error)?;
            Ok(out)
        }
        Some("zst") => zstd::decode_all(Cursor::new(raw)).map_err(decompress_error),
        _ => Ok(raw),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEP: &str = "\
kernel/net/netfilter/nf_tables.ko: kernel/net/netfilter/nfnetlink.ko kernel/lib/libcrc32c.ko
kernel/net/netfilter/nfnetlink.ko:
kernel/lib/libcrc32c.ko:
kernel/crypto/crc32c_generic.ko:
kernel/arch/x86/crypto/crc32c-intel.ko:
kernel/drivers/net/veth.ko:
kernel/fs/ext4/ext4.ko:
";
    const SOFTDEP: &str =
        "# comment\nsoftdep libcrc32c pre: crc32c\nsoftdep ext4 pre: crypto-crc32c\n";
    const ALIAS: &str =
        "alias crc32c crc32c_intel\nalias crc32c crc32c_generic\nalias pci:v*d* veth\n";

    #[test]
    fn closure_follows_hard_deps_and_resolved_softdeps_only() {
        let index = KernelIndex::parse(DEP, SOFTDEP, ALIAS);
        let chosen = closure_of(&index, &["nf_tables", "veth"]).expect("closure");
        let names: Vec<&str> = chosen.iter().map(String::as_str).collect();
        assert_eq!(
            names,
            [
                "crc32c_generic",
                "libcrc32c",
                "nf_tables",
                "nfnetlink",
                "veth"
            ]
        );
    }

    #[test]
    fn unknown_wanted_module_is_named() {
        let index = KernelIndex::parse(DEP, SOFTDEP, ALIAS);
        assert_eq!(
            closure_of(&index, &["virtio_nett"]),
            Err("virtio_nett".to_owned())
        );
    }

    #[test]
    fn compressed_names_and_paths() {
        assert_eq!(
            module_name("kernel/arch/x86/crypto/crc32c-intel.ko.xz"),
            "crc32c_intel"
        );
        assert_eq!(uncompressed_path("kernel/a/b.ko.zst"), "kernel/a/b.ko");
        assert_eq!(uncompressed_path("kernel/a/b.ko"), "kernel/a/b.ko");
    }
}
