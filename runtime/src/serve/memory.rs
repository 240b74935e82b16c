//! How much memory the daemon may use: its cgroup's `memory.max` (systemd's `MemoryMax=`),
//! else the machine's RAM.

/// The memory ceiling in bytes, if it can be read.
pub fn ceiling() -> Option<u64> {
    cgroup_max().or_else(|| mem_total(&std::fs::read_to_string("/proc/meminfo").ok()?))
}

/// `memory.max` of this process's cgroup (v2), if it sets one.
fn cgroup_max() -> Option<u64> {
    let cgroups = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let path = cgroups.lines().find_map(|l| l.strip_prefix("0::"))?.trim();
    let max = std::fs::read_to_string(format!("/sys/fs/cgroup{path}/memory.max")).ok()?;
    limit(&max)
}

/// A cgroup limit file's value: bytes, or `None` for `max` (no limit).
fn limit(text: &str) -> Option<u64> {
    text.trim().parse().ok()
}

/// `MemTotal` of /proc/meminfo, in bytes.
fn mem_total(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find_map(|l| l.strip_prefix("MemTotal:"))?;
    let kib: u64 = line.trim().strip_suffix("kB")?.trim().parse().ok()?;
    Some(kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_cgroup_limits_and_meminfo() {
        assert_eq!(limit("805306368\n"), Some(768 << 20));
        assert_eq!(limit("max\n"), None);
        let meminfo = "MemTotal:        3884956 kB\nMemFree:          123 kB\n";
        assert_eq!(mem_total(meminfo), Some(3884956 * 1024));
        assert_eq!(mem_total("MemFree: 1 kB\n"), None);
        assert!(ceiling().is_some_and(|b| b > 16 << 20));
    }
}
