//! How much memory managed services may use: RAM from /proc/meminfo and the cgroup limit; VRAM
//! from NVML, loaded at run time so warden builds and runs on machines without a GPU.

use crate::config::CapacitySetting;

/// Total RAM this process may use: MemTotal, or the cgroup's limit if lower.
pub fn detect_ram() -> Option<u64> {
    let total = std::fs::read_to_string("/proc/meminfo").ok().and_then(|m| meminfo_total(&m))?;
    let cgroup = ["/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"]
        .iter()
        .filter_map(|p| std::fs::read_to_string(p).ok())
        .filter_map(|t| t.trim().parse::<u64>().ok())
        .min();
    Some(cgroup.map_or(total, |c| c.min(total)))
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
