//! Picking kernel modules for the ramdisk: resolve a curated list of driver names to files
//! in `lib/modules/<version>`, close it over dependencies, decompress the files, and write
//! the `modules.dep` / `modules.alias` that busybox `modprobe` reads at boot.
//!
//! Dependencies come from the tree's `modules.dep` when it has one (an installed system),
//! else from each module's own `.modinfo` `depends=` (an extracted Debian linux-image
//! package has no `modules.dep`: its postinst runs depmod). `softdep=` modules are shipped
//! too (busybox ignores softdeps, but the kernel's `request_module()` finds them through
//! `modules.alias`, e.g. libcrc32c asking for "crypto-crc32c").
//!
//! Compressed modules (`.ko.xz`, `.ko.zst`, `.ko.gz`, used by Debian trixie and Ubuntu) are
//! decompressed at build time: busybox's modprobe only reads compressed modules when built
//! with the matching feature, and the initramfs is compressed as a whole anyway. The module
//! signature is appended before compression, so it survives.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::io::Read;
use std::path::{Path, PathBuf};

use crate::elf;

/// Largest decompressed module accepted (mlx5_core, the largest in the default set, is
/// about 2 MiB; this only guards against a corrupt or hostile file).
const MAX_MODULE_BYTES: u64 = 256 << 20;

/// Modules shipped by default: paravirtual devices, the common server storage
/// controllers and NICs, USB storage (virtual media) and the filesystems a config drive or
/// virtual-media parameter file uses. Names are module names (`-` and `_` are equivalent).
pub const DEFAULT_MODULES: &[&str] = &[
    // Paravirtual (QEMU/KVM, most clouds)
    "virtio_pci",
    "virtio_pci_modern_dev",
    "virtio_pci_legacy_dev",
    "virtio_net",
    "virtio_blk",
    "virtio_scsi",
    "virtio_rng",
    // Storage controllers and disk drivers
    "ahci",
    "libahci",
    "ata_piix",
    "nvme",
    "nvme_core",
    "scsi_mod",
    "sd_mod",
    "sr_mod",
    "megaraid_sas",
    "mpt3sas",
    "hpsa",
    "smartpqi",
    // NICs
    "e1000",
    "e1000e",
    "igb",
    "igc",
    "ixgbe",
    "i40e",
    "ice",
    "bnxt_en",
    "mlx5_core",
    "tg3",
    "af_packet",
    // USB (virtual media, keyboards for the debug shell)
    "xhci_pci",
    "ehci_pci",
    "usb_storage",
    "uas",
    "usbhid",
    "hid_generic",
    // Filesystems: config drive (iso9660/vfat), virtual-media floppy, EFI variables
    "isofs",
    "vfat",
    "efivarfs",
];

/// Errors from reading a module tree.
#[derive(Debug, thiserror::Error)]
pub enum ModulesError {
    /// An I/O error on a path.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// A module needed as a dependency is neither a file in the tree nor built in.
    #[error("module {module} depends on {dependency}, which is neither in the tree nor built in")]
    MissingDependency {
        /// The module that needs it.
        module: String,
        /// The missing module's name.
        dependency: String,
    },
    /// Dependencies form a cycle (depmod refuses those; the tree is corrupt).
    #[error("dependency cycle through module {0}")]
    Cycle(String),
    /// A module file could not be decompressed.
    #[error("{path}: cannot decompress: {reason}")]
    Decompress {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
    /// A module file is not a valid module.
    #[error("{path}: {source}")]
    Elf {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: elf::ElfError,
    },
    /// The directory holds no kernel modules.
    #[error("{0}: no kernel modules found")]
    Empty(PathBuf),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> ModulesError + '_ {
    move |source| ModulesError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Module name for a file name or path: directory and `.ko[.xz|.zst|.gz]` stripped, `-`
/// replaced by `_` (the kernel and modprobe treat them as the same character).
pub fn module_name(path: &str) -> String {
    let file = path.rsplit('/').next().unwrap_or(path);
    let stem = strip_compression(file);
    let stem = stem.strip_suffix(".ko").unwrap_or(stem);
    stem.replace('-', "_")
}

fn strip_compression(path: &str) -> &str {
    for ext in [".xz", ".zst", ".gz"] {
        if let Some(s) = path.strip_suffix(ext) {
            if s.ends_with(".ko") {
                return s;
            }
        }
    }
    path
}

fn is_module_file(path: &str) -> bool {
    strip_compression(path).ends_with(".ko")
}

/// Parses `modules.dep` text into `module path → dependency paths` (paths relative to the
/// module directory, as written). Blank lines and `#` comments are ignored; lines without a
/// colon are skipped.
pub fn parse_modules_dep(text: &str) -> BTreeMap<String, Vec<String>> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| l.split_once(':'))
        .map(|(m, deps)| {
            (
                m.trim().to_string(),
                deps.split_whitespace().map(str::to_string).collect(),
            )
        })
        .collect()
}

