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

/// How long an executor runs task queues before it looks at its timers and I/O again (and
/// switches to a queue that became runnable meanwhile). glommio's default is 100 ms, lowered
/// only while a latency-sensitive queue has work: a sleeping watch hub or an idle connection
/// queue did not count, so a busy request queue held back their timer (a progress
/// notification) or wake-up by up to 100 ms. A task that never awaits still runs to its next
/// await.
pub const PREEMPT_TIMER: Duration = Duration::from_millis(2);

/// How often the coordinator's queue may be preempted by other work on core 0.
pub const COORDINATOR_LATENCY: Duration = Duration::from_millis(1);

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    /// The glommio fix in `vendor/glommio` (see `vendor/README.md`): a task in a
    /// latency-sensitive queue (as the coordinator's) that keeps waiting on another thread must
    /// never be left queued while its executor sleeps. Stock glommio 0.9.0 stranded it after
    /// 10^4 to 10^6 round trips on Linux 6.x (1 to 20 s), so this 5 s run catches a regression
    /// in about a third of its runs; `tests/load.rs` with `LOAD_PUTS=1000 LOAD_HOGS=4` catches
    /// it nearly every time.
    #[test]
    fn woken_task_is_never_left_queued_while_the_executor_sleeps() {
        const RUN_FOR: Duration = Duration::from_secs(5);
        const STALL: Duration = Duration::from_secs(1);
        let round_trips = Arc::new(AtomicU64::new(0));
        let finished = Arc::new(AtomicBool::new(false));
        let (jobs, replies) =
            std::sync::mpsc::sync_channel::<futures::channel::oneshot::Sender<()>>(1);
        std::thread::spawn(move || {
            for reply in replies {
                let _ = reply.send(());
            }
        });
        let (counter, done) = (round_trips.clone(), finished.clone());
        let _executor = glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
            .io_memory(super::IO_MEMORY_BYTES)
            .spawn(move || async move {
                let queue = glommio::executor().create_task_queue(
                    glommio::Shares::Static(1000),
                    glommio::Latency::Matters(Duration::from_millis(1)),
                    "waiter",
                );
                glommio::spawn_local_into(
                    async move {
                        let start = Instant::now();
                        while start.elapsed() < RUN_FOR {
                            let (reply, answer) = futures::channel::oneshot::channel();
                            jobs.send(reply).expect("the replying thread runs");
                            answer.await.expect("the replying thread answers");
                            counter.fetch_add(1, Ordering::Relaxed);
                        }
                        done.store(true, Ordering::Release);
                    },
                    queue,
                )
                .expect("the queue was just created")
                .await;
            })
            .expect("starting an executor");
        let mut seen = 0;
        let mut since = Instant::now();
        while !finished.load(Ordering::Acquire) {
            std::thread::sleep(Duration::from_millis(10));
            let now = round_trips.load(Ordering::Relaxed);
            if now != seen {
                (seen, since) = (now, Instant::now());
            }
            assert!(
                since.elapsed() < STALL,
                "the executor slept with a woken task queued, after {seen} round trips"
            );
        }
    }
}
