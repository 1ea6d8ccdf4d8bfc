//! The peer transport over real sockets: members on localhost TCP, unix sockets and TLS, each
//! test in a glommio executor of its own, ports chosen by the kernel (port 0).

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use futures::{AsyncReadExt, AsyncWriteExt};
use raft::eraftpb::{Entry, Message, MessageType};

use super::conn::with_timeout;
use super::wire::{self, pb};
use super::*;
use crate::config::{Config, Url};
use crate::net::ListenAddr;

const CLUSTER: u64 = 0x1000;

/// Runs `body` in a glommio executor of its own and waits for it.
fn run<Fut: Future<Output = ()> + 'static>(body: impl FnOnce() -> Fut + Send + 'static) {
    glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .io_memory(crate::runtime::IO_MEMORY_BYTES)
        .spawn(body)
        .expect("the executor starts")
        .join()
        .expect("the test body ran to its end");
}

async fn within<F: Future>(seconds: u64, f: F) -> F::Output {
    with_timeout(Duration::from_secs(seconds), f)
        .await
        .expect("timed out")
}

async fn sleep_ms(ms: u64) {
    glommio::timer::sleep(Duration::from_millis(ms)).await;
}

struct Member {
    id: u64,
    transport: PeerTransport,
    client: PeerClient,
    inbox: flume::Receiver<PeerIncoming>,
    url: String,
}

fn member_with(options: PeerOptions) -> Member {
    let (tx, inbox) = flume::bounded(4096);
    let id = options.member_id;
    let scheme = options.listen_urls[0].scheme.clone();
    let (transport, client) = PeerTransport::start(options, tx).expect("the transport starts");
    let url = match &transport.listen_addrs()[0] {
        ListenAddr::Tcp(a) => format!("{scheme}://{a}"),
        ListenAddr::Unix(p) => format!("{scheme}://{}", p.display()),
    };
    Member {
        id,
        transport,
        client,
        inbox,
        url,
    }
}

fn member(id: u64, cluster: u64, listen: &str) -> Member {
    member_with(PeerOptions::new(
        id,
        cluster,
        vec![Url::parse(listen).unwrap()],
    ))
}

/// Makes every member a peer of every other.
fn connect(members: &mut [&mut Member]) {
    let all: Vec<(u64, Vec<String>)> = members
        .iter()
        .map(|m| (m.id, vec![m.url.clone()]))
        .collect();
    for m in members.iter_mut() {
        m.transport.set_peers(&all);
    }
}

/// A raft append from `from` to `to` whose index is `index`, with `payload_bytes` of data.
fn append(from: u64, to: u64, index: u64, payload_bytes: usize) -> Message {
    let mut m = Message::default();
    m.set_msg_type(MessageType::MsgAppend);
    m.from = from;
    m.to = to;
    m.index = index;
    m.term = 3;
    m.entries.push(Entry {
        index: index + 1,
        term: 3,
        data: Bytes::from(vec![(index % 251) as u8; payload_bytes]),
        ..Default::default()
    });
    m
}

/// Raft messages from the inbox until `count` arrived: (messages, frames that carried them).
/// Other items are ignored.
async fn receive_raft(
    inbox: &flume::Receiver<PeerIncoming>,
    count: usize,
) -> (Vec<Message>, usize) {
    let mut messages = Vec::new();
    let mut batches = 0;
    while messages.len() < count {
        match within(10, inbox.recv_async()).await.expect("inbox open") {
            PeerIncoming::Raft(batch) => {
                batches += 1;
                messages.extend(batch);
            }
            _ => continue,
        }
    }
    (messages, batches)
}

/// The next item of an inbox that is not raft traffic.
async fn next_event(inbox: &flume::Receiver<PeerIncoming>) -> PeerIncoming {
    loop {
        match within(10, inbox.recv_async()).await.expect("inbox open") {
            PeerIncoming::Raft(_) => continue,
            other => return other,
        }
    }
}

/// Nothing at all arrives in `ms` milliseconds.
async fn assert_quiet(inbox: &flume::Receiver<PeerIncoming>, ms: u64) {
    if let Some(Ok(item)) = with_timeout(Duration::from_millis(ms), inbox.recv_async()).await {
        let what = match item {
            PeerIncoming::Raft(_) => "raft messages",
            PeerIncoming::Unreachable(_) => "unreachable",
            PeerIncoming::Request { .. } => "a request",
            PeerIncoming::Snapshot { .. } => "a snapshot",
            PeerIncoming::SnapshotStatus { .. } => "a snapshot status",
            PeerIncoming::RemovedFromCluster { .. } => "removed",
        };
        panic!("expected nothing, got {what}");
    }
}

/// Answers every request on `inbox` with `"<from>:<body reversed>"`, until the inbox closes.
fn answer_requests(inbox: flume::Receiver<PeerIncoming>) {
    glommio::spawn_local(async move {
        while let Ok(item) = inbox.recv_async().await {
            if let PeerIncoming::Request { from, body, reply } = item {
                let mut answer = format!("{from}:").into_bytes();
                answer.extend(body.iter().rev());
                let _ = reply.send(Bytes::from(answer));
            }
        }
    })
    .detach();
}