/// Closes `wanted` over `deps` (name → names it needs) and returns every needed module in
/// a load order (each module after all its dependencies), ties broken by the order of
/// `wanted` then by name, so the result is deterministic. Names in `builtin` count as
/// present and are left out. Names in `wanted` that are unknown are returned separately;
/// an unknown dependency is an error.
pub fn resolve(
    wanted: &[String],
    deps: &BTreeMap<String, Vec<String>>,
    builtin: &BTreeSet<String>,
) -> Result<(Vec<String>, Vec<String>), ModulesError> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        Visiting,
        Done,
    }
    fn visit(
        name: &str,
        parent: &str,
        deps: &BTreeMap<String, Vec<String>>,
        builtin: &BTreeSet<String>,
        marks: &mut BTreeMap<String, Mark>,
        order: &mut Vec<String>,
    ) -> Result<(), ModulesError> {
        match marks.get(name) {
            Some(Mark::Done) => return Ok(()),
            Some(Mark::Visiting) => return Err(ModulesError::Cycle(name.to_string())),
            None => {}
        }
        let Some(needs) = deps.get(name) else {
            if builtin.contains(name) {
                marks.insert(name.to_string(), Mark::Done);
                return Ok(());
            }
            return Err(ModulesError::MissingDependency {
                module: parent.to_string(),
                dependency: name.to_string(),
            });
        };
        marks.insert(name.to_string(), Mark::Visiting);
        let mut sorted: Vec<&String> = needs.iter().collect();
        sorted.sort();
        for d in sorted {
            visit(d, name, deps, builtin, marks, order)?;
        }
        marks.insert(name.to_string(), Mark::Done);
        order.push(name.to_string());
        Ok(())
    }

    let mut marks = BTreeMap::new();
    let mut order = Vec::new();
    let mut unknown = Vec::new();
    for w in wanted {
        let w = module_name(w);
        if !deps.contains_key(&w) {
            if !builtin.contains(&w) && !unknown.contains(&w) {
                unknown.push(w);
            }
            continue;
        }
        visit(&w, &w, deps, builtin, &mut marks, &mut order)?;
    }
    Ok((order, unknown))
}

/// `modules.dep` line for one module: its path, then all its (transitive) dependencies.
/// As depmod writes them, the list reads as a reverse load order: modprobe loads the last
/// one first (module-init-tools/kmod convention, which busybox follows).
fn transitive_deps<'a>(
    name: &str,
    deps: &'a BTreeMap<String, Vec<String>>,
    load_order: &[String],
) -> Vec<&'a str> {
    let mut needed = BTreeSet::new();
    let mut stack = vec![name];
    while let Some(n) = stack.pop() {
        if let Some(ds) = deps.get(n) {
            for d in ds {
                if deps.contains_key(d) && needed.insert(d.as_str()) {
                    stack.push(d);
                }
            }
        }
    }
    let mut out: Vec<&str> = load_order
        .iter()
        .filter_map(|n| needed.get(n.as_str()).copied())
        .collect();
    out.reverse();
    out
}

