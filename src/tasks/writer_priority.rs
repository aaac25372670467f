//! The call-log writer's CPU priority: an idle thread while it keeps up, a batch thread as soon
//! as it falls behind (Linux, where the process may switch between the two).
//!
//! Under `SCHED_IDLE` the writer runs only when the core has nothing else to do, and any
//! request that wakes preempts it at once. As a batch thread (`SCHED_BATCH`, what it always was
//! before) a request that woke while it wrote waited for its group of rows: at c=1 on one core,
//! alternating loads, 16 pairs of 4 s (stop 35), keygate's p99 had a median of ~600 µs with a
//! batch writer and ~315 µs with an idle one (in the quiet rounds 214–281 µs, the floor's
//! 201–237 µs).
//!
//! An idle thread gets next to nothing of a busy core, so the writer must become a batch thread
//! again when it falls behind; the request that sees a quarter of the queue's bound waiting
//! switches it at once, even while it is starved in the middle of a batch. Leaving `SCHED_IDLE`
//! takes `CAP_SYS_NICE` or an `RLIMIT_NICE` of 20 or more (systemd's `LimitNICE=20`): without
//! either the writer stays a batch thread throughout.
//!
//! A batch thread, waking up, does not preempt a running request, it waits for the running
//! thread's turn to end; then it gets a fair share of the CPU. (At nice 5 instead, a share of
//! ~1/7 on a busy core let the writer's queue climb to 2,700–3,600 of 4,096 rows at c=64; as a
//! batch thread it peaked at ~1,400.)

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// After being hurried, the writer stays a batch thread at least this long...
const BATCH_AT_LEAST: Duration = Duration::from_secs(1);
/// ...twice as long each time it was hurried again within `BATCH_AT_LEAST` of relaxing (a busy
/// core starves an idle thread at once), up to this: short, as the threads stay batch threads
/// that long after a load ends (with 64 s, still 5 s after 10 s at c=64, into the quiet that
/// followed), and a hurry more every few seconds of a long load costs nothing measurable.
const BATCH_AT_MOST: Duration = Duration::from_secs(4);

/// The threads whose scheduling follows the writer's queue.
#[derive(Clone, Copy, Debug)]
pub enum Role {
    Writer = 0,
    /// The WAL checkpointer: idle with the writer (its passes took up to 1.8 ms of the core at
    /// c=1), a batch thread with it (on a busy core an idle one would let the WAL grow).
    Checkpointer = 1,
}

/// The writer's and the checkpointer's scheduling, shared with the request path.
#[derive(Debug)]
pub struct Priority {
    /// The process can leave `SCHED_IDLE` again, so its threads may enter it.
    switches: bool,
    /// They run under `SCHED_IDLE` (changed only under `state`'s lock; read without it).
    idle: AtomicBool,
    /// Their thread ids and the backoff: every change of policy is made under this lock, so a
    /// thread's policy is always the one `idle` says.
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    /// The threads' ids, once started (0 before).
    tids: [i32; 2],
    hurried_at: Option<Instant>,
    relaxed_at: Option<Instant>,
    /// How long they stay batch threads after being hurried.
    batch_for: Duration,
}

impl State {
    fn set_all(&self, policy: Policy) {
        for &tid in self.tids.iter().filter(|&&tid| tid != 0) {
            if !set_policy(tid, policy) {
                tracing::warn!(?policy, "cannot change the call-log writer's scheduling");
            }
        }
    }
}

impl Priority {
    /// Finds out, on a thread of its own, whether this process may leave `SCHED_IDLE`.
    pub fn probe() -> Priority {
        let switches = std::thread::Builder::new()
            .name("keygate-sched-probe".into())
            .spawn(|| set_policy(0, Policy::Idle) && set_policy(0, Policy::Batch))
            .ok()
            .and_then(|probe| probe.join().ok())
            .unwrap_or(false);
        if !switches {
            tracing::debug!(
                "the call-log writer runs as a batch thread: leaving SCHED_IDLE needs \
                 CAP_SYS_NICE or RLIMIT_NICE >= 20"
            );
        }
        Priority {
            switches,
            idle: AtomicBool::new(switches),
            state: Mutex::new(State {
                tids: [0; 2],
                hurried_at: None,
                relaxed_at: None,
                batch_for: BATCH_AT_LEAST,
            }),
        }
    }

    /// On the thread taking `role`, before its work: its id noted, its policy the current one.
    pub fn enter(&self, role: Role) {
        let mut state = lock(&self.state);
        state.tids[role as usize] = current_tid();
        let policy = if self.idle.load(SeqCst) {
            Policy::Idle
        } else {
            Policy::Batch
        };
        set_policy(0, policy);
    }

    /// From any thread: the writer is behind; batch threads from now on. One atomic load when
    /// they are.
    pub fn hurry(&self, now: Instant) {
        if !self.idle.load(SeqCst) {
            return;
        }
        let mut state = lock(&self.state);
        if !self.idle.swap(false, SeqCst) {
            return;
        }
        state.set_all(Policy::Batch);
        let starved = state
            .relaxed_at
            .is_some_and(|at| now.saturating_duration_since(at) < BATCH_AT_LEAST);
        state.batch_for = if starved {
            (state.batch_for * 2).min(BATCH_AT_MOST)
        } else {
            BATCH_AT_LEAST
        };
        state.hurried_at = Some(now);
    }