#[test]
fn raft_messages_are_delivered_in_order_and_batched() {
    run(|| async {
        let mut a = member(1, CLUSTER, "http://127.0.0.1:0");
        let mut b = member(2, CLUSTER, "http://127.0.0.1:0");
        connect(&mut [&mut a, &mut b]);

        // A thousand messages queued in one call travel in very few frames.
        a.transport
            .send((0..1000).map(|i| append(1, 2, i, 100)).collect());
        let (messages, batches) = receive_raft(&b.inbox, 1000).await;
        let indexes: Vec<u64> = messages.iter().map(|m| m.index).collect();
        assert_eq!(indexes, (0..1000).collect::<Vec<_>>());
        assert!(messages.iter().all(|m| m.from == 1 && m.to == 2));
        assert_eq!(messages[7], append(1, 2, 7, 100), "messages arrive intact");
        assert!(batches <= 5, "1000 queued messages took {batches} frames");
        let stats = a.transport.stats();
        assert_eq!(stats.messages_sent, 1000);
        assert!(stats.batches_sent <= 5);
        assert_eq!(b.transport.stats().messages_received, 1000);

        // The other way, on B's own connection.
        b.transport.send(vec![append(2, 1, 5, 10)]);
        let (messages, _) = receive_raft(&a.inbox, 1).await;
        assert_eq!(messages, vec![append(2, 1, 5, 10)]);

        // A message to a member that is not a peer is dropped and counted.
        a.transport.send(vec![append(1, 9, 0, 1)]);
        assert_eq!(a.transport.stats().messages_dropped_other, 1);

        // A message too large for a frame is dropped, not sent.
        let large = append(1, 2, 0, wire::FRAME_BYTES_MAX);
        a.transport.send(vec![large]);
        assert_eq!(a.transport.stats().messages_dropped_other, 2);
        assert_eq!(a.transport.queued(2), 0);
    });
}

#[test]
fn a_full_queue_drops_the_newest_counts_and_reports_unreachable() {
    run(|| async {
        let mut options =
            PeerOptions::new(1, CLUSTER, vec![Url::parse("http://127.0.0.1:0").unwrap()]);
        options.queue_messages_max = 10;
        options.queue_bytes_max = 100_000;
        let mut a = member_with(options);
        let mut b = member(2, CLUSTER, "http://127.0.0.1:0");
        connect(&mut [&mut a, &mut b]);

        // The writer cannot run during one send call: 25 messages meet a queue of 10.
        a.transport
            .send((0..25).map(|i| append(1, 2, i, 10)).collect());
        assert_eq!(a.transport.stats().messages_dropped_queue_full, 15);
        assert_eq!(a.transport.queued(2), 10);
        match next_event(&a.inbox).await {
            PeerIncoming::Unreachable(2) => {}
            _ => panic!("raft is told the peer is unreachable"),
        }
        // The oldest ten got through, in order; the newest were dropped.
        let (messages, _) = receive_raft(&b.inbox, 10).await;
        assert_eq!(
            messages.iter().map(|m| m.index).collect::<Vec<_>>(),
            (0..10).collect::<Vec<_>>()
        );
        assert_quiet(&b.inbox, 200).await;

        // The byte bound: 30 kB messages against 100 kB queued.
        a.transport
            .send((100..105).map(|i| append(1, 2, i, 30_000)).collect());
        assert_eq!(a.transport.stats().messages_dropped_queue_full, 15 + 2);
        let (messages, _) = receive_raft(&b.inbox, 3).await;
        assert_eq!(
            messages.iter().map(|m| m.index).collect::<Vec<_>>(),
            vec![100, 101, 102]
        );

        // An empty queue takes even a message above the byte bound.
        a.transport.send(vec![append(1, 2, 200, 150_000)]);
        let (messages, _) = receive_raft(&b.inbox, 1).await;
        assert_eq!(messages[0].index, 200);
    });
}

#[test]
fn a_link_reconnects_after_the_listener_restarts() {
    run(|| async {
        let mut a = member(1, CLUSTER, "http://127.0.0.1:0");
        let mut b = member(2, CLUSTER, "http://127.0.0.1:0");
        connect(&mut [&mut a, &mut b]);
        a.transport.send(vec![append(1, 2, 1, 10)]);
        receive_raft(&b.inbox, 1).await;

        // B goes away: its listener and connections close.
        let b_url = b.url.clone();
        drop(b);
        sleep_ms(50).await;
        match next_event(&a.inbox).await {
            PeerIncoming::Unreachable(2) => {}
            _ => panic!("the lost connection is reported"),
        }
        // While B is down, sends fail and are reported, with backoff between dials.
        a.transport.send(vec![append(1, 2, 2, 10)]);
        match next_event(&a.inbox).await {
            PeerIncoming::Unreachable(2) => {}
            _ => panic!("the failed dial is reported"),
        }
        assert!(a.transport.stats().dials_failed >= 1);

        // B comes back on the same address; A's link finds it again.
        let mut b = member(2, CLUSTER, &b_url);
        assert_eq!(b.url, b_url);
        connect(&mut [&mut a, &mut b]);
        let started = Instant::now();
        let delivered = loop {
            a.transport.send(vec![append(1, 2, 3, 10)]);
            match with_timeout(Duration::from_millis(100), b.inbox.recv_async()).await {
                Some(Ok(PeerIncoming::Raft(m))) => break m,
                _ => assert!(
                    started.elapsed() < Duration::from_secs(10),
                    "A never reconnected"
                ),
            }
        };
        assert_eq!(delivered[0].index, 3);
        // Reconnection happens within the backoff cap (plus scheduling slack).
        assert!(started.elapsed() < BACKOFF_MAX + Duration::from_secs(2));
    });
}

