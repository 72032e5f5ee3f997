//! CPU facts from `proc/cpuinfo` and `sys/devices/system/cpu`.
//!
//! IPA `hardware.py` `get_cpus` runs lscpu: `model_name` from "Model name",
//! `frequency` from "CPU max MHz" else "CPU MHz" (a string, as lscpu prints
//! it), `count` from "CPU(s)" (hyperthreads included), `architecture` from
//! "Architecture" (uname), `flags` from the first `flags` line of cpuinfo, and
//! newer IPA adds `socket_count`. lscpu reads the same files read here.

use std::collections::BTreeSet;
use std::path::Path;

use serde::Serialize;

use crate::sysfs::{attr, attr_u64, read_string, under};

/// The inventory's `cpu` object.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Cpu {
    /// e.g. `Intel(R) Xeon(R) Gold 6230 CPU @ 2.10GHz`.
    pub model_name: Option<String>,
    /// MHz as lscpu prints it (`"3900.0000"` from cpufreq, else cpuinfo's `cpu MHz`).
    pub frequency: Option<String>,
    /// Logical CPUs.
    pub count: u32,
    /// `x86_64`, `aarch64`, ...
    pub architecture: String,
    /// CPU feature flags.
    pub flags: Vec<String>,
    /// Distinct physical packages.
    pub socket_count: Option<u32>,
}

/// Reads CPU facts under `root`; missing pieces become `None`/empty.
pub fn cpu(root: &Path) -> Cpu {
    let text = read_string(&under(root, "proc/cpuinfo")).unwrap_or_else(|e| {
        log::warn!("cannot read proc/cpuinfo: {e}");
        String::new()
    });
    let mut processors = 0u32;
    let mut model_name = None;
    let mut mhz = None;
    let mut flags: Option<Vec<String>> = None;
    let mut packages = BTreeSet::new();
    for line in text.lines() {
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        let (key, value) = (key.trim(), value.trim());
        match key {
            "processor" => processors += 1,
            // "model name" on x86; aarch64 kernels print no model name.
            "model name" | "cpu model" if model_name.is_none() && !value.is_empty() => {
                model_name = Some(value.to_string())
            }
            "cpu MHz" if mhz.is_none() => mhz = Some(value.to_string()),
            "flags" | "Features" if flags.is_none() => {
                flags = Some(value.split_whitespace().map(str::to_string).collect())
            }
            "physical id" => {
                packages.insert(value.to_string());
            }
            _ => {}
        }
    }
    let cpu_dir = under(root, "sys/devices/system/cpu");
    let count = attr(&cpu_dir.join("online"))
        .and_then(|s| count_cpu_list(&s))
        .filter(|n| *n > 0)
        .unwrap_or(processors);
    // lscpu prints "CPU max MHz" from cpufreq's cpuinfo_max_freq (kHz) with 4 decimals.
    let max_mhz = attr_u64(&cpu_dir.join("cpu0/cpufreq/cpuinfo_max_freq"))
        .map(|khz| format!("{:.4}", khz as f64 / 1000.0));
    let socket_count = if packages.is_empty() {
        let ids: BTreeSet<String> = crate::sysfs::dir_names(&cpu_dir)
            .into_iter()
            .filter(|n| {
                n.strip_prefix("cpu")
                    .is_some_and(|r| r.parse::<u32>().is_ok())
            })
            .filter_map(|n| attr(&cpu_dir.join(n).join("topology/physical_package_id")))
            .collect();
        (!ids.is_empty()).then_some(ids.len() as u32)
    } else {
        Some(packages.len() as u32)
    };
    Cpu {
        model_name,
        frequency: max_mhz.or(mhz),
        count,
        architecture: attr(&under(root, "proc/sys/kernel/arch"))
            .unwrap_or_else(|| std::env::consts::ARCH.to_string()),
        flags: flags.unwrap_or_default(),
        socket_count,
    }
}

/// Counts a kernel CPU list such as `0-3,8,10-11`; `None` if malformed.
fn count_cpu_list(s: &str) -> Option<u32> {
    let mut n = 0u32;
    for part in s.trim().split(',').filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b): (u32, u32) = (a.parse().ok()?, b.parse().ok()?);
                n = n.checked_add(b.checked_sub(a)?.checked_add(1)?)?;
            }
            None => {
                part.parse::<u32>().ok()?;
                n = n.checked_add(1)?;
            }
        }
    }
    Some(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists() {
        assert_eq!(count_cpu_list("0-1\n"), Some(2));
        assert_eq!(count_cpu_list("0-3,8,10-11"), Some(7));
        assert_eq!(count_cpu_list("0"), Some(1));
        assert_eq!(count_cpu_list("3-1"), None);
        assert_eq!(count_cpu_list("a-b"), None);
    }
}
