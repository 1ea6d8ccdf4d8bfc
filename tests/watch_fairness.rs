//! A watch response never waits for the connection's flow-control window behind large
//! responses on the same connection (issue #14, etcd's `TestWatchDelayFor*`).
//!
//! The property is checked in bytes, not milliseconds: a raw HTTP/2 client (h2, so the test
//! decides when the connection's window opens) holds a watch and several large range
//! responses on one connection and lets the window open a little at a time. Once an event is
//! due, the watch response must arrive after at most a couple of frames per busy stream have
//! been let through, as grpc-go's writer (one frame per stream per turn) allows, not after each
//! range stream in turn took whatever window opened. It passes against etcd v3.5.17 too
//! (`RUSD_TEST_ETCD=~/.cache/rusd/etcd-v3.5.17/bin/etcd`).

mod common;

use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use common::{each_shards, Client, Server};
use prost::Message;
use proto::etcdserverpb as pb;

/// Keys and value size of the data the range responses carry (4 MiB per response).
const KEYS: usize = 16;
const VALUE_BYTES: usize = 256 * 1024;
/// Concurrent range responses on the watch's connection.
const RANGES: usize = 4;
/// The client's connection window: the server can have this much unread data in flight.
const CONNECTION_WINDOW_BYTES: u32 = 128 * 1024;
/// Each stream's window is large enough for a whole range response, so only the connection's
/// window paces the server, as when a Go client's BDP estimate has grown.
const STREAM_WINDOW_BYTES: u32 = 8 * 1024 * 1024;
/// How much of the range responses the client lets through per step once the event is due.
const STEP_BYTES: usize = 64 * 1024;
/// The most that may pass ahead of the watch response. With frame-sized pieces each busy
/// stream holds at most about two frames of window (32 KiB), so the watch response goes out
/// within the second step (128 KiB), as from etcd. When a whole response was one piece, every
/// step's window went to one range stream in turn, and the watch response waited for one step
/// per range stream and more (384 KiB with rusd before the fix).
const AHEAD_MAX_BYTES: usize = 256 * 1024;

/// One gRPC message as a length-prefixed frame.
fn grpc_frame(message: &impl Message) -> Bytes {
    let body = message.encode_to_vec();
    let mut out = BytesMut::with_capacity(5 + body.len());
    out.put_u8(0);
    out.put_u32(body.len() as u32);
    out.put_slice(&body);
    out.freeze()
}