#[test]
fn a_peer_of_another_cluster_is_refused() {
    run(|| async {
        let mut a = member(1, CLUSTER, "http://127.0.0.1:0");
        let mut b = member(2, CLUSTER + 1, "http://127.0.0.1:0");
        connect(&mut [&mut a, &mut b]);
        a.transport.send(vec![append(1, 2, 1, 10)]);
        match next_event(&a.inbox).await {
            PeerIncoming::Unreachable(2) => {}
            _ => panic!("a refused link is unreachable"),
        }
        assert_quiet(&b.inbox, 300).await;
        assert!(b.transport.stats().handshakes_refused >= 1);
        assert_eq!(b.transport.stats().messages_received, 0);
        // Requests are refused with etcd's reason.
        let answer = a
            .client
            .call(2, Bytes::from_static(b"x"), Duration::from_secs(2))
            .await;
        assert_eq!(
            answer,
            Err(PeerError::Refused("cluster ID mismatch".into()))
        );
    });
}

#[test]
fn a_removed_member_is_refused_and_told() {
    run(|| async {
        let mut a = member(1, CLUSTER, "http://127.0.0.1:0");
        let mut b = member(2, CLUSTER, "http://127.0.0.1:0");
        let mut c = member(3, CLUSTER, "http://127.0.0.1:0");
        connect(&mut [&mut a, &mut b, &mut c]);

        // At the handshake: B knows A was removed.
        b.transport.set_removed(&[1]);
        a.transport.send(vec![append(1, 2, 1, 10)]);
        match next_event(&a.inbox).await {
            PeerIncoming::RemovedFromCluster { by: 2 } => {}
            _ => panic!("A learns it was removed"),
        }
        assert_quiet(&b.inbox, 200).await;
        // A sends nothing more to B.
        a.transport.send(vec![append(1, 2, 2, 10)]);
        sleep_ms(100).await;
        assert_eq!(b.transport.stats().messages_received, 0);

        // On a live connection: C talks to B, then B learns C was removed.
        c.transport.send(vec![append(3, 2, 1, 10)]);
        receive_raft(&b.inbox, 1).await;
        b.transport.set_removed(&[3]);
        match next_event(&c.inbox).await {
            PeerIncoming::RemovedFromCluster { by: 2 } => {}
            _ => panic!("C learns it was removed without sending anything"),
        }
        // Requests from a removed member are refused too.
        let answer = c
            .client
            .call(2, Bytes::from_static(b"x"), Duration::from_secs(2))
            .await;
        assert!(matches!(answer, Err(PeerError::Refused(_))), "{answer:?}");
    });
}

#[test]
fn requests_are_answered_from_any_core() {
    run(|| async {
        let mut a = member(1, CLUSTER, "http://127.0.0.1:0");
        let mut b = member(2, CLUSTER, "http://127.0.0.1:0");
        connect(&mut [&mut a, &mut b]);
        let b_url = b.url.clone();
        answer_requests(b.inbox.clone());

        let answer = a
            .client
            .call(2, Bytes::from_static(b"hello"), Duration::from_secs(5))
            .await;
        assert_eq!(answer, Ok(Bytes::from_static(b"1:olleh")));
        // By URL only (a joining member): the receiver still learns who asks.
        let answer = a
            .client
            .call_url(&b_url, Bytes::from_static(b"abc"), Duration::from_secs(5))
            .await;
        assert_eq!(answer, Ok(Bytes::from_static(b"1:cba")));
        assert_eq!(
            a.client.call(7, Bytes::new(), Duration::from_secs(1)).await,
            Err(PeerError::UnknownPeer(7))
        );

        // From another executor (another core): the client is Send and its futures too.
        let client = a.client.clone();
        let (done_tx, done_rx) = flume::bounded(1);
        let other = std::thread::spawn(move || {
            run(move || async move {
                let mut answers = Vec::new();
                for i in 0..20u8 {
                    let body = Bytes::from(vec![b'a' + i]);
                    answers.push(client.call(2, body, Duration::from_secs(5)).await);
                }
                done_tx.send(answers).unwrap();
            });
        });
        let answers = within(20, done_rx.recv_async()).await.unwrap();
        other.join().unwrap();
        for (i, answer) in answers.into_iter().enumerate() {
            let expected = format!("1:{}", (b'a' + i as u8) as char);
            assert_eq!(answer, Ok(Bytes::from(expected)));
        }
    });
}

