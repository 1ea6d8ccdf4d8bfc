//! Executors and the cross-core mesh: one glommio executor per core, pinned; shard i on core i;
//! the coordinator on core 0 in a task queue of its own so shard 0's work cannot starve raft.

pub mod mesh;
pub mod shard;

use std::time::Duration;

/// io_uring buffer memory each executor registers (and locks). glommio's default of 10 MiB per
/// executor would exceed common RLIMIT_MEMLOCK settings for no gain here: the WAL writes with
/// buffered io_uring operations, not the registered-buffer DMA path.
pub const IO_MEMORY_BYTES: usize = 512 * 1024;

/// CPUs this process may run on (its affinity mask), in ascending order.
pub fn allowed_cpus() -> Vec<usize> {
    // SAFETY: cpu_set_t is plain data; sched_getaffinity writes at most its size.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return vec![0];
        }
        let cpus: Vec<usize> = (0..libc::CPU_SETSIZE as usize)
            .filter(|&c| libc::CPU_ISSET(c, &set))
            .collect();
        if cpus.is_empty() {
            vec![0]
        } else {
            cpus
        }
    }
}

/// Raises RLIMIT_MEMLOCK's soft limit to what the executors need (up to the hard limit), or
/// explains how to fix it.
pub fn ensure_memlock(executors: usize) -> anyhow::Result<()> {
    // Registered buffers plus the rings themselves; generous so io_uring setup never fails.
    let needed = (executors * (IO_MEMORY_BYTES + 1024 * 1024)) as u64;
    // SAFETY: plain syscalls on a stack struct.
    unsafe {
        let mut lim: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut lim) != 0 {
            return Ok(());
        }
        if lim.rlim_cur == libc::RLIM_INFINITY || lim.rlim_cur >= needed {
            return Ok(());
        }
        let target = if lim.rlim_max == libc::RLIM_INFINITY {
            needed
        } else {
            lim.rlim_max.min(needed)
        };
        let mut raised = lim;
        raised.rlim_cur = target;
        if target >= needed && libc::setrlimit(libc::RLIMIT_MEMLOCK, &raised) == 0 {
            return Ok(());
        }
        // Try raising the hard limit too (works as root).
        raised.rlim_max = needed.max(lim.rlim_max);
        raised.rlim_cur = needed;
        if libc::setrlimit(libc::RLIMIT_MEMLOCK, &raised) == 0 {
            return Ok(());
        }
        anyhow::bail!(
            "RLIMIT_MEMLOCK is {} KiB but io_uring needs about {} KiB for {} executors; \
             raise it (e.g. `ulimit -l {}` or LimitMEMLOCK= in the systemd unit)",
            lim.rlim_cur / 1024,
            needed / 1024,
            executors,
            needed / 1024
        )
    }
}

/// How often the coordinator's queue may be preempted by other work on core 0.
pub const COORDINATOR_LATENCY: Duration = Duration::from_millis(1);
