//! The scheduling class of the call-log writer and the checkpointer (Linux, per thread): the
//! writer runs in the idle class, which any request preempts, while it keeps up, and as a batch
//! thread, with a fair share of the CPU, when it falls behind.

/// A thread's class.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Class {
    /// `SCHED_IDLE`: runs when nothing else on the CPU wants to; a request waking up preempts
    /// it at once. At c=1 (bench, one core) a request waited behind the writer as a batch
    /// thread ~130 times in 4 s for more than 50 µs (up to ~540 µs: one group of rows, or the
    /// batch's commit), which is most of keygate's tail over nginx's there; in this class, never
    /// (`perf sched timehist`). On a busy core it gets almost nothing, hence `Batch` when behind.
    Idle,
    /// `SCHED_BATCH`: waking up, it does not preempt a running request, it waits for the
    /// running thread's turn to end; then it gets a fair share of the CPU. At nice 5 (before
    /// that) a share of ~1/7 on a busy core let the queue climb to 2,700–3,600 of its 4,096
    /// rows at c=64; as a batch thread it peaked at ~1,400, with throughput and p99 no worse.
    Batch,
}

/// The calling thread's class, changed only when it differs.
#[derive(Debug)]
pub struct Scheduling {
    current: Class,
    /// Whether this thread may leave `Idle` again: Linux lets a thread raise itself out of
    /// `SCHED_IDLE` only with CAP_SYS_NICE (root, outside most containers) or an RLIMIT_NICE
    /// of 20. Without it the writer stays a batch thread.
    idle_allowed: bool,
}

impl Scheduling {
    /// Makes the calling thread a batch thread. The idle class is used later only if a
    /// throwaway thread could enter and leave it.
    pub fn start() -> Scheduling {
        let idle_allowed = std::thread::spawn(|| set(Class::Idle) && set(Class::Batch))
            .join()
            .unwrap_or(false);
        if !set(Class::Batch) {
            tracing::debug!("cannot run the call-log writer as a batch thread");
        }
        if !idle_allowed {
            tracing::debug!(
                "the call-log writer cannot leave the idle class once in it (no CAP_SYS_NICE, \
                 RLIMIT_NICE under 20); it runs as a batch thread throughout"
            );
        }
        Scheduling {
            current: Class::Batch,
            idle_allowed,
        }
    }

    /// Puts the calling thread in `class` (`Idle` only where it can leave it again).
    pub fn set(&mut self, class: Class) {
        let class = if self.idle_allowed {
            class
        } else {
            Class::Batch
        };
        if class != self.current && set(class) {
            self.current = class;
        }
    }

    pub fn current(&self) -> Class {
        self.current
    }
}

/// Puts the calling thread in `class`; whether the system let it.
pub fn set(class: Class) -> bool {
    #[cfg(target_os = "linux")]
    {
        let policy = match class {
            Class::Idle => libc::SCHED_IDLE,
            Class::Batch => libc::SCHED_BATCH,
        };
        let param = libc::sched_param { sched_priority: 0 };
        // SAFETY: a plain syscall on the calling thread (pid 0), reading `param` only.
        unsafe { libc::sched_setscheduler(0, policy, &param) == 0 }
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = class;
        false
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    fn policy() -> i32 {
        // SAFETY: a plain syscall about the calling thread.
        unsafe { libc::sched_getscheduler(0) }
    }

    /// The class changes as asked, where the process may leave the idle class (CI runs as
    /// root); where it may not, the thread stays a batch thread.
    #[test]
    fn the_thread_moves_between_the_classes() {
        std::thread::spawn(|| {
            let mut scheduling = Scheduling::start();
            assert_eq!(policy(), libc::SCHED_BATCH);
            scheduling.set(Class::Idle);
            if scheduling.idle_allowed {
                assert_eq!(
                    (scheduling.current(), policy()),
                    (Class::Idle, libc::SCHED_IDLE)
                );
            } else {
                assert_eq!(
                    (scheduling.current(), policy()),
                    (Class::Batch, libc::SCHED_BATCH)
                );
            }
            scheduling.set(Class::Batch);
            assert_eq!(
                (scheduling.current(), policy()),
                (Class::Batch, libc::SCHED_BATCH)
            );
        })
        .join()
        .unwrap();
    }
}