#[test]
fn requests_in_flight_are_bounded_and_time_out() {
    run(|| async {
        let mut a = member(1, CLUSTER, "http://127.0.0.1:0");
        let mut b = member(2, CLUSTER, "http://127.0.0.1:0");
        connect(&mut [&mut a, &mut b]);

        // 70 calls at once; B holds every request without answering.
        let calls: Vec<_> = (0..70u64)
            .map(|i| {
                let client = a.client.clone();
                glommio::spawn_local(async move {
                    client
                        .call(2, Bytes::from(i.to_string()), Duration::from_secs(10))
                        .await
                })
            })
            .collect();
        let mut held = Vec::new();
        while held.len() < REQUESTS_IN_FLIGHT_MAX {
            match within(10, b.inbox.recv_async()).await.unwrap() {
                PeerIncoming::Request { from, body, reply } => {
                    assert_eq!(from, 1);
                    held.push((body, reply));
                }
                _ => panic!("only requests arrive"),
            }
        }
        // No more than the bound is in flight.
        assert_quiet(&b.inbox, 300).await;
        // Answering frees slots for the rest.
        for (body, reply) in held.drain(..) {
            reply.send(body).unwrap();
        }
        let mut rest = 0;
        while rest < 70 - REQUESTS_IN_FLIGHT_MAX {
            match within(10, b.inbox.recv_async()).await.unwrap() {
                PeerIncoming::Request { body, reply, .. } => {
                    reply.send(body).unwrap();
                    rest += 1;
                }
                _ => panic!("only requests arrive"),
            }
        }
        for (i, call) in calls.into_iter().enumerate() {
            assert_eq!(call.await, Ok(Bytes::from(i.to_string())));
        }

        // A request never answered times out; one whose reply is dropped fails.
        let client = a.client.clone();
        let slow = glommio::spawn_local(async move {
            client
                .call(2, Bytes::from_static(b"slow"), Duration::from_millis(300))
                .await
        });
        let kept = match within(5, b.inbox.recv_async()).await.unwrap() {
            PeerIncoming::Request { reply, .. } => reply,
            _ => panic!("a request arrives"),
        };
        assert_eq!(slow.await, Err(PeerError::Timeout));
        drop(kept);
        let client = a.client.clone();
        let dropped = glommio::spawn_local(async move {
            client
                .call(2, Bytes::from_static(b"dropped"), Duration::from_secs(5))
                .await
        });
        match within(5, b.inbox.recv_async()).await.unwrap() {
            PeerIncoming::Request { reply, .. } => drop(reply),
            _ => panic!("a request arrives"),
        }
        assert!(matches!(dropped.await, Err(PeerError::Remote(_))));
    });
}

#[test]
fn unix_sockets_carry_raft_and_requests() {
    let dir = tempfile::tempdir().unwrap();
    let a_url = format!("unix://{}", dir.path().join("a.sock").display());
    let b_url = format!("unix://{}", dir.path().join("b.sock").display());
    run(move || async move {
        let mut a = member(1, CLUSTER, &a_url);
        let mut b = member(2, CLUSTER, &b_url);
        assert_eq!(a.url, a_url);
        connect(&mut [&mut a, &mut b]);
        a.transport
            .send((0..50).map(|i| append(1, 2, i, 1000)).collect());
        let (messages, _) = receive_raft(&b.inbox, 50).await;
        assert_eq!(messages.last().unwrap().index, 49);
        answer_requests(a.inbox.clone());
        let answer = b
            .client
            .call(1, Bytes::from_static(b"unix"), Duration::from_secs(5))
            .await;
        assert_eq!(answer, Ok(Bytes::from_static(b"2:xinu")));
    });
}

/// A slow reader of a snapshot: takes each chunk after `delay_ms`, checks the byte pattern,
/// answers `done`, and returns (bytes, whether the stream ended with the end marker).
async fn consume_snapshot(
    chunks: flume::Receiver<Result<Bytes, PeerError>>,
    done: futures::channel::oneshot::Sender<Result<(), String>>,
    consumed: Rc<Cell<u64>>,
    delay_ms: u64,
) -> (u64, bool) {
    let mut total = 0u64;
    let mut clean = false;
    while let Ok(item) = chunks.recv_async().await {
        match item {
            Ok(chunk) if chunk.is_empty() => {
                clean = true;
                assert!(
                    chunks.recv_async().await.is_err(),
                    "nothing follows the end marker"
                );
                break;
            }
            Ok(chunk) => {
                for (i, b) in chunk.iter().enumerate() {
                    assert_eq!(
                        *b,
                        ((total + i as u64) % 253) as u8,
                        "snapshot bytes intact"
                    );
                }
                total += chunk.len() as u64;
                consumed.set(total);
                if delay_ms > 0 {
                    sleep_ms(delay_ms).await;
                }
            }
            Err(_) => {
                clean = false;
                break;
            }
        }
    }
    let _ = done.send(if clean { Ok(()) } else { Err("broken".into()) });
    (total, clean)
}

fn snapshot_chunk(offset: u64, bytes: usize) -> Bytes {
    Bytes::from(
        (0..bytes as u64)
            .map(|i| ((offset + i) % 253) as u8)
            .collect::<Vec<u8>>(),
    )
}

