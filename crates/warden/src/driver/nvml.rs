//! NVML through dlopen: no link-time dependency on the NVIDIA driver, so warden builds and runs
//! everywhere; without a driver every call answers None and GPU services keep their estimates.

use std::collections::HashMap;
use std::ffi::{c_char, c_int, c_uint, c_void, CString};
use std::sync::OnceLock;

#[repr(C)]
struct Memory {
    total: u64,
    free: u64,
    used: u64,
}

/// `nvmlProcessInfo_t` as the `_v3` calls fill it.
#[repr(C)]
#[derive(Clone, Copy)]
struct ProcessInfo {
    pid: c_uint,
    used_gpu_memory: u64,
    gpu_instance_id: c_uint,
    compute_instance_id: c_uint,
}

type Init = unsafe extern "C" fn() -> c_int;
type Count = unsafe extern "C" fn(*mut c_uint) -> c_int;
type HandleByIndex = unsafe extern "C" fn(c_uint, *mut *mut c_void) -> c_int;
type MemoryInfo = unsafe extern "C" fn(*mut c_void, *mut Memory) -> c_int;
type Processes = unsafe extern "C" fn(*mut c_void, *mut c_uint, *mut ProcessInfo) -> c_int;

struct Nvml {
    count: Count,
    by_index: HandleByIndex,
    memory: MemoryInfo,
    compute: Option<Processes>,
    graphics: Option<Processes>,
}

// SAFETY: the table holds plain function pointers into a library that stays loaded.
unsafe impl Send for Nvml {}
unsafe impl Sync for Nvml {}

unsafe fn symbol<T>(lib: *mut c_void, name: &str) -> Option<T> {
    let name = CString::new(name).ok()?;
    let ptr = libc::dlsym(lib, name.as_ptr() as *const c_char);
    (!ptr.is_null()).then(|| std::mem::transmute_copy(&ptr))
}

/// Loaded and initialised once; None when there is no driver.
fn nvml() -> Option<&'static Nvml> {
    static NVML: OnceLock<Option<Nvml>> = OnceLock::new();
    NVML.get_or_init(|| {
        // SAFETY: NVML's documented C ABI; every symbol is checked before use.
        unsafe {
            let name = CString::new("libnvidia-ml.so.1").ok()?;
            let lib = libc::dlopen(name.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL);
            if lib.is_null() {
                return None;
            }
            let init: Init = symbol(lib, "nvmlInit_v2")?;
            if init() != 0 {
                return None;
            }
            Some(Nvml {
                count: symbol(lib, "nvmlDeviceGetCount_v2")?,
                by_index: symbol(lib, "nvmlDeviceGetHandleByIndex_v2")?,
                memory: symbol(lib, "nvmlDeviceGetMemoryInfo")?,
                compute: symbol(lib, "nvmlDeviceGetComputeRunningProcesses_v3"),
                graphics: symbol(lib, "nvmlDeviceGetGraphicsRunningProcesses_v3"),
            })
        }
    })
    .as_ref()
}

fn devices(n: &Nvml) -> Vec<*mut c_void> {
    let mut count: c_uint = 0;
    // SAFETY: out-pointers to locals, as NVML documents.
    unsafe {
        if (n.count)(&mut count) != 0 {
            return Vec::new();
        }
        (0..count)
            .filter_map(|i| {
                let mut d = std::ptr::null_mut();
                ((n.by_index)(i, &mut d) == 0).then_some(d)
            })
            .collect()
    }
}

/// Total memory of GPU 0.
pub fn total_memory() -> Option<u64> {
    let n = nvml()?;
    let device = *devices(n).first()?;
    let mut info = Memory { total: 0, free: 0, used: 0 };
    // SAFETY: a valid device handle and an out-pointer to a local.
    (unsafe { (n.memory)(device, &mut info) } == 0).then_some(info.total)
}

/// GPU memory used per process id, over every GPU.
pub fn process_memory() -> Option<HashMap<u32, u64>> {
    let n = nvml()?;
    let mut out: HashMap<u32, u64> = HashMap::new();
    for device in devices(n) {
        for list in [n.compute, n.graphics].into_iter().flatten() {
            let mut infos =
                vec![ProcessInfo { pid: 0, used_gpu_memory: 0, gpu_instance_id: 0, compute_instance_id: 0 }; 256];
            let mut len = infos.len() as c_uint;
            // SAFETY: `len` says how many entries `infos` holds; NVML writes at most that many.
            if unsafe { list(device, &mut len, infos.as_mut_ptr()) } != 0 {
                continue;
            }
            for p in &infos[..(len as usize).min(infos.len())] {
                // NVML reports u64::MAX when it cannot tell (e.g. without permission).
                if p.used_gpu_memory != u64::MAX {
                    *out.entry(p.pid).or_default() += p.used_gpu_memory;
                }
            }
        }
    }
    Some(out)
}