/// One module chosen for the ramdisk.
#[derive(Debug, Clone)]
pub struct Module {
    /// Module name (`_` form).
    pub name: String,
    /// Path relative to the module directory, compression suffix removed.
    pub path: String,
    /// Decompressed `.ko` bytes.
    pub data: Vec<u8>,
    /// `alias=` patterns from its `.modinfo`.
    pub aliases: Vec<String>,
}

/// The modules chosen for a ramdisk and the index files describing them.
#[derive(Debug, Clone)]
pub struct Selection {
    /// Kernel version (the module directory's name).
    pub kernel_version: String,
    /// Chosen modules in load order.
    pub modules: Vec<Module>,
    /// Requested names found neither as files nor built in (the kernel may not have them).
    pub not_found: Vec<String>,
    /// `modules.dep` for the chosen modules.
    pub modules_dep: String,
    /// `modules.alias` for the chosen modules.
    pub modules_alias: String,
    /// The tree's `modules.builtin`, verbatim (busybox modprobe reads it so that asking for a
    /// built-in module is not an error).
    pub modules_builtin: String,
}

impl Selection {
    /// Total decompressed size of the chosen modules.
    pub fn total_bytes(&self) -> u64 {
        self.modules.iter().map(|m| m.data.len() as u64).sum()
    }
}

/// A `lib/modules/<version>` directory.
#[derive(Debug)]
pub struct ModuleTree {
    dir: PathBuf,
    version: String,
    /// Module name → path relative to `dir` (as on disk, with any compression suffix).
    files: BTreeMap<String, String>,
    builtin: BTreeSet<String>,
    modules_dep: Option<BTreeMap<String, Vec<String>>>,
}

impl ModuleTree {
    /// Indexes the module files under `dir` (a `lib/modules/<version>` directory).
    pub fn open(dir: &Path) -> Result<Self, ModulesError> {
        let version = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let mut found = Vec::new();
        walk(dir, dir, &mut found)?;
        found.sort();
        if found.is_empty() {
            return Err(ModulesError::Empty(dir.to_path_buf()));
        }
        let mut files: BTreeMap<String, String> = BTreeMap::new();
        for rel in found {
            let name = module_name(&rel);
            // depmod's default search order puts updates/ before the kernel's own modules.
            let replace = match files.get(&name) {
                None => true,
                Some(old) => !old.starts_with("updates/") && rel.starts_with("updates/"),
            };
            if replace {
                files.insert(name, rel);
            }
        }
        let read_opt = |name: &str| -> Result<Option<String>, ModulesError> {
            let p = dir.join(name);
            match std::fs::read_to_string(&p) {
                Ok(s) => Ok(Some(s)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(io_err(&p)(e)),
            }
        };
        let builtin = read_opt("modules.builtin")?
            .unwrap_or_default()
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(module_name)
            .collect();
        let modules_dep = read_opt("modules.dep")?.map(|t| parse_modules_dep(&t));
        Ok(Self {
            dir: dir.to_path_buf(),
            version,
            files,
            builtin,
            modules_dep,
        })
    }

    /// Kernel version (the directory's name).
    pub fn version(&self) -> &str {
        &self.version
    }

    /// Number of module files found.
    pub fn len(&self) -> usize {
        self.files.len()
    }

    /// True when the tree holds no module files.
    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }

    fn read_module(&self, rel: &str) -> Result<Vec<u8>, ModulesError> {
        let path = self.dir.join(rel);
        let raw = std::fs::read(&path).map_err(io_err(&path))?;
        decompress(rel, raw)
    }