/// Streams a 50 MiB snapshot from A to B through a slow consumer while A sends B raft
/// messages, and checks that the producer never ran more than `ahead_max` bytes ahead of the
/// consumer and that raft messages kept arriving.
fn snapshot_while_raft_flows(a_listen: String, b_listen: String, ahead_max: u64) {
    const CHUNK: usize = 1 << 20;
    const CHUNKS: u64 = 50;
    run(move || async move {
        let mut a = member(1, CLUSTER, &a_listen);
        let mut b = member(2, CLUSTER, &b_listen);
        connect(&mut [&mut a, &mut b]);

        // The producer: 50 chunks of 1 MiB through a channel of 2.
        let produced = Rc::new(Cell::new(0u64));
        let consumed = Rc::new(Cell::new(0u64));
        let (chunk_tx, chunk_rx) = flume::bounded::<Bytes>(2);
        let max_ahead = Rc::new(Cell::new(0u64));
        {
            let (produced, consumed, max_ahead) =
                (produced.clone(), consumed.clone(), max_ahead.clone());
            glommio::spawn_local(async move {
                for i in 0..CHUNKS {
                    let chunk = snapshot_chunk(i * CHUNK as u64, CHUNK);
                    chunk_tx.send_async(chunk).await.unwrap();
                    produced.set((i + 1) * CHUNK as u64);
                    max_ahead.set(max_ahead.get().max(produced.get() - consumed.get()));
                }
            })
            .detach();
        }
        let client = a.client.clone();
        let sending = glommio::spawn_local(async move {
            client
                .send_snapshot(2, Bytes::from_static(b"meta at index 42"), chunk_rx)
                .await
        });

        // Raft traffic every 10 ms meanwhile, on its own connection.
        let snapshot_finished = Rc::new(Cell::new(false));
        let raft_during_snapshot = Rc::new(RefCell::new(Vec::<Instant>::new()));
        let mut index = 0;
        let mut consumer = None;
        while !snapshot_finished.get() {
            index += 1;
            a.transport.send(vec![append(1, 2, index, 64)]);
            if let Some(Ok(item)) =
                with_timeout(Duration::from_millis(10), b.inbox.recv_async()).await
            {
                match item {
                    PeerIncoming::Raft(_) if consumer.is_some() => {
                        raft_during_snapshot.borrow_mut().push(Instant::now());
                    }
                    PeerIncoming::Snapshot {
                        from,
                        meta,
                        chunks,
                        done,
                    } => {
                        assert_eq!(from, 1);
                        assert_eq!(meta, Bytes::from_static(b"meta at index 42"));
                        let consumed = consumed.clone();
                        let finished = snapshot_finished.clone();
                        consumer = Some(glommio::spawn_local(async move {
                            let out = consume_snapshot(chunks, done, consumed, 20).await;
                            finished.set(true);
                            out
                        }));
                    }
                    _ => {}
                }
            }
        }
        let (total, clean) = within(30, consumer.unwrap()).await;
        assert!(clean, "the stream ended with its checksum verified");
        assert_eq!(total, CHUNKS * CHUNK as u64);
        assert_eq!(within(30, sending).await, Ok(()));

        let arrivals = raft_during_snapshot.borrow();
        let longest_gap = arrivals
            .windows(2)
            .map(|w| w[1] - w[0])
            .max()
            .unwrap_or_default();
        println!(
            "snapshot of {total} bytes: producer at most {} bytes ahead of the consumer; {} raft batches arrived during it, longest gap {longest_gap:?}",
            max_ahead.get(),
            arrivals.len()
        );
        // Bounded memory: the producer was never more than part of the snapshot ahead of the
        // (slow) consumer; the slack is the channels and the sockets' buffers.
        let ahead = max_ahead.get();
        assert!(
            ahead <= ahead_max,
            "the producer ran {ahead} bytes ahead of the consumer"
        );
        // Raft was not blocked behind the snapshot: messages kept arriving all along.
        assert!(
            arrivals.len() >= 20,
            "only {} raft batches during the snapshot",
            arrivals.len()
        );
        // The consumer alone makes the snapshot last over a second (50 chunks, 20 ms each):
        // raft waiting behind it would show a gap of about that.
        assert!(
            longest_gap < Duration::from_millis(600),
            "raft waited {longest_gap:?} during the snapshot"
        );
    });
}

#[test]
fn a_50_mib_snapshot_over_tcp_streams_in_bounded_memory_while_raft_flows() {
    // In the process: the producer's channel (2 chunks), the frame being written (1), the
    // receiver's frame buffer (1) and chunk channel (4), the chunk being consumed (1). The
    // kernel adds the sockets' buffers, which TCP autotuning may grow to tcp_wmem's and
    // tcp_rmem's maximum (4 MiB and up to 32 MiB on common kernels; 15 MiB was seen here).
    snapshot_while_raft_flows(
        "http://127.0.0.1:0".into(),
        "http://127.0.0.1:0".into(),
        45 << 20,
    );
}

#[test]
fn a_50_mib_snapshot_over_unix_sockets_stays_within_the_transports_bounds() {
    // Unix socket buffers do not autotune (about 200 kB each way), so what runs ahead is
    // almost only the transport's own bounded buffers: 9 chunks, plus slack for the sockets.
    let dir = tempfile::tempdir().unwrap();
    snapshot_while_raft_flows(
        format!("unix://{}", dir.path().join("a.sock").display()),
        format!("unix://{}", dir.path().join("b.sock").display()),
        11 << 20,
    );
}

