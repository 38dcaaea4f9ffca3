//! How much memory managed services may use: RAM from /proc/meminfo and the cgroup limit; VRAM
//! from NVML, loaded at run time so warden builds and runs on machines without a GPU.

use crate::config::CapacitySetting;

/// Total RAM this process may use: MemTotal, or the memory limit of its own cgroup (or an
/// ancestor's) if lower.
pub fn detect_ram() -> Option<u64> {
    let total = std::fs::read_to_string("/proc/meminfo").ok().and_then(|m| meminfo_total(&m))?;
    Some(cgroup_limit().map_or(total, |c| c.min(total)))
}

/// This process's memory cgroup folder and whether it is cgroup v2.
fn own_memory_cgroup() -> Option<(std::path::PathBuf, bool)> {
    let own = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    for line in own.lines() {
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        let rel = path.trim_start_matches('/');
        if controllers.split(',').any(|c| c == "memory") {
            return Some((std::path::Path::new("/sys/fs/cgroup/memory").join(rel), false));
        }
    }
    let rel = own.lines().find_map(|l| l.strip_prefix("0::"))?.trim_start_matches('/').to_string();
    let root = std::path::Path::new("/sys/fs/cgroup");
    root.join("cgroup.controllers").exists().then(|| (root.join(rel), true))
}

/// The lowest memory limit on the way from this process's cgroup up to the root.
fn cgroup_limit() -> Option<u64> {
    let (mut dir, v2) = own_memory_cgroup()?;
    let file = if v2 { "memory.max" } else { "memory.limit_in_bytes" };
    let mut lowest: Option<u64> = None;
    loop {
        if let Some(limit) = std::fs::read_to_string(dir.join(file)).ok().and_then(|t| t.trim().parse::<u64>().ok()) {
            lowest = Some(lowest.map_or(limit, |l| l.min(limit)));
        }
        if !dir.pop() || dir.ends_with("cgroup") || dir.ends_with("memory") && !v2 {
            break;
        }
    }
    // v1 says "no limit" with a huge number.
    lowest.filter(|&l| l < 1 << 60)
}

/// RAM in use now, measured where the capacity comes from: this process's cgroup when it has a
/// limit (its usage less inactive file cache, which the kernel reclaims first), else the host
/// (MemTotal − MemAvailable).
pub fn ram_used() -> Option<u64> {
    if cgroup_limit().is_some() {
        let (dir, v2) = own_memory_cgroup()?;
        let usage_file = if v2 { "memory.current" } else { "memory.usage_in_bytes" };
        let usage: u64 = std::fs::read_to_string(dir.join(usage_file)).ok()?.trim().parse().ok()?;
        let stat = std::fs::read_to_string(dir.join("memory.stat")).unwrap_or_default();
        let key = if v2 { "inactive_file " } else { "total_inactive_file " };
        let inactive: u64 =
            stat.lines().find_map(|l| l.strip_prefix(key)).and_then(|v| v.trim().parse().ok()).unwrap_or(0);
        return Some(usage.saturating_sub(inactive));
    }
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let field = |name: &str| -> Option<u64> {
        let line = meminfo.lines().find(|l| l.starts_with(name))?;
        Some(line.split_whitespace().nth(1)?.parse::<u64>().ok()? * 1024)
    };
    Some(field("MemTotal:")?.saturating_sub(field("MemAvailable:")?))
}

/// CPU time of the whole machine so far (busy, total), in clock ticks: the share in use is
/// the ratio of two samples' differences.
pub fn cpu_times() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().next()?.strip_prefix("cpu ")?;
    let ticks: Vec<u64> = line.split_whitespace().filter_map(|v| v.parse().ok()).collect();
    let total: u64 = ticks.iter().take(8).sum();
    // idle and iowait are not busy.
    let idle = ticks.get(3).copied().unwrap_or(0) + ticks.get(4).copied().unwrap_or(0);
    Some((total.saturating_sub(idle), total))
}

fn meminfo_total(text: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

pub fn resolve(setting: CapacitySetting, detect: impl FnOnce() -> Option<u64>) -> Option<u64> {
    match setting {
        CapacitySetting::Bytes(b) => Some(b),
        CapacitySetting::None => None,
        CapacitySetting::Auto => detect(),
    }
}

/// Total memory of GPU 0 through NVML, if a driver is present.
pub fn detect_vram() -> Option<u64> {
    crate::driver::nvml::total_memory()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_memtotal_and_resolves_settings() {
        assert_eq!(meminfo_total("MemTotal:       24684084 kB\nMemFree: 1 kB\n"), Some(24684084 * 1024));
        assert!(detect_ram().unwrap() > 64 << 20);
        let used = ram_used().unwrap();
        assert!(used > 0 && used <= detect_ram().unwrap() + (1 << 30), "{used}");
        let (busy, total) = cpu_times().unwrap();
        assert!(busy <= total && total > 0);
        assert_eq!(resolve(CapacitySetting::Bytes(5), || None), Some(5));
        assert_eq!(resolve(CapacitySetting::None, || Some(7)), None);
        assert_eq!(resolve(CapacitySetting::Auto, || Some(7)), Some(7));
    }

    #[test]
    fn nvml_answers_all_or_nothing() {
        // Without the NVIDIA driver both are None (this machine); with one, both answer.
        let total = detect_vram();
        let per_process = crate::driver::nvml::process_memory();
        assert_eq!(total.is_some(), per_process.is_some());
        if let Some(total) = total {
            assert!(total > 0);
        }
    }
}
