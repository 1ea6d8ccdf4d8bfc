//! The simulated network between members: every raft message is dropped, delayed (which
//! reorders), or duplicated at random, and partitions cut members off until healed. It stands
//! where the peer transport stands in the server (`rusd::peer::Transport`).

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::rc::Rc;
use std::task::{Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use futures::channel::oneshot;
use raft::eraftpb::Message;
use rand::Rng;
use rusd::coordinator::raft::RaftMsg;
use rusd::peer::{PeerIncoming, SnapshotSource, Transport};

use super::exec::{sleep, Exec};

#[derive(Clone, Debug)]
pub struct Faults {
    pub drop: f64,
    pub duplicate: f64,
    pub delay_min: Duration,
    pub delay_max: Duration,
}

impl Faults {
    pub fn calm() -> Faults {
        Faults {
            drop: 0.0,
            duplicate: 0.0,
            delay_min: Duration::from_micros(100),
            delay_max: Duration::from_millis(1),
        }
    }
}

struct NetState {
    /// Raft inboxes of the members that are up, by member ID.
    inboxes: BTreeMap<u64, flume::Sender<RaftMsg>>,
    /// Member ID pairs that cannot talk (both directions).
    cut: BTreeSet<(u64, u64)>,
    faults: Faults,
    in_flight: BTreeMap<(Duration, u64), Message>,
    seq: u64,
    waker: Option<Waker>,
    pub delivered: u64,
    pub dropped: u64,
}

#[derive(Clone)]
pub struct Net {
    state: Rc<RefCell<NetState>>,
    exec: Exec,
}

impl Net {
    pub fn new(exec: &Exec) -> Net {
        let net = Net {
            state: Rc::new(RefCell::new(NetState {
                inboxes: BTreeMap::new(),
                cut: BTreeSet::new(),
                faults: Faults::calm(),
                in_flight: BTreeMap::new(),
                seq: 0,
                waker: None,
                delivered: 0,
                dropped: 0,
            })),
            exec: exec.clone(),
        };
        exec.spawn(None, net.clone().deliver_forever());
        net
    }

    pub fn set_faults(&self, faults: Faults) {
        self.state.borrow_mut().faults = faults;
    }

    pub fn attach(&self, id: u64, inbox: flume::Sender<RaftMsg>) {
        self.state.borrow_mut().inboxes.insert(id, inbox);
    }

    pub fn detach(&self, id: u64) {
        self.state.borrow_mut().inboxes.remove(&id);
    }

    /// Cuts `id` off from every other member in `all`.
    pub fn isolate(&self, id: u64, all: &[u64]) {
        let mut s = self.state.borrow_mut();
        for &other in all {
            if other != id {
                s.cut.insert((id.min(other), id.max(other)));
            }
        }
    }

    pub fn heal(&self) {
        self.state.borrow_mut().cut.clear();
    }

    pub fn stats(&self) -> (u64, u64) {
        let s = self.state.borrow();
        (s.delivered, s.dropped)
    }

    pub fn transport(&self, from: u64) -> SimTransport {
        SimTransport {
            from,
            net: self.clone(),
        }
    }

    fn enqueue(&self, from: u64, m: Message) {
        let (drop, copies, delays) = {
            let s = self.state.borrow();
            let f = s.faults.clone();
            let cut = s.cut.contains(&(from.min(m.to), from.max(m.to)));
            drop(s);
            self.exec.rng(|r| {
                let dropped = cut || r.gen_bool(f.drop);
                let copies = if r.gen_bool(f.duplicate) { 2 } else { 1 };
                let delays: Vec<Duration> = (0..copies)
                    .map(|_| r.gen_range(f.delay_min..=f.delay_max))
                    .collect();
                (dropped, copies, delays)
            })
        };
        let mut s = self.state.borrow_mut();
        if drop {
            s.dropped += 1;
            return;
        }
        let now = self.exec.now();
        for d in delays.into_iter().take(copies) {
            let seq = s.seq;
            s.seq += 1;
            s.in_flight.insert((now + d, seq), m.clone());
        }
        if let Some(w) = s.waker.take() {
            w.wake();
        }
    }

    async fn deliver_forever(self) {
        loop {
            let next = self.state.borrow().in_flight.keys().next().map(|k| k.0);
            let now = self.exec.now();
            match next {
                Some(at) if at <= now => {
                    let due: Vec<Message> = {
                        let mut s = self.state.borrow_mut();
                        let keys: Vec<_> = s
                            .in_flight
                            .range(..=(now, u64::MAX))
                            .map(|(k, _)| *k)
                            .collect();
                        keys.iter().filter_map(|k| s.in_flight.remove(k)).collect()
                    };
                    for m in due {
                        let inbox = self.state.borrow().inboxes.get(&m.to).cloned();
                        let mut s = self.state.borrow_mut();
                        match inbox {
                            // A full inbox drops, as a full socket buffer would.
                            Some(tx)
                                if tx
                                    .try_send(RaftMsg::Peer(PeerIncoming::Raft(vec![m])))
                                    .is_ok() =>
                            {
                                s.delivered += 1
                            }
                            _ => s.dropped += 1,
                        }
                    }
                }
                Some(at) => {
                    let wait = sleep(&self.exec, at - now);
                    let notified = self.notified();
                    futures::pin_mut!(wait, notified);
                    futures::future::select(wait, notified).await;
                }
                None => self.notified().await,
            }
        }
    }

    /// Resolves at the next enqueue.
    fn notified(&self) -> impl std::future::Future<Output = ()> + '_ {
        let mut registered = false;
        std::future::poll_fn(move |cx| {
            if registered {
                return Poll::Ready(());
            }
            registered = true;
            self.state.borrow_mut().waker = Some(cx.waker().clone());
            Poll::Pending
        })
    }
}

