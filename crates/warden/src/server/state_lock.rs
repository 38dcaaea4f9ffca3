//! One warden per state dir: an exclusive lock on `state_dir/warden.lock`, held for the
//! process's life and taken before anything else is touched. Without it a second `warden
//! serve` on the same state dir would take the first one's running services for leftovers of
//! a crash and kill them. The kernel drops the lock when the process ends, however it ends.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, Write};
use std::path::Path;

/// Held while warden runs; dropping it releases the lock.
pub struct StateLock {
    _file: File,
}

pub fn acquire(state_dir: &Path) -> Result<StateLock, String> {
    let path = state_dir.join("warden.lock");
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(TryLockError::WouldBlock) => {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            let holder = holder.trim();
            let who = if holder.is_empty() { "another warden".to_string() } else { format!("warden pid {holder}") };
            return Err(format!("state_dir {} is in use by {who}", state_dir.display()));
        }
        Err(TryLockError::Error(e)) => return Err(format!("cannot lock {}: {e}", path.display())),
    }
    // Ours now: say who holds it, for the next one's message.
    let _ = file.set_len(0);
    let _ = file.rewind();
    let _ = writeln!(file, "{}", std::process::id());
    Ok(StateLock { _file: file })
}
