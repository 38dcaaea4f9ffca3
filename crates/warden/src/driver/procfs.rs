//! Reads of /proc: resident memory of a service's processes, process identity for pidfiles.

/// Resident bytes of these processes together.
pub fn rss_bytes(pids: &[u32]) -> u64 {
    let page = page_size();
    pids.iter().filter_map(|&pid| read_stat(pid)).map(|s| s.rss_pages * page).sum()
}

/// The processes in process group `pgid`.
pub fn group_pids(pgid: u32) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else { return Vec::new() };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| read_stat(pid).is_some_and(|s| s.pgrp == pgid))
        .collect()
}

pub struct Stat {
    pub pgrp: u32,
    pub start_time: u64,
    pub rss_pages: u64,
}

pub fn read_stat(pid: u32) -> Option<Stat> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses: fields start after the last ')'.
    let rest = &text[text.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state(0) ppid(1) pgrp(2) … starttime(19) vsize(20) rss(21).
    Some(Stat {
        pgrp: fields.get(2)?.parse().ok()?,
        start_time: fields.get(19)?.parse().ok()?,
        rss_pages: fields.get(21)?.parse().ok()?,
    })
}

fn page_size() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if size > 0 {
        size as u64
    } else {
        4096
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_our_own_group() {
        let me = std::process::id();
        let stat = read_stat(me).expect("own stat");
        assert!(stat.rss_pages > 0);
        assert!(rss_bytes(&group_pids(stat.pgrp)) >= stat.rss_pages * page_size());
        assert!(group_pids(u32::MAX - 7).is_empty());
        assert_eq!(rss_bytes(&[u32::MAX - 7]), 0);
    }
}