    /// Chooses `wanted` and everything they need, reads and decompresses them, and renders
    /// the index files.
    pub fn select(&self, wanted: &[String]) -> Result<Selection, ModulesError> {
        // Dependencies and softdeps, by name. From modules.dep when present (covering every
        // module), else read lazily from .modinfo for the modules we reach.
        let mut deps: BTreeMap<String, Vec<String>> = BTreeMap::new();
        let mut infos: BTreeMap<String, (Vec<u8>, Vec<String>)> = BTreeMap::new();
        let mut queue: Vec<String> = wanted.iter().map(|w| module_name(w)).collect();
        while let Some(name) = queue.pop() {
            if deps.contains_key(&name) {
                continue;
            }
            let Some(rel) = self.files.get(&name) else {
                continue; // built in or unknown: resolve() sorts that out
            };
            let data = self.read_module(rel)?;
            let info = elf::modinfo(&data).map_err(|source| ModulesError::Elf {
                path: rel.clone(),
                source,
            })?;
            let mut needs: Vec<String> = match &self.modules_dep {
                Some(md) => md
                    .get(rel)
                    .into_iter()
                    .flatten()
                    .map(|p| module_name(p))
                    .collect(),
                None => info
                    .iter()
                    .filter(|(k, _)| k == "depends")
                    .flat_map(|(_, v)| v.split(','))
                    .filter(|s| !s.is_empty())
                    .map(module_name)
                    .collect(),
            };
            // Soft dependencies are shipped (when present) but are not load-order edges.
            let soft: Vec<String> = info
                .iter()
                .filter(|(k, _)| k == "softdep")
                .flat_map(|(_, v)| v.split_whitespace())
                .filter(|w| !w.ends_with(':'))
                .map(module_name)
                .filter(|n| self.files.contains_key(n))
                .collect();
            needs.sort();
            needs.dedup();
            queue.extend(needs.iter().cloned());
            queue.extend(soft.iter().cloned());
            let aliases = info
                .into_iter()
                .filter(|(k, _)| k == "alias")
                .map(|(_, v)| v)
                .collect();
            deps.insert(name.clone(), needs);
            infos.insert(name, (data, aliases));
        }
        // Every module reached (wanted, dependencies, softdeps) is shipped; the load order
        // covers them all.
        let mut roots: Vec<String> = wanted.iter().map(|w| module_name(w)).collect();
        roots.extend(deps.keys().cloned());
        let (order, mut not_found) = resolve(&roots, &deps, &self.builtin)?;
        not_found.retain(|n| wanted.iter().any(|w| module_name(w) == *n));

        let mut modules = Vec::new();
        for name in &order {
            let (data, aliases) = infos.remove(name).expect("every resolved module was read");
            let path = strip_compression(&self.files[name]).to_string();
            modules.push(Module {
                name: name.clone(),
                path,
                data,
                aliases,
            });
        }
        let path_of: BTreeMap<&str, &str> = modules
            .iter()
            .map(|m| (m.name.as_str(), m.path.as_str()))
            .collect();
        let mut dep_lines: Vec<String> = modules
            .iter()
            .map(|m| {
                let mut line = format!("{}:", m.path);
                for d in transitive_deps(&m.name, &deps, &order) {
                    line.push(' ');
                    line.push_str(path_of[d]);
                }
                line
            })
            .collect();
        dep_lines.sort();
        let mut modules_dep = dep_lines.join("\n");
        modules_dep.push('\n');

        let mut by_name: Vec<&Module> = modules.iter().collect();
        by_name.sort_by(|a, b| a.name.cmp(&b.name));
        let mut modules_alias = String::from("# Aliases extracted from modules themselves.\n");
        for m in by_name {
            for a in &m.aliases {
                let _ = writeln!(modules_alias, "alias {a} {}", m.name);
            }
        }
        let modules_builtin =
            std::fs::read_to_string(self.dir.join("modules.builtin")).unwrap_or_default();
        Ok(Selection {
            kernel_version: self.version.clone(),
            modules,
            not_found,
            modules_dep,
            modules_alias,
            modules_builtin,
        })
    }
}

fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) -> Result<(), ModulesError> {
    for entry in std::fs::read_dir(dir).map_err(io_err(dir))? {
        let entry = entry.map_err(io_err(dir))?;
        let path = entry.path();
        let ft = entry.file_type().map_err(io_err(&path))?;
        if ft.is_dir() {
            walk(root, &path, out)?;
        } else if ft.is_file() {
            let rel = path
                .strip_prefix(root)
                .expect("walk stays under root")
                .to_string_lossy()
                .into_owned();
            if is_module_file(&rel) {
                out.push(rel);
            }
        }
    }
    Ok(())
}