#[test]
fn a_refused_snapshot_reaches_the_sender() {
    run(|| async {
        let mut a = member(1, CLUSTER, "http://127.0.0.1:0");
        let mut b = member(2, CLUSTER, "http://127.0.0.1:0");
        connect(&mut [&mut a, &mut b]);
        let (chunk_tx, chunk_rx) = flume::bounded::<Bytes>(1);
        glommio::spawn_local(async move {
            for i in 0..100u64 {
                if chunk_tx
                    .send_async(snapshot_chunk(i * 1000, 1000))
                    .await
                    .is_err()
                {
                    return;
                }
            }
        })
        .detach();
        let client = a.client.clone();
        let sending =
            glommio::spawn_local(
                async move { client.send_snapshot(2, Bytes::new(), chunk_rx).await },
            );
        match within(10, b.inbox.recv_async()).await.unwrap() {
            PeerIncoming::Snapshot { chunks, done, .. } => {
                chunks.recv_async().await.unwrap().unwrap();
                done.send(Err("no room for it".into())).unwrap();
            }
            _ => panic!("a snapshot arrives"),
        }
        assert_eq!(
            within(10, sending).await,
            Err(PeerError::Remote("no room for it".into()))
        );
    });
}

/// Speaks the protocol by hand: dials, sends the preamble and a handshake, returns the
/// stream after an accepted answer.
async fn raw_dial(addr: &str, handshake: pb::Handshake) -> glommio::net::TcpStream {
    let mut stream = glommio::net::TcpStream::connect(addr).await.unwrap();
    let mut hello = BytesMut::from(&wire::PREAMBLE[..]);
    wire::encode_frame(&handshake, wire::HANDSHAKE_FRAME_BYTES_MAX, &mut hello).unwrap();
    stream.write_all(&hello).await.unwrap();
    let mut header = [0u8; 4];
    stream.read_exact(&mut header).await.unwrap();
    let mut answer = vec![0u8; u32::from_be_bytes(header) as usize];
    stream.read_exact(&mut answer).await.unwrap();
    let answer = wire::decode_handshake_answer(Bytes::from(answer)).unwrap();
    assert_eq!(answer.refusal, pb::Refusal::None as i32);
    stream
}

/// Reads until the peer closes the connection; panics if it stays open.
async fn assert_closed(stream: &mut glommio::net::TcpStream) {
    let mut sink = [0u8; 1024];
    loop {
        match within(10, stream.read(&mut sink)).await {
            Ok(0) | Err(_) => return,
            Ok(_) => continue,
        }
    }
}

#[test]
fn protocol_errors_close_the_connection() {
    run(|| async {
        let mut a = member(1, CLUSTER, "http://127.0.0.1:0");
        let mut b = member(2, CLUSTER, "http://127.0.0.1:0");
        connect(&mut [&mut a, &mut b]);
        let addr = b.url.trim_start_matches("http://").to_string();
        let handshake = |kind: pb::ConnectionKind| pb::Handshake {
            protocol_version: wire::PROTOCOL_VERSION,
            cluster_id: CLUSTER,
            from: 1,
            to: 2,
            kind: kind as i32,
            ..Default::default()
        };

        // Not the protocol at all.
        let mut stream = glommio::net::TcpStream::connect(addr.as_str())
            .await
            .unwrap();
        stream
            .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        assert_closed(&mut stream).await;

        // A frame claiming 1 GiB: closed, nothing allocated or delivered.
        let mut stream = raw_dial(&addr, handshake(pb::ConnectionKind::Raft)).await;
        let mut frame = BytesMut::new();
        frame.put_u32(1 << 30);
        frame.put_slice(&[0u8; 16]);
        stream.write_all(&frame).await.unwrap();
        assert_closed(&mut stream).await;

        // A request frame on a raft connection.
        let mut stream = raw_dial(&addr, handshake(pb::ConnectionKind::Raft)).await;
        let mut frame = BytesMut::new();
        let body = pb::frame::Body::Request(pb::Request {
            id: 1,
            body: Bytes::new(),
        });
        wire::encode_body(body, usize::MAX, &mut frame).unwrap();
        stream.write_all(&frame).await.unwrap();
        assert_closed(&mut stream).await;
        assert_quiet(&b.inbox, 100).await;

        // A snapshot whose checksum does not match: the raft node sees an error, never a
        // clean end, and the sender is told.
        let mut stream = raw_dial(&addr, handshake(pb::ConnectionKind::Snapshot)).await;
        let mut frames = BytesMut::new();
        for body in [
            pb::frame::Body::SnapshotMeta(pb::SnapshotMeta {
                meta: Bytes::from_static(b"m"),
            }),
            pb::frame::Body::SnapshotChunk(pb::SnapshotChunk {
                data: Bytes::from_static(b"data"),
            }),
            pb::frame::Body::SnapshotEnd(pb::SnapshotEnd {
                total_bytes: 4,
                crc32c: 12345,
            }),
        ] {
            wire::encode_body(body, usize::MAX, &mut frames).unwrap();
        }
        stream.write_all(&frames).await.unwrap();
        match within(10, b.inbox.recv_async()).await.unwrap() {
            PeerIncoming::Snapshot { chunks, done, .. } => {
                assert_eq!(
                    chunks.recv_async().await.unwrap(),
                    Ok(Bytes::from_static(b"data"))
                );
                match chunks.recv_async().await.unwrap() {
                    Err(PeerError::Broken(e)) => assert!(e.contains("checksum mismatch"), "{e}"),
                    other => panic!("expected a checksum error, got {other:?}"),
                }
                drop(done);
            }
            _ => panic!("a snapshot arrives"),
        }
        let mut header = [0u8; 4];
        within(10, stream.read_exact(&mut header)).await.unwrap();
        let mut payload = vec![0u8; u32::from_be_bytes(header) as usize];
        stream.read_exact(&mut payload).await.unwrap();
        match wire::decode_frame(Bytes::from(payload)).unwrap() {
            pb::frame::Body::SnapshotDone(done) => {
                assert!(!done.ok);
                assert!(done.error.contains("checksum mismatch"), "{}", done.error);
            }
            other => panic!(
                "expected the snapshot answer, got {}",
                wire::frame_name(&other)
            ),
        }
        // After all that, the real link still works.
        a.transport.send(vec![append(1, 2, 1, 10)]);
        receive_raft(&b.inbox, 1).await;
    });
}

