//! Executors and the cross-core mesh: one glommio executor per core, pinned; shard i on core i;
//! the coordinator on core 0 in a task queue of its own so shard 0's work cannot starve raft.

pub mod disk;
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

/// How often every executor wakes up even when it has nothing to do.
pub const WAKEUP_GUARD_INTERVAL: Duration = Duration::from_millis(5);

/// Wakes this executor at a fixed interval. Under load we saw requests whose bytes had
/// arrived sit unread on an idle core until some unrelated event woke it (seconds later): a
/// wake-up from another thread, or a completion, got lost while glommio's reactor was parked.
/// A pending timer bounds how long the reactor may park, so such a stall costs at most this
/// interval; the price is a few hundred idle wake-ups per second per core.
pub async fn wakeup_guard() {
    loop {
        glommio::timer::sleep(WAKEUP_GUARD_INTERVAL).await;
    }
}

/// How often a task waiting on another core re-checks what it waits for.
pub const RECHECK_INTERVAL: Duration = Duration::from_millis(5);

/// Awaits `fut`, polling it again every `RECHECK_INTERVAL` even without a wake-up.
///
/// Why: wake-ups sent from one executor thread to another are occasionally lost on these
/// machines (seen as requests that stall forever under load with two or more cores, never
/// with one; glommio's cross-thread wake relies on a membarrier-based handshake). A re-poll
/// finds a completed oneshot or a queued message regardless of the lost wake, so a lost wake
/// costs at most this interval instead of a hung request. Local-only (uses glommio's timer).
pub async fn recheck<F: std::future::Future>(fut: F) -> F::Output {
    let mut fut = std::pin::pin!(fut);
    loop {
        let timer = std::pin::pin!(glommio::timer::sleep(RECHECK_INTERVAL));
        match futures::future::select(fut.as_mut(), timer).await {
            futures::future::Either::Left((v, _)) => return v,
            futures::future::Either::Right(_) => {}
        }
    }
}

/// Runs a cross-core wait as a task of this core under `recheck`, and returns a `Send`
/// future for its result (completed by a same-thread wake, which is never lost). This is how
/// `Send` code — tonic handlers — waits on other cores. Must be called on an executor thread.
pub fn on_this_core<T: Send + 'static>(
    fut: impl std::future::Future<Output = T> + 'static,
) -> impl std::future::Future<Output = Option<T>> + Send {
    let (tx, rx) = futures::channel::oneshot::channel();
    glommio::spawn_local(async move {
        let v = recheck(fut).await;
        let _ = tx.send(v);
    })
    .detach();
    async move { rx.await.ok() }
}