/// Decompresses a module file according to its name's suffix (`.ko` is returned as is).
pub fn decompress(name: &str, raw: Vec<u8>) -> Result<Vec<u8>, ModulesError> {
    let fail = |reason: String| ModulesError::Decompress {
        path: name.to_string(),
        reason,
    };
    let mut out = Vec::new();
    if name.ends_with(".ko.xz") {
        let mut input = std::io::Cursor::new(raw);
        let mut limited = LimitedWriter {
            inner: &mut out,
            left: MAX_MODULE_BYTES,
        };
        lzma_rs::xz_decompress(&mut input, &mut limited).map_err(|e| fail(e.to_string()))?;
    } else if name.ends_with(".ko.zst") {
        let dec = ruzstd::decoding::StreamingDecoder::new(raw.as_slice())
            .map_err(|e| fail(e.to_string()))?;
        read_limited(dec, &mut out).map_err(fail)?;
    } else if name.ends_with(".ko.gz") {
        read_limited(flate2::read::GzDecoder::new(raw.as_slice()), &mut out).map_err(fail)?;
    } else {
        return Ok(raw);
    }
    Ok(out)
}

fn read_limited<R: Read>(r: R, out: &mut Vec<u8>) -> Result<(), String> {
    r.take(MAX_MODULE_BYTES + 1)
        .read_to_end(out)
        .map_err(|e| e.to_string())?;
    if out.len() as u64 > MAX_MODULE_BYTES {
        return Err(format!("larger than {MAX_MODULE_BYTES} bytes"));
    }
    Ok(())
}

/// A writer that fails once more than `left` bytes were written (decompression-bomb guard).
struct LimitedWriter<'a> {
    inner: &'a mut Vec<u8>,
    left: u64,
}