fn grpc_request(port: u16, path: &str) -> http::Request<()> {
    http::Request::builder()
        .method("POST")
        .uri(format!("http://127.0.0.1:{port}{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .expect("a valid request")
}

/// A response stream whose received bytes the test releases only when it chooses.
struct Held {
    body: h2::RecvStream,
    /// Received and not yet released.
    unreleased: usize,
    done: bool,
}

/// Decodes the complete gRPC messages at the front of `buffer`.
fn watch_messages(buffer: &mut BytesMut) -> Vec<pb::WatchResponse> {
    let mut out = Vec::new();
    while buffer.len() >= 5 {
        let len = u32::from_be_bytes([buffer[1], buffer[2], buffer[3], buffer[4]]) as usize;
        if buffer.len() < 5 + len {
            break;
        }
        buffer.advance(5);
        let message = buffer.split_to(len);
        out.push(pb::WatchResponse::decode(message).expect("a WatchResponse"));
    }
    out
}

#[test]
fn a_watch_event_passes_large_range_responses_on_its_connection() {
    each_shards(|shards| async move {
        let server = Server::start(shards);
        let mut client = Client::connect(&server.url()).await;
        let value = "v".repeat(VALUE_BYTES);
        for i in 0..KEYS {
            client.put(&format!("big/{i:02}"), &value).await;
        }

        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", server.port))
            .await
            .expect("connecting");
        let (h2, connection) = h2::client::Builder::new()
            .initial_window_size(STREAM_WINDOW_BYTES)
            .initial_connection_window_size(CONNECTION_WINDOW_BYTES)
            .handshake::<_, Bytes>(tcp)
            .await
            .expect("an HTTP/2 handshake");
        tokio::spawn(connection);
        let mut h2 = h2.ready().await.expect("the connection is ready");

        // The watch, created before the window is taken.
        let (watch_response, mut watch_requests) = h2
            .send_request(
                grpc_request(server.port, "/etcdserverpb.Watch/Watch"),
                false,
            )
            .expect("opening the watch stream");
        let create = pb::WatchRequest {
            request_union: Some(pb::watch_request::RequestUnion::CreateRequest(
                pb::WatchCreateRequest {
                    key: common::b("watched"),
                    ..Default::default()
                },
            )),
        };
        watch_requests
            .send_data(grpc_frame(&create), false)
            .expect("sending the create request");
        let mut watch = watch_response
            .await
            .expect("the watch's headers")
            .into_body();
        let mut watch_buffer = BytesMut::new();
        let created = loop {
            let data = watch
                .data()
                .await
                .expect("the watch stream is open")
                .expect("watch data");
            let _ = watch.flow_control().release_capacity(data.len());
            watch_buffer.extend_from_slice(&data);
            if let Some(first) = watch_messages(&mut watch_buffer).into_iter().next() {
                break first;
            }
        };
        assert!(created.created, "{created:?}");

        // Large range responses take the whole connection window, unread.
        let range = pb::RangeRequest {
            key: common::b("big/"),
            range_end: common::b("big0"),
            ..Default::default()
        };
        let mut held = Vec::new();
        for _ in 0..RANGES {
            let mut ready = h2.clone().ready().await.expect("the connection is ready");
            let (response, mut request) = ready
                .send_request(grpc_request(server.port, "/etcdserverpb.KV/Range"), false)
                .expect("opening a range stream");
            request
                .send_data(grpc_frame(&range), true)
                .expect("sending the range request");
            held.push(Held {
                body: response.await.expect("the range's headers").into_body(),
                unreleased: 0,
                done: false,
            });
        }
        let window_taken = async {
            loop {
                receive_available(&mut held).await;
                let received: usize = held.iter().map(|h| h.unreleased).sum();
                if received + 1024 >= CONNECTION_WINDOW_BYTES as usize {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(20), window_taken)
            .await
            .expect("the range responses fill the connection window");

        // The event is due (the put is acknowledged after the watch hub has it) while the
        // window is closed; then the window opens step by step.
        let mut writer = Client::connect(&server.url()).await;
        writer.put("watched", "event").await;
        let mut released = 0;
        let event = loop {
            let wait = tokio::time::timeout(Duration::from_millis(200), watch.data()).await;
            if let Ok(data) = wait {
                let data = data.expect("the watch stream is open").expect("watch data");
                let _ = watch.flow_control().release_capacity(data.len());
                watch_buffer.extend_from_slice(&data);
                if let Some(r) = watch_messages(&mut watch_buffer)
                    .into_iter()
                    .find(|r| !r.events.is_empty())
                {
                    break r;
                }
                continue;
            }
            assert!(
                released < AHEAD_MAX_BYTES,
                "--shards {shards}: the watch event still waits after {released} bytes of \
                 range responses were let through ahead of it"
            );
            released += release(&mut held, STEP_BYTES);
            receive_available(&mut held).await;
        };
        assert_eq!(
            event.events[0].kv.as_ref().unwrap().value,
            b"event".to_vec()
        );
        eprintln!("--shards {shards}: the event arrived after {released} bytes were let through");
    });
}

/// Takes every data frame already received on the held streams, without releasing it.
async fn receive_available(held: &mut [Held]) {
    for h in held.iter_mut().filter(|h| !h.done) {
        loop {
            match tokio::time::timeout(Duration::from_millis(1), h.body.data()).await {
                Ok(Some(Ok(data))) => h.unreleased += data.len(),
                Ok(Some(Err(e))) => panic!("a range stream failed: {e}"),
                Ok(None) => {
                    h.done = true;
                    break;
                }
                Err(_) => break,
            }
        }
    }
}

/// Opens the connection window by up to `bytes`, from the held streams' unread data.
fn release(held: &mut [Held], bytes: usize) -> usize {
    let mut left = bytes;
    for h in held.iter_mut() {
        let n = h.unreleased.min(left);
        if n > 0 {
            h.body
                .flow_control()
                .release_capacity(n)
                .expect("releasing received data");
            h.unreleased -= n;
            left -= n;
        }
    }
    bytes - left
}