// ---------------------------------------------------------------------------------------------
// TLS

/// A CA and certificates signed by it, in a temporary directory.
struct Pki {
    dir: tempfile::TempDir,
    ca: rcgen::Certificate,
    ca_key: rcgen::KeyPair,
}

impl Pki {
    fn new() -> Pki {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyUsagePurpose};
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name
            .push(DnType::CommonName, "peer test ca");
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let ca = p.self_signed(&ca_key).unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ca.crt"), ca.pem()).unwrap();
        Pki { dir, ca, ca_key }
    }

    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }

    /// `<name>.crt`/`<name>.key` for server and client auth on 127.0.0.1 with CN `cn`.
    fn issue(&self, name: &str, cn: &str, serial: u8) -> rcgen::SerialNumber {
        self.issue_for(name, cn, serial, "127.0.0.1")
    }

    /// As [`Pki::issue`], for address `san`.
    fn issue_for(&self, name: &str, cn: &str, serial: u8, san: &str) -> rcgen::SerialNumber {
        use rcgen::{CertificateParams, DnType, ExtendedKeyUsagePurpose, KeyUsagePurpose};
        let mut p = CertificateParams::new(vec![san.to_string()]).unwrap();
        p.distinguished_name = rcgen::DistinguishedName::new();
        p.distinguished_name.push(DnType::CommonName, cn);
        p.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let serial_number = rcgen::SerialNumber::from_slice(&[0x20, serial]);
        p.serial_number = Some(serial_number.clone());
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let cert = p.signed_by(&key, &self.ca, &self.ca_key).unwrap();
        std::fs::write(self.path(&format!("{name}.crt")), cert.pem()).unwrap();
        std::fs::write(self.path(&format!("{name}.key")), key.serialize_pem()).unwrap();
        serial_number
    }

    /// A PEM CRL revoking `serials`, written to `name`.
    fn crl(&self, name: &str, serials: &[rcgen::SerialNumber]) {
        let now = time::OffsetDateTime::now_utc();
        let params = rcgen::CertificateRevocationListParams {
            this_update: now - time::Duration::days(1),
            next_update: now + time::Duration::days(30),
            crl_number: rcgen::SerialNumber::from(1u64),
            issuing_distribution_point: None,
            revoked_certs: serials
                .iter()
                .map(|s| rcgen::RevokedCertParams {
                    serial_number: s.clone(),
                    revocation_time: now - time::Duration::days(1),
                    reason_code: None,
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: rcgen::KeyIdMethod::Sha256,
        };
        let crl = params.signed_by(&self.ca, &self.ca_key).unwrap();
        std::fs::write(self.path(name), crl.pem().unwrap()).unwrap();
    }

    /// A configuration for member `name`: peer TLS with client certificate auth.
    fn config(&self, name: &str) -> Config {
        let mut cfg = Config::default();
        cfg.listen_peer_urls = vec![Url::parse("https://127.0.0.1:0").unwrap()];
        cfg.initial_advertise_peer_urls = cfg.listen_peer_urls.clone();
        cfg.data_dir = self.dir.path().join(format!("{name}.etcd"));
        cfg.peer_tls.cert_file = self.path(&format!("{name}.crt"));
        cfg.peer_tls.key_file = self.path(&format!("{name}.key"));
        cfg.peer_tls.trusted_ca_file = self.path("ca.crt");
        cfg.peer_tls.client_cert_auth = true;
        cfg
    }
}

fn tls_member(cfg: &Config, id: u64) -> Member {
    member_with(PeerOptions::from_config(cfg, id, CLUSTER).expect("peer TLS options"))
}

#[test]
fn tls_peers_talk_and_a_disallowed_cn_or_revoked_certificate_is_refused() {
    let pki = Pki::new();
    pki.issue("a", "peer-a", 1);
    pki.issue("b", "peer-b", 2);
    pki.issue("c", "intruder", 3);
    let revoked = pki.issue("d", "peer-d", 4);
    pki.crl("revoked.crl", &[revoked]);
    let a_cfg = pki.config("a");
    let mut b_cfg = pki.config("b");
    // B accepts only peer-a and peer-d by CN; D's certificate is revoked.
    b_cfg.peer_tls.allowed_cn = vec!["peer-a".into(), "peer-d".into()];
    b_cfg.peer_tls.crl_file = pki.path("revoked.crl");
    let c_cfg = pki.config("c");
    let d_cfg = pki.config("d");
    run(move || async move {
        let mut a = tls_member(&a_cfg, 1);
        let mut b = tls_member(&b_cfg, 2);
        let mut c = tls_member(&c_cfg, 3);
        let mut d = tls_member(&d_cfg, 4);
        assert!(a.url.starts_with("https://127.0.0.1:"));
        connect(&mut [&mut a, &mut b, &mut c, &mut d]);

        // A (CN peer-a) reaches B over mutual TLS, and B reaches A.
        a.transport.send(vec![append(1, 2, 1, 100)]);
        let (messages, _) = receive_raft(&b.inbox, 1).await;
        assert_eq!(messages[0], append(1, 2, 1, 100));
        b.transport.send(vec![append(2, 1, 2, 100)]);
        receive_raft(&a.inbox, 1).await;
        answer_requests(b.inbox.clone());
        let answer = a
            .client
            .call(2, Bytes::from_static(b"tls"), Duration::from_secs(5))
            .await;
        assert_eq!(answer, Ok(Bytes::from_static(b"1:slt")));

        // C's CN is not allowed, D's certificate is revoked: the TLS handshake fails.
        c.transport.send(vec![append(3, 2, 1, 10)]);
        match next_event(&c.inbox).await {
            PeerIncoming::Unreachable(2) => {}
            _ => panic!("C cannot reach B"),
        }
        d.transport.send(vec![append(4, 2, 1, 10)]);
        match next_event(&d.inbox).await {
            PeerIncoming::Unreachable(2) => {}
            _ => panic!("D cannot reach B"),
        }
        // The allowed-CN check is in the TLS configuration both sides share (etcd's
        // baseConfig): B refuses C as a server too, although C accepts anyone the CA signed.
        // (B's inbox is drained by the request answerer, so its failed dials are counted.)
        let failed_before = b.transport.stats().dials_failed;
        b.transport.send(vec![append(2, 3, 1, 10)]);
        within(10, async {
            while b.transport.stats().dials_failed == failed_before {
                sleep_ms(10).await;
            }
        })
        .await;
        assert_eq!(c.transport.stats().messages_received, 0);
        sleep_ms(100).await;
        assert_eq!(
            b.transport.stats().messages_received,
            1,
            "only A's message got in"
        );
    });
}

#[test]
fn a_client_certificate_for_another_address_is_refused_unless_san_checks_are_skipped() {
    let pki = Pki::new();
    pki.issue("a", "peer-a", 1);
    pki.issue("b", "peer-b", 2);
    // E's certificate names 10.9.9.9, but E dials from 127.0.0.1 (etcd's checkCertSAN).
    pki.issue_for("e", "peer-e", 5, "10.9.9.9");
    let a_cfg = pki.config("a");
    let mut b_cfg = pki.config("b");
    b_cfg.peer_tls.skip_client_san_verify = true;
    let e_cfg = pki.config("e");
    run(move || async move {
        let mut a = tls_member(&a_cfg, 1);
        let mut b = tls_member(&b_cfg, 2);
        let mut e = tls_member(&e_cfg, 5);
        connect(&mut [&mut a, &mut b, &mut e]);
        e.transport.send(vec![append(5, 1, 1, 10)]);
        match next_event(&e.inbox).await {
            PeerIncoming::Unreachable(1) => {}
            _ => panic!("A refuses E's certificate"),
        }
        assert_eq!(a.transport.stats().messages_received, 0);
        // B skips the check (--experimental-peer-skip-client-san-verification).
        e.transport.send(vec![append(5, 2, 1, 10)]);
        let (messages, _) = receive_raft(&b.inbox, 1).await;
        assert_eq!(messages[0].from, 5);
    });
}

#[test]
fn auto_tls_peers_talk_without_verifying_each_other() {
    let dir = tempfile::tempdir().unwrap();
    let config = |name: &str| {
        let mut cfg = Config {
            listen_peer_urls: vec![Url::parse("https://127.0.0.1:0").unwrap()],
            data_dir: dir.path().join(name),
            ..Default::default()
        };
        cfg.peer_tls.auto_tls = true;
        cfg
    };
    let (a_cfg, b_cfg) = (config("a"), config("b"));
    run(move || async move {
        let mut a = tls_member(&a_cfg, 1);
        let mut b = tls_member(&b_cfg, 2);
        connect(&mut [&mut a, &mut b]);
        a.transport.send(vec![append(1, 2, 1, 10)]);
        receive_raft(&b.inbox, 1).await;
    });
    assert!(dir.path().join("a/fixtures/peer/cert.pem").exists());
}

#[test]
fn https_without_peer_certificates_is_refused_at_start() {
    let cfg = Config {
        listen_peer_urls: vec![Url::parse("https://127.0.0.1:0").unwrap()],
        ..Default::default()
    };
    let err = PeerOptions::from_config(&cfg, 1, CLUSTER)
        .err()
        .expect("refused");
    assert!(
        err.to_string().starts_with(
            "cannot listen on TLS for 127.0.0.1:0: KeyFile and CertFile are not presented"
        ),
        "{err}"
    );
}