impl std::io::Write for LimitedWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if buf.len() as u64 > self.left {
            return Err(std::io::Error::other(format!(
                "larger than {MAX_MODULE_BYTES} bytes"
            )));
        }
        self.left -= buf.len() as u64;
        self.inner.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::elf::tests::fake_module;

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    /// Fixture: a real depmod-format modules.dep excerpt (Debian 6.1 virtio/nvme/mlx5
    /// chains), see tests/fixtures/modules.dep.
    const FIXTURE_DEP: &str = include_str!("../tests/fixtures/modules.dep");

    fn fixture_deps() -> BTreeMap<String, Vec<String>> {
        parse_modules_dep(FIXTURE_DEP)
            .into_iter()
            .map(|(k, v)| (module_name(&k), v.iter().map(|p| module_name(p)).collect()))
            .collect()
    }

    #[test]
    fn names_are_normalised() {
        assert_eq!(
            module_name("kernel/drivers/nvme/host/nvme-core.ko"),
            "nvme_core"
        );
        assert_eq!(
            module_name("kernel/drivers/net/virtio_net.ko.xz"),
            "virtio_net"
        );
        assert_eq!(module_name("a/b/mlx5_core.ko.zst"), "mlx5_core");
        assert_eq!(module_name("af_packet"), "af_packet");
        assert!(is_module_file("x/y.ko.gz"));
        assert!(!is_module_file("x/y.xz"));
    }

    #[test]
    fn parses_fixture_modules_dep() {
        let md = parse_modules_dep(FIXTURE_DEP);
        assert_eq!(
            md["kernel/drivers/net/virtio_net.ko"],
            [
                "kernel/drivers/net/net_failover.ko",
                "kernel/net/core/failover.ko",
                "kernel/drivers/virtio/virtio.ko",
                "kernel/drivers/virtio/virtio_ring.ko"
            ]
        );
        assert!(md["kernel/drivers/virtio/virtio_ring.ko"].is_empty());
        assert_eq!(md.len(), 19);
    }

    #[test]
    fn resolves_in_dependency_order_deterministically() {
        let deps = fixture_deps();
        let builtin = BTreeSet::from(["af_packet".to_string()]);
        let (order, unknown) = resolve(
            &names(&["virtio_net", "nvme", "af_packet", "no_such_driver"]),
            &deps,
            &builtin,
        )
        .unwrap();
        assert_eq!(unknown, ["no_such_driver"]);
        assert!(!order.contains(&"af_packet".to_string()));
        let pos = |n: &str| {
            order
                .iter()
                .position(|x| x == n)
                .unwrap_or_else(|| panic!("{n}"))
        };
        for (a, b) in [
            ("virtio_ring", "virtio"),
            ("virtio", "virtio_net"),
            ("failover", "net_failover"),
            ("net_failover", "virtio_net"),
            ("nvme_core", "nvme"),
            ("crc64", "crc64_rocksoft"),
            ("crct10dif_common", "crc_t10dif"),
            ("t10_pi", "nvme_core"),
        ] {
            assert!(pos(a) < pos(b), "{a} must load before {b}: {order:?}");
        }
        assert_eq!(order.len(), 12);
        let (again, _) = resolve(
            &names(&["virtio_net", "nvme", "af_packet", "no_such_driver"]),
            &deps,
            &builtin,
        )
        .unwrap();
        assert_eq!(order, again);
    }

    #[test]
    fn missing_dependency_and_cycles_are_errors() {
        let mut deps = fixture_deps();
        deps.insert("broken".into(), names(&["ghost"]));
        let err = resolve(&names(&["broken"]), &deps, &BTreeSet::new()).unwrap_err();
        assert!(
            matches!(&err, ModulesError::MissingDependency { module, dependency }
                if module == "broken" && dependency == "ghost"),
            "{err}"
        );
        deps.insert("a".into(), names(&["b"]));
        deps.insert("b".into(), names(&["a"]));
        assert!(matches!(
            resolve(&names(&["a"]), &deps, &BTreeSet::new()),
            Err(ModulesError::Cycle(_))
        ));
    }

    #[test]
    fn transitive_lists_follow_depmod_convention() {
        let deps = fixture_deps();
        let (order, _) = resolve(&names(&["virtio_net"]), &deps, &BTreeSet::new()).unwrap();
        let list = transitive_deps("virtio_net", &deps, &order);
        // Reverse load order: a module's own dependencies come after it.
        assert_eq!(list.len(), 4);
        let idx = |n| list.iter().position(|x| *x == n).unwrap();
        assert!(idx("virtio") < idx("virtio_ring"));
        assert!(idx("net_failover") < idx("failover"));
    }

    /// A tree without modules.dep (like an extracted Debian package): dependencies come from
    /// .modinfo, compressed files are decompressed, index files are rendered.
    #[test]
    fn selects_from_a_tree_without_modules_dep() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("6.1.0-test");
        let put = |rel: &str, bytes: Vec<u8>| {
            let p = root.join(rel);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, bytes).unwrap();
        };
        let virtio = fake_module(&["name=virtio", "depends="]);
        put("kernel/drivers/virtio/virtio.ko", virtio.clone());
        put(
            "kernel/drivers/virtio/virtio_ring.ko",
            fake_module(&["depends=virtio", "name=virtio_ring"]),
        );
        let net = fake_module(&[
            "alias=virtio:d00000001v*",
            "depends=virtio_ring,virtio,net_failover",
            "softdep=pre: crc_helper",
            "name=virtio_net",
        ]);
        // Stored xz-compressed, as Debian trixie ships modules.
        let mut xz = Vec::new();
        lzma_rs::xz_compress(&mut net.as_slice(), &mut xz).unwrap();
        put("kernel/drivers/net/virtio_net.ko.xz", xz);
        put(
            "kernel/drivers/net/net-failover.ko",
            fake_module(&["depends=", "name=net_failover"]),
        );
        put(
            "kernel/lib/crc_helper.ko",
            fake_module(&["alias=crypto-crc", "depends="]),
        );
        put("kernel/drivers/unrelated.ko", fake_module(&["depends="]));
        std::fs::write(
            root.join("modules.builtin"),
            "kernel/net/packet/af_packet.ko\n",
        )
        .unwrap();

        let tree = ModuleTree::open(&root).unwrap();
        assert_eq!(tree.version(), "6.1.0-test");
        assert_eq!(tree.len(), 6);
        let sel = tree
            .select(&names(&["virtio_net", "af_packet", "ice"]))
            .unwrap();
        assert_eq!(sel.not_found, ["ice"]);
        let got: Vec<&str> = sel.modules.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(
            got,
            [
                "net_failover",
                "virtio",
                "virtio_ring",
                "virtio_net",
                "crc_helper"
            ]
        );
        let net_mod = sel.modules.iter().find(|m| m.name == "virtio_net").unwrap();
        assert_eq!(net_mod.path, "kernel/drivers/net/virtio_net.ko");
        assert_eq!(net_mod.data, net, "decompressed bytes");
        assert_eq!(
            sel.modules_dep,
            "kernel/drivers/net/net-failover.ko:\n\
             kernel/drivers/net/virtio_net.ko: kernel/drivers/virtio/virtio_ring.ko \
             kernel/drivers/virtio/virtio.ko kernel/drivers/net/net-failover.ko\n\
             kernel/drivers/virtio/virtio.ko:\n\
             kernel/drivers/virtio/virtio_ring.ko: kernel/drivers/virtio/virtio.ko\n\
             kernel/lib/crc_helper.ko:\n"
        );
        assert_eq!(
            sel.modules_alias,
            "# Aliases extracted from modules themselves.\n\
             alias crypto-crc crc_helper\n\
             alias virtio:d00000001v* virtio_net\n"
        );
        assert_eq!(sel.modules_builtin, "kernel/net/packet/af_packet.ko\n");
        assert_eq!(
            sel.total_bytes(),
            sel.modules.iter().map(|m| m.data.len() as u64).sum()
        );
    }

    /// With a modules.dep present, it is the source of dependencies (a module whose
    /// .modinfo says otherwise is ignored in favour of depmod's view).
    #[test]
    fn prefers_modules_dep_when_present() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("6.1.0-dep");
        std::fs::create_dir_all(root.join("kernel")).unwrap();
        std::fs::write(root.join("kernel/a.ko"), fake_module(&["depends="])).unwrap();
        std::fs::write(root.join("kernel/b.ko"), fake_module(&["depends="])).unwrap();
        std::fs::write(
            root.join("modules.dep"),
            "kernel/a.ko: kernel/b.ko\nkernel/b.ko:\n",
        )
        .unwrap();
        let sel = ModuleTree::open(&root)
            .unwrap()
            .select(&names(&["a"]))
            .unwrap();
        let got: Vec<&str> = sel.modules.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(got, ["b", "a"]);
        assert_eq!(sel.modules_dep, "kernel/a.ko: kernel/b.ko\nkernel/b.ko:\n");
    }

    #[test]
    fn decompresses_real_xz_and_zstd_fixtures() {
        // Made by tests/fixtures/make-compressed.sh with the xz and zstd command-line tools,
        // using the options Debian's kernel build uses for modules.
        let plain = include_bytes!("../tests/fixtures/module.bin");
        let xz = include_bytes!("../tests/fixtures/module.bin.xz").to_vec();
        let zst = include_bytes!("../tests/fixtures/module.bin.zst").to_vec();
        assert_eq!(decompress("m.ko.xz", xz).unwrap(), plain);
        assert_eq!(decompress("m.ko.zst", zst).unwrap(), plain);
        assert_eq!(decompress("m.ko", plain.to_vec()).unwrap(), plain);
        let err = decompress("m.ko.xz", b"not xz".to_vec()).unwrap_err();
        assert!(matches!(err, ModulesError::Decompress { .. }), "{err}");
        let err = decompress("m.ko.zst", plain[..10].to_vec()).unwrap_err();
        assert!(matches!(err, ModulesError::Decompress { .. }), "{err}");
    }
}