    /// On the writer's thread, after a tick that kept up: idle threads again, unless they
    /// were hurried too recently (`State::batch_for`), `behind` rows or more were queued
    /// meanwhile, or the process could not switch back.
    pub fn relax(&self, queued: &AtomicUsize, behind: usize, now: Instant) {
        if !self.switches || self.idle.load(SeqCst) {
            return;
        }
        {
            let mut state = lock(&self.state);
            let hurried_for = state.hurried_at.map(|at| now.saturating_duration_since(at));
            if self.idle.load(SeqCst) || hurried_for.is_some_and(|d| d < state.batch_for) {
                return;
            }
            state.relaxed_at = Some(now);
            state.set_all(Policy::Idle);
            self.idle.store(true, SeqCst);
        }
        // A request that queued the `behind`th row before `idle` was set found nothing to do:
        // either it is seen here, or it sees `idle` and hurries the writer itself.
        if queued.load(SeqCst) >= behind {
            self.hurry(now);
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[derive(Clone, Copy, Debug)]
enum Policy {
    Idle,
    Batch,
}

#[cfg(target_os = "linux")]
fn current_tid() -> i32 {
    // SAFETY: gettid has no arguments and cannot fail.
    unsafe { libc::gettid() }
}

#[cfg(not(target_os = "linux"))]
fn current_tid() -> i32 {
    0
}

/// Sets thread `tid`'s policy (0: the calling thread), keeping its nice value; false if the
/// kernel refused.
#[cfg(target_os = "linux")]
fn set_policy(tid: i32, policy: Policy) -> bool {
    let policy = match policy {
        Policy::Idle => libc::SCHED_IDLE,
        Policy::Batch => libc::SCHED_BATCH,
    };
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: a plain syscall reading `param` only.
    unsafe { libc::sched_setscheduler(tid, policy, &param) == 0 }
}

#[cfg(not(target_os = "linux"))]
fn set_policy(_tid: i32, _policy: Policy) -> bool {
    false
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn policy_of(tid: i32) -> i32 {
        // SAFETY: a plain syscall.
        unsafe { libc::sched_getscheduler(tid) }
    }

    /// A governed thread, alive until `done` is dropped; returns its id.
    fn governed(
        priority: &Arc<Priority>,
        role: Role,
    ) -> (
        std::thread::JoinHandle<()>,
        i32,
        std::sync::mpsc::Sender<()>,
    ) {
        let (tx, rx) = std::sync::mpsc::channel();
        let (done, wait) = std::sync::mpsc::channel::<()>();
        let priority = priority.clone();
        let handle = std::thread::spawn(move || {
            priority.enter(role);
            tx.send(current_tid()).unwrap();
            let _ = wait.recv();
        });
        let tid = rx.recv().unwrap();
        (handle, tid, done)
    }

    /// Idle while the writer keeps up; batch threads, both, the moment a request finds it
    /// behind (from the request's thread); idle again when it relaxes, unless rows piled up
    /// meanwhile. Where the process cannot leave SCHED_IDLE: batch threads throughout.
    #[test]
    fn the_writer_is_idle_while_it_keeps_up_and_a_batch_thread_when_behind() {
        let priority = Arc::new(Priority::probe());
        let (writer, writer_tid, writer_done) = governed(&priority, Role::Writer);
        let (checkpointer, checkpointer_tid, checkpointer_done) =
            governed(&priority, Role::Checkpointer);
        let policies = || [policy_of(writer_tid), policy_of(checkpointer_tid)];
        let queued = AtomicUsize::new(0);
        let idle = if priority.switches {
            libc::SCHED_IDLE
        } else {
            libc::SCHED_BATCH
        };
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        assert_eq!(policies(), [idle; 2]);
        priority.hurry(at(0));
        assert!(!priority.idle.load(SeqCst));
        assert_eq!(policies(), [libc::SCHED_BATCH; 2]);
        priority.hurry(at(1));
        assert_eq!(policies(), [libc::SCHED_BATCH; 2]);
        // Not within a second of being hurried.
        priority.relax(&queued, 4, at(999));
        assert!(!priority.idle.load(SeqCst));
        assert_eq!(policies(), [libc::SCHED_BATCH; 2]);
        priority.relax(&queued, 4, at(1_000));
        assert_eq!(priority.idle.load(SeqCst), priority.switches);
        assert_eq!(policies(), [idle; 2]);
        if !priority.switches {
            return;
        }
        // Hurried again at once (a busy core): a batch thread twice as long, then 4 s.
        priority.hurry(at(1_100));
        priority.relax(&queued, 4, at(3_099));
        assert!(!priority.idle.load(SeqCst));
        priority.relax(&queued, 4, at(3_100));
        assert!(priority.idle.load(SeqCst));
        priority.hurry(at(3_200));
        priority.relax(&queued, 4, at(7_199));
        assert!(!priority.idle.load(SeqCst));
        priority.relax(&queued, 4, at(7_200));
        assert!(priority.idle.load(SeqCst));
        // Idle for over a second before the next hurry: back to one second.
        priority.hurry(at(9_000));
        priority.relax(&queued, 4, at(10_000));
        assert!(priority.idle.load(SeqCst));
        // Rows piled up while it relaxed: hurried back at once.
        priority.hurry(at(20_000));
        queued.store(4, SeqCst);
        priority.relax(&queued, 4, at(21_000));
        assert!(!priority.idle.load(SeqCst));
        assert_eq!(policies(), [libc::SCHED_BATCH; 2]);
        drop((writer_done, checkpointer_done));
        for thread in [writer, checkpointer] {
            thread.join().unwrap();
        }
    }
}
