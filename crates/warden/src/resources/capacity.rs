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
    nvml::total_memory()
}

mod nvml {
    //! The three NVML calls warden needs, through dlopen: no link-time dependency on the driver.
    use std::ffi::{c_char, c_int, c_uint, c_void, CString};

    #[repr(C)]
    struct Memory {
        total: u64,
        free: u64,
        used: u64,
    }

    type Init = unsafe extern "C" fn() -> c_int;
    type HandleByIndex = unsafe extern "C" fn(c_uint, *mut *mut c_void) -> c_int;
    type MemoryInfo = unsafe extern "C" fn(*mut c_void, *mut Memory) -> c_int;

    unsafe fn symbol<T>(lib: *mut c_void, name: &str) -> Option<T> {
        let name = CString::new(name).ok()?;
        let ptr = libc::dlsym(lib, name.as_ptr() as *const c_char);
        (!ptr.is_null()).then(|| std::mem::transmute_copy(&ptr))
    }

    pub fn total_memory() -> Option<u64> {
        // SAFETY: the symbols are NVML's documented C ABI; each is checked before use, and the
        // library stays loaded for the life of the process.
        unsafe {
            let name = CString::new("libnvidia-ml.so.1").ok()?;
            let lib = libc::dlopen(name.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL);
            if lib.is_null() {
                return None;
            }
            let init: Init = symbol(lib, "nvmlInit_v2")?;
            let by_index: HandleByIndex = symbol(lib, "nvmlDeviceGetHandleByIndex_v2")?;
            let memory: MemoryInfo = symbol(lib, "nvmlDeviceGetMemoryInfo")?;
            if init() != 0 {
                return None;
            }
            let mut device = std::ptr::null_mut();
            if by_index(0, &mut device) != 0 {
                return None;
            }
            let mut info = Memory { total: 0, free: 0, used: 0 };
            (memory(device, &mut info) == 0).then_some(info.total)
        }
    }
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
    fn no_gpu_degrades_to_none() {
        // On a machine without the NVIDIA driver this is None; with one, a positive size.
        if let Some(total) = detect_vram() {
            assert!(total > 0);
        }
    }
}
