//! A deterministic single-threaded executor with virtual time: the simulation's scheduler.
//! Runnable tasks are picked in an order drawn from the seeded generator, and time moves only
//! when no task can run, straight to the next timer. The same seed gives the same run.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rusd::coordinator::seams::{Clock, LocalFuture};

type Task = Pin<Box<dyn Future<Output = ()>>>;

struct Slot {
    future: Task,
    /// The member whose process the task belongs to: a crash drops all of them at once.
    owner: Option<usize>,
    queued: Arc<AtomicBool>,
}

struct TaskWaker {
    id: usize,
    queued: Arc<AtomicBool>,
    ready: Arc<Mutex<VecDeque<usize>>>,
}

impl Wake for TaskWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }
    fn wake_by_ref(self: &Arc<Self>) {
        if !self.queued.swap(true, Ordering::AcqRel) {
            self.ready.lock().unwrap().push_back(self.id);
        }
    }
}

struct Inner {
    base: Instant,
    now: Cell<Duration>,
    tasks: RefCell<Vec<Option<Slot>>>,
    ready: Arc<Mutex<VecDeque<usize>>>,
    timers: RefCell<BTreeMap<(Duration, u64), Waker>>,
    timer_seq: Cell<u64>,
    rng: RefCell<StdRng>,
    polls: Cell<u64>,
}

/// The executor; cheap to clone (all clones share it).
#[derive(Clone)]
pub struct Exec {
    inner: Rc<Inner>,
}

impl Exec {
    pub fn new(seed: u64) -> Exec {
        Exec {
            inner: Rc::new(Inner {
                base: Instant::now(),
                now: Cell::new(Duration::ZERO),
                tasks: RefCell::new(Vec::new()),
                ready: Arc::new(Mutex::new(VecDeque::new())),
                timers: RefCell::new(BTreeMap::new()),
                timer_seq: Cell::new(0),
                rng: RefCell::new(StdRng::seed_from_u64(seed)),
                polls: Cell::new(0),
            }),
        }
    }

    pub fn spawn(&self, owner: Option<usize>, future: impl Future<Output = ()> + 'static) {
        let queued = Arc::new(AtomicBool::new(true));
        let mut tasks = self.inner.tasks.borrow_mut();
        let id = tasks.len();
        tasks.push(Some(Slot {
            future: Box::pin(future),
            owner,
            queued,
        }));
        self.inner.ready.lock().unwrap().push_back(id);
    }

    /// Drops every task of `owner` (a process crash): their futures, channels and timers go.
    pub fn kill(&self, owner: usize) {
        let dropped: Vec<Slot> = {
            let mut tasks = self.inner.tasks.borrow_mut();
            tasks
                .iter_mut()
                .filter(|s| s.as_ref().is_some_and(|s| s.owner == Some(owner)))
                .filter_map(Option::take)
                .collect()
        };
        // Dropping futures can wake others; do it outside the borrow.
        drop(dropped);
    }

    pub fn now(&self) -> Duration {
        self.inner.now.get()
    }

    pub fn rng<T>(&self, f: impl FnOnce(&mut StdRng) -> T) -> T {
        f(&mut self.inner.rng.borrow_mut())
    }

    pub fn chance(&self, p: f64) -> bool {
        self.rng(|r| r.gen_bool(p))
    }

    pub fn polls(&self) -> u64 {
        self.inner.polls.get()
    }

    pub fn clock(&self) -> SimClock {
        SimClock { exec: self.clone() }
    }

    /// Runs until `done` says so (true), or virtual time passes `limit` (false).
    pub fn run_until(&self, limit: Duration, done: impl Fn() -> bool) -> bool {
        while !done() {
            if !self.run_one() && !self.advance() {
                panic!("simulation deadlocked: no runnable task and no timer");
            }
            if self.now() > limit {
                return false;
            }
        }
        true
    }

    /// Polls one runnable task, picked at random; false if none was runnable.
    fn run_one(&self) -> bool {
        let id = {
            let mut ready = self.inner.ready.lock().unwrap();
            if ready.is_empty() {
                return false;
            }
            let i = self.rng(|r| r.gen_range(0..ready.len()));
            ready.remove(i).expect("index in range")
        };
        let slot = self.inner.tasks.borrow_mut()[id].take();
        let Some(mut slot) = slot else {
            return true; // a task that finished or was killed after it was woken
        };
        slot.queued.store(false, Ordering::Release);
        let waker = Waker::from(Arc::new(TaskWaker {
            id,
            queued: slot.queued.clone(),
            ready: self.inner.ready.clone(),
        }));
        let mut cx = Context::from_waker(&waker);
        self.inner.polls.set(self.inner.polls.get() + 1);
        if slot.future.as_mut().poll(&mut cx).is_pending() {
            self.inner.tasks.borrow_mut()[id] = Some(slot);
        }
        true
    }

    /// Moves time to the next timer and fires every timer due then; false if there is none.
    fn advance(&self) -> bool {
        let due: Vec<Waker> = {
            let mut timers = self.inner.timers.borrow_mut();
            let Some((&(at, _), _)) = timers.iter().next() else {
                return false;
            };
            if at > self.inner.now.get() {
                self.inner.now.set(at);
            }
            let now = self.inner.now.get();
            let keys: Vec<(Duration, u64)> =
                timers.range(..=(now, u64::MAX)).map(|(k, _)| *k).collect();
            keys.iter().filter_map(|k| timers.remove(k)).collect()
        };
        for w in due {
            w.wake();
        }
        true
    }

    fn register_timer(&self, at: Duration, waker: Waker) {
        let seq = self.inner.timer_seq.get();
        self.inner.timer_seq.set(seq + 1);
        self.inner.timers.borrow_mut().insert((at, seq), waker);
    }
}

/// Virtual time for the code under test.
#[derive(Clone)]
pub struct SimClock {
    exec: Exec,
}

impl Clock for SimClock {
    fn now(&self) -> Instant {
        self.exec.inner.base + self.exec.now()
    }
    fn sleep(&self, duration: Duration) -> LocalFuture<'static, ()> {
        let at = self.exec.now() + duration;
        Box::pin(Sleep {
            exec: self.exec.clone(),
            at,
        })
    }
}

pub struct Sleep {
    exec: Exec,
    at: Duration,
}

impl Future for Sleep {
    type Output = ();
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.exec.now() >= self.at {
            Poll::Ready(())
        } else {
            self.exec.register_timer(self.at, cx.waker().clone());
            Poll::Pending
        }
    }
}

pub fn sleep(exec: &Exec, d: Duration) -> Sleep {
    Sleep {
        exec: exec.clone(),
        at: exec.now() + d,
    }
}