pub struct SimTransport {
    from: u64,
    net: Net,
}

impl Transport for SimTransport {
    fn send(&mut self, msgs: Vec<Message>) {
        for m in msgs {
            self.net.enqueue(self.from, m);
        }
    }
    fn set_peers(&mut self, _peers: &[(u64, Vec<String>)]) {}
    fn set_removed(&mut self, _ids: &[u64]) {}
    fn send_snapshot(&mut self, to: u64, meta: Bytes, source: Box<dyn SnapshotSource>) {
        let net = self.net.clone();
        let from = self.from;
        self.net.exec.spawn(None, async move {
            net.stream_snapshot(from, to, meta, source).await
        });
    }
}

impl Net {
    /// A snapshot stream: chunk by chunk with network delays, failing if the members are cut
    /// apart or either goes down meanwhile; the sender learns the outcome.
    async fn stream_snapshot(
        self,
        from: u64,
        to: u64,
        meta: Bytes,
        mut source: Box<dyn SnapshotSource>,
    ) {
        let result = async {
            let inbox = self
                .state
                .borrow()
                .inboxes
                .get(&to)
                .cloned()
                .ok_or("the receiver is down")?;
            let (chunks_tx, chunks) = flume::bounded(4);
            let (done, answer) = oneshot::channel();
            inbox
                .send_async(RaftMsg::Peer(PeerIncoming::Snapshot {
                    from,
                    meta,
                    chunks,
                    done,
                }))
                .await
                .map_err(|_| "the receiver is down")?;
            while let Some(chunk) = source.next_chunk() {
                let cut = self
                    .state
                    .borrow()
                    .cut
                    .contains(&(from.min(to), from.max(to)));
                if cut || self.exec.chance(0.01) {
                    return Err("the connection broke");
                }
                let delay = self
                    .exec
                    .rng(|r| std::time::Duration::from_micros(r.gen_range(10..500)));
                sleep(&self.exec, delay).await;
                chunks_tx
                    .send_async(Ok(chunk))
                    .await
                    .map_err(|_| "the receiver went away")?;
            }
            drop(chunks_tx);
            answer
                .await
                .map_err(|_| "the receiver went away")?
                .map_err(|_| "the receiver refused it")
        }
        .await;
        let sender = self.state.borrow().inboxes.get(&from).cloned();
        if let Some(tx) = sender {
            let _ = tx.try_send(RaftMsg::Peer(PeerIncoming::SnapshotStatus {
                to,
                result: result.map_err(str::to_string),
            }));
        }
    }
}
