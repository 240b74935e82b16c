//! How much memory the daemon may use (its cgroup's `memory.max`, systemd's `MemoryMax=`,
//! else the machine's RAM), and the byte budget requests are admitted against.

use std::sync::Arc;

use image::RgbImage;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use crate::Classifier;

/// The bytes requests may hold at once (bodies, decoded pixels): a request is charged
/// before it allocates, and waits while the budget is spent. Counted in KiB, so that a
/// 32-bit board's semaphore holds any budget.
#[derive(Debug, Clone)]
pub struct Budget {
    permits: Arc<Semaphore>,
    kib: u32,
}

/// Why a charge was not granted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shortfall {
    /// More than the whole budget: it would never be granted.
    Never { need: u64, budget: u64 },
    /// Not granted before the deadline (other requests held the budget).
    Timeout { need: u64 },
}

/// A granted charge, given back when dropped.
#[derive(Debug)]
pub struct Charge(Option<OwnedSemaphorePermit>);

impl Budget {
    pub fn new(bytes: u64) -> Budget {
        let most = Semaphore::MAX_PERMITS.min(u32::MAX as usize) as u64;
        let kib = (bytes >> 10).clamp(1, most) as u32;
        Budget {
            permits: Arc::new(Semaphore::new(kib as usize)),
            kib,
        }
    }

    pub fn bytes(&self) -> u64 {
        u64::from(self.kib) << 10
    }

    /// Bytes not charged to any request now.
    pub fn free(&self) -> u64 {
        (self.permits.available_permits() as u64) << 10
    }

    /// Charges `bytes` (rounded up to KiB), waiting until `deadline` for them to be free.
    pub async fn charge(&self, bytes: u64, deadline: Instant) -> Result<Charge, Shortfall> {
        let kib = bytes.div_ceil(1024);
        if kib > u64::from(self.kib) {
            return Err(Shortfall::Never {
                need: bytes,
                budget: self.bytes(),
            });
        }
        if kib == 0 {
            return Ok(Charge(None));
        }
        let acquire = self.permits.clone().acquire_many_owned(kib as u32);
        match tokio::time::timeout_at(deadline, acquire).await {
            Ok(Ok(permit)) => Ok(Charge(Some(permit))),
            // The semaphore is never closed; a closed one would grant nothing either.
            _ => Err(Shortfall::Timeout { need: bytes }),
        }
    }
}

impl Charge {
    /// A charge of nothing (no budget is kept).
    pub fn none() -> Charge {
        Charge(None)
    }

    /// Gives back all but `bytes` of the charge (a body smaller than was declared).
    pub fn shrink_to(&mut self, bytes: u64) {
        let keep = bytes.div_ceil(1024) as usize;
        if let Some(permit) = &mut self.0 {
            let held = permit.num_permits();
            if held > keep {
                drop(permit.split(held - keep));
            }
        }
    }
}

/// The resident memory of this process now (`VmRSS`), in bytes.
pub fn resident() -> Option<u64> {
    status_kib("VmRSS:").map(|kib| kib * 1024)
}

/// The peak resident memory of this process (`VmHWM`), in bytes.
fn peak_resident() -> Option<u64> {
    status_kib("VmHWM:").map(|kib| kib * 1024)
}

fn status_kib(field: &str) -> Option<u64> {
    kib_field(&std::fs::read_to_string("/proc/self/status").ok()?, field)
}

/// The value of a `Field:   N kB` line of /proc/meminfo or /proc/<pid>/status.
fn kib_field(text: &str, field: &str) -> Option<u64> {
    let line = text.lines().find_map(|l| l.strip_prefix(field))?;
    line.trim().strip_suffix("kB")?.trim().parse().ok()
}

/// What one inference of `classifier` holds at its peak (activations, the matrix
/// kernels' scratch, a thread's allocator arena), measured on a thread of its own as a
/// worker runs it: the peak counter is reset (`/proc/self/clear_refs`), the classifier
/// runs on `image`, and the new peak less the resident memory before is the footprint.
/// `None` where the kernel refuses the reset.
pub fn inference_footprint(classifier: &Classifier, image: &RgbImage) -> Option<u64> {
    std::thread::scope(|s| {
        s.spawn(|| {
            std::fs::write("/proc/self/clear_refs", "5").ok()?;
            let before = resident()?;
            classifier.classify(image).ok()?;
            Some(peak_resident()?.saturating_sub(before))
        })
        .join()
        .ok()
        .flatten()
    })
}

/// The request budget within a process budget of `total` bytes, of which `resident` are
/// in use already (the model, the runtime) and `reserved` kept for the workers'
/// inferences: what is left, or an error saying so.
pub fn request_budget(total: u64, resident: u64, reserved: u64) -> Result<Budget, String> {
    const MIN: u64 = 32 << 20;
    // An eighth stays out of the budget for what is not charged: the allocator's free
    // lists, connection buffers, the camera's frames.
    let left = total.saturating_sub(resident + reserved) / 8 * 7;
    if left < MIN {
        return Err(format!(
            "--memory-budget {} MiB leaves {} MiB for requests ({} MiB in use with the model \
             loaded, {} MiB kept for the workers' inferences); give at least {} MiB, or 0 for \
             no budget",
            total >> 20,
            left >> 20,
            resident >> 20,
            reserved >> 20,
            (resident + reserved + MIN) >> 20
        ));
    }
    Ok(Budget::new(left))
}

/// Keeps glibc's malloc to two arenas. By default it makes one per thread up to eight
/// per core, and each keeps the memory its thread freed: a daemon whose blocking threads
/// take turns decoding large images would hold several peaks at once. Call before any
/// thread starts.
pub fn limit_allocator_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes a malloc tuning parameter; no thread runs yet.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

/// The default `--memory-budget`: three quarters of the ceiling, leaving the rest to the
/// model, the runtime and the camera.
pub fn default_budget(ceiling: u64) -> u64 {
    ceiling / 4 * 3
}

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
    kib_field(meminfo, "MemTotal:").map(|kib| kib * 1024)
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
        assert_eq!(default_budget(768 << 20), 576 << 20);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn charges_wait_for_the_budget_and_come_back() {
        let budget = Budget::new(100 << 10);
        let soon = || Instant::now() + std::time::Duration::from_millis(50);
        assert_eq!(
            budget.charge(101 << 10, soon()).await.unwrap_err(),
            Shortfall::Never {
                need: 101 << 10,
                budget: 100 << 10
            }
        );
        let mut held = budget.charge(60 << 10, soon()).await.unwrap();
        assert_eq!(budget.free(), 40 << 10);
        assert_eq!(
            budget.charge(50 << 10, soon()).await.unwrap_err(),
            Shortfall::Timeout { need: 50 << 10 }
        );
        held.shrink_to(10 << 10);
        assert_eq!(budget.free(), 90 << 10);
        let other = budget.charge(50 << 10, soon()).await.unwrap();
        drop((held, other));
        assert_eq!(budget.free(), 100 << 10);
    }
}
