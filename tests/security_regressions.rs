//! Named regression tests for etcd's robustness-found bugs and security advisories that apply
//! to the client API, each against a 1-member rusd (the real binary) with real clients:
//!
//! - `issue13766_*`: inconsistent revision after a crash under load (etcd #13766).
//! - `issue15220_*`: a watch progress notification not in step with the stream (etcd #15220).
//! - `issue15271_*`: a watch travelling back in time when it resumes (etcd #15271; there
//!   after a network partition, here across a member restart until there are peers).
//! - `issue17529_*`: watch events lost while the stream is starved (etcd #17529).
//! - `issue18089_*`: a watch dropping the delete at the compact revision (etcd #18089).
//! - `rbac_*`: permission checks that etcd advisories found bypassable: ops inside nested
//!   txns, `prev_kv` on writes (returns values: needs read permission), LeaseTimeToLive with
//!   keys (CVE-2023-32082: key names need read permission), LeaseRevoke (deletes keys: needs
//!   write permission on them).
//! - `crl_*`: a revoked client certificate is refused on every path of the client port (gRPC,
//!   the JSON gateway, the HTTP endpoints), not only on the first one.
//!
//! Issue17529 and Issue18089 are also failpoint scenarios of etcd's robustness suite
//! (`beforeSendWatchResponse`); those run with `scripts/etcd-robustness.sh` on a failpoints
//! build. The Issue14370 scenario (`raftBeforeSave=panic`) is there too.

mod common;

use std::time::{Duration, Instant};

use common::{b, each_shards, s, Server, ServerOpts};
use futures::SinkExt;
use proto::etcdserverpb as pb;
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;

async fn channel(server: &Server) -> Channel {
    Channel::from_shared(server.url())
        .unwrap()
        .connect()
        .await
        .unwrap()
}

/// A watch stream: requests go in through `send`, responses come out of `next`.
struct Watch {
    requests: futures::channel::mpsc::Sender<pb::WatchRequest>,
    responses: tonic::Streaming<pb::WatchResponse>,
}

impl Watch {
    /// Opens a stream with its first watch. The create request goes out before the call is
    /// awaited: grpc-go (etcd) sends the response headers only with the first response.
    async fn open(channel: Channel, first: pb::WatchCreateRequest) -> Watch {
        let (mut requests, rx) = futures::channel::mpsc::channel(16);
        requests
            .send(pb::WatchRequest {
                request_union: Some(pb::watch_request::RequestUnion::CreateRequest(first)),
            })
            .await
            .unwrap();
        let responses = pb::watch_client::WatchClient::new(channel)
            .watch(rx)
            .await
            .expect("watch")
            .into_inner();
        let mut watch = Watch {
            requests,
            responses,
        };
        let created = watch.next().await;
        assert!(created.created, "not a created response: {created:?}");
        watch
    }

    async fn send(&mut self, union: pb::watch_request::RequestUnion) {
        self.requests
            .send(pb::WatchRequest {
                request_union: Some(union),
            })
            .await
            .unwrap();
    }

    async fn next(&mut self) -> pb::WatchResponse {
        tokio::time::timeout(Duration::from_secs(10), self.responses.message())
            .await
            .expect("a watch response within 10 s")
            .expect("the watch stream")
            .expect("the stream still open")
    }
}

fn from(key: &str, start_revision: i64) -> pb::WatchCreateRequest {
    pb::WatchCreateRequest {
        key: b(key),
        range_end: b(&prefix_end(key)),
        start_revision,
        ..Default::default()
    }
}

fn prefix_end(prefix: &str) -> String {
    let mut bytes = prefix.as_bytes().to_vec();
    *bytes.last_mut().unwrap() += 1;
    String::from_utf8(bytes).unwrap()
}

// ---------------------------------------------------------------------------------------------
// etcd #13766: inconsistent revision caused by a crash during high load

/// Writers keep going while the member is killed at random moments, with a checkpoint every
/// 20 entries. After each restart: the first answer (a Status sent as the port opens) is not
/// older than the last acknowledged write, every acknowledged write is there with the
/// revision it was acknowledged at, and no revision holds two writes.
#[test]
fn issue13766_no_lost_or_repeated_revision_after_crash_under_load() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut server = ServerOpts::new(2).arg("--snapshot-count").arg("20").start();
    let mut rng = common::Rng::new(common::time_seed());
    let mut acknowledged: Vec<(String, String, i64)> = Vec::new();
    for round in 0..4 {
        let url = server.url();
        let stop = Instant::now() + Duration::from_millis(rng.range(300, 900));
        let acked: Vec<(String, String, i64)> = rt.block_on(async {
            let mut writers = Vec::new();
            for writer in 0..4 {
                let url = url.clone();
                writers.push(tokio::spawn(async move {
                    let mut done = Vec::new();
                    let Ok(ch) = Channel::from_shared(url).unwrap().connect().await else {
                        return done;
                    };
                    let mut kv = pb::kv_client::KvClient::new(ch);
                    for i in 0.. {
                        if Instant::now() > stop {
                            break;
                        }
                        let key = format!("crash/{writer}/{}", i % 5);
                        let value = format!("{round}-{i}");
                        match kv
                            .put(pb::PutRequest {
                                key: b(&key),
                                value: b(&value),
                                ..Default::default()
                            })
                            .await
                        {
                            Ok(r) => {
                                done.push((key, value, r.into_inner().header.unwrap().revision))
                            }
                            Err(_) => break,
                        }
                    }
                    done
                }));
            }
            let mut all = Vec::new();
            for w in writers {
                all.extend(w.await.unwrap());
            }
            all
        });
        // Kill while the writers may still be writing: the last round of puts is in flight.
        server.kill();
        let last_acked = acked.iter().map(|a| a.2).max().unwrap_or(0);
        acknowledged.extend(acked);
        server.restart();
        rt.block_on(async {
            let mut client = server.client().await;
            let status = client.status().await;
            let revision = status.header.unwrap().revision;
            assert!(revision >= last_acked, "round {round}: status revision {revision} after restart, below the acknowledged {last_acked}");
            // Every acknowledged write: still there unless overwritten later by the same key.
            let mut latest = std::collections::BTreeMap::new();
            for (key, value, rev) in &acknowledged {
                let e = latest.entry(key.clone()).or_insert((value.clone(), *rev));
                if *rev > e.1 {
                    *e = (value.clone(), *rev);
                }
            }
            for (key, (value, rev)) in &latest {
                let kv = client.get(key).await.unwrap_or_else(|| panic!("{key} lost"));
                assert!(kv.mod_revision >= *rev, "{key}: mod revision {} below acknowledged {rev}", kv.mod_revision);
                if kv.mod_revision == *rev {
                    assert_eq!(s(&kv.value), *value, "{key} at revision {rev}");
                }
            }
        });
        let mut revisions: Vec<i64> = acknowledged.iter().map(|a| a.2).collect();
        revisions.sort_unstable();
        let before = revisions.len();
        revisions.dedup();
        assert_eq!(
            revisions.len(),
            before,
            "two acknowledged puts share a revision"
        );
    }
    server.kill();
}

// ---------------------------------------------------------------------------------------------
// etcd #15220: watch progress notification not synced with the stream

/// While puts go on, the client asks for progress again and again. A progress notification
/// at revision R promises every event up to R was sent: no event at or below R may follow.
#[test]
fn issue15220_progress_notification_never_overtakes_events() {
    each_shards(|shards| async move {
        let server = Server::start(shards);
        let mut watch = Watch::open(channel(&server).await, from("p/", 1)).await;
        let writer = {
            let url = server.url();
            tokio::spawn(async move {
                let mut client = common::Client::connect(&url).await;
                for i in 0..300 {
                    client.put(&format!("p/{}", i % 7), &i.to_string()).await;
                }
                client.revision().await
            })
        };
        let mut writer = writer;
        let mut progress_floor = 0;
        let mut last_event = 0;
        let mut events = 0;
        let mut final_revision: Option<i64> = None;
        while final_revision.is_none_or(|f| last_event < f) {
            watch
                .send(pb::watch_request::RequestUnion::ProgressRequest(
                    pb::WatchProgressRequest {},
                ))
                .await;
            let r = watch.next().await;
            let revision = r.header.as_ref().unwrap().revision;
            if r.events.is_empty() {
                // A progress notification: everything up to `revision` has been sent.
                assert!(
                    revision >= last_event,
                    "progress at {revision} after an event at {last_event}"
                );
                progress_floor = progress_floor.max(revision);
            }
            for e in &r.events {
                let rev = e.kv.as_ref().unwrap().mod_revision;
                assert!(
                    rev > progress_floor,
                    "event at {rev} after a progress notification at {progress_floor}"
                );
                assert!(rev > last_event, "event at {rev} after one at {last_event}");
                last_event = rev;
                events += 1;
            }
            if final_revision.is_none() && writer.is_finished() {
                final_revision = Some((&mut writer).await.unwrap());
            }
        }
        assert_eq!(events, 300, "every put seen once");
    });
}

// ---------------------------------------------------------------------------------------------
// etcd #15271: watch travelling back in time

/// A client that resumes its watch from the revision after the last event it saw, once the
/// member restarted, receives no event it already had and no revision below it.
#[test]
fn issue15271_resumed_watch_does_not_travel_back_in_time() {
    each_shards(|shards| async move {
        let mut server = Server::start(shards);
        let mut client = server.client().await;
        for i in 0..20 {
            client.put(&format!("t/{}", i % 3), &i.to_string()).await;
        }
        let mut watch = Watch::open(channel(&server).await, from("t/", 1)).await;
        let mut last = 0;
        let mut seen = 0;
        while seen < 20 {
            for e in watch.next().await.events {
                let rev = e.kv.unwrap().mod_revision;
                assert!(rev > last);
                last = rev;
                seen += 1;
            }
        }
        drop(watch);
        server.kill();
        server.restart();
        let mut client = server.client().await;
        for i in 20..30 {
            client.put(&format!("t/{}", i % 3), &i.to_string()).await;
        }
        let mut watch = Watch::open(channel(&server).await, from("t/", last + 1)).await;
        while seen < 30 {
            let r = watch.next().await;
            assert!(
                r.header.unwrap().revision >= last,
                "a header older than the last event"
            );
            for e in r.events {
                let rev = e.kv.unwrap().mod_revision;
                assert!(rev > last, "event at {rev} again after {last}");
                last = rev;
                seen += 1;
            }
        }
    });
}

// ---------------------------------------------------------------------------------------------
// etcd #17529: watch events lost during stream starvation

/// A watcher that does not read while thousands of events pile up (far past the bounded
/// outbox) still gets every event, in order, once it reads again.
#[test]
fn issue17529_starved_watch_loses_no_event() {
    each_shards(|shards| async move {
        let server = Server::start(shards);
        let mut watch = Watch::open(channel(&server).await, from("s/", 0)).await;
        let start = server.client().await.revision().await;
        let puts = 2000;
        let mut writers = Vec::new();
        for w in 0..4 {
            let url = server.url();
            writers.push(tokio::spawn(async move {
                let mut client = common::Client::connect(&url).await;
                for i in 0..puts / 4 {
                    client
                        .put(&format!("s/{w}/{}", i % 10), &"x".repeat(200))
                        .await;
                }
            }));
        }
        for w in writers {
            w.await.unwrap();
        }
        // Only now does the watcher read.
        let mut expected = start + 1;
        while expected <= start + puts {
            for e in watch.next().await.events {
                let rev = e.kv.unwrap().mod_revision;
                assert_eq!(rev, expected, "a gap or a repeat in the starved stream");
                expected += 1;
            }
        }
    });
}

// ---------------------------------------------------------------------------------------------
// etcd #18089: watch dropping an event when compacting on delete

/// A delete exactly at the compact revision is delivered to a watch started there, also while
/// compactions keep following the deletes.
#[test]
fn issue18089_delete_at_the_compact_revision_is_delivered() {
    each_shards(|shards| async move {
        let server = Server::start(shards);
        let mut client = server.client().await;
        for round in 0..20 {
            let key = format!("d/{round}");
            client.put(&key, "v").await;
            let deleted = client
                .delete(pb::DeleteRangeRequest {
                    key: b(&key),
                    ..Default::default()
                })
                .await
                .header
                .unwrap()
                .revision;
            client.compact(deleted).await;
            let mut watch = Watch::open(
                channel(&server).await,
                pb::WatchCreateRequest {
                    key: b(&key),
                    start_revision: deleted,
                    ..Default::default()
                },
            )
            .await;
            let r = watch.next().await;
            assert_eq!(
                r.compact_revision, 0,
                "round {round}: the watch was refused as compacted"
            );
            let e = &r.events[0];
            assert_eq!(e.r#type, proto::mvccpb::event::EventType::Delete as i32);
            assert_eq!(e.kv.as_ref().unwrap().mod_revision, deleted);
        }
    });
}

// ---------------------------------------------------------------------------------------------
// RBAC: nested txns, prev_kv, leases

/// Root with auth enabled, and user `alice` (password `pw`) with read-write on `a/`..`a0`
/// only, and read-only on `r/`..`r0`. Returns alice's token.
async fn setup_auth(server: &Server) -> String {
    for args in [
        vec!["user", "add", "root:rootpw"],
        vec!["user", "add", "alice:pw"],
        vec!["role", "add", "a"],
        vec![
            "role",
            "grant-permission",
            "--prefix=true",
            "a",
            "readwrite",
            "a/",
        ],
        vec![
            "role",
            "grant-permission",
            "--prefix=true",
            "a",
            "read",
            "r/",
        ],
        vec!["user", "grant-role", "alice", "a"],
        vec!["put", "secret/k", "hidden"],
        vec!["put", "r/k", "readable"],
        vec!["auth", "enable"],
    ] {
        server.etcdctl(&args).ok();
    }
    let ch = channel(server).await;
    pb::auth_client::AuthClient::new(ch)
        .authenticate(pb::AuthenticateRequest {
            name: "alice".into(),
            password: "pw".into(),
        })
        .await
        .expect("alice authenticates")
        .into_inner()
        .token
}

fn with_token<T>(token: &str, message: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(message);
    r.metadata_mut()
        .insert("token", MetadataValue::try_from(token).unwrap());
    r
}

fn op_put(key: &str, prev_kv: bool) -> pb::RequestOp {
    pb::RequestOp {
        request: Some(pb::request_op::Request::RequestPut(pb::PutRequest {
            key: b(key),
            value: b("x"),
            prev_kv,
            ..Default::default()
        })),
    }
}

fn op_get(key: &str) -> pb::RequestOp {
    pb::RequestOp {
        request: Some(pb::request_op::Request::RequestRange(pb::RangeRequest {
            key: b(key),
            ..Default::default()
        })),
    }
}

fn nested(ops: Vec<pb::RequestOp>) -> pb::RequestOp {
    pb::RequestOp {
        request: Some(pb::request_op::Request::RequestTxn(pb::TxnRequest {
            success: ops,
            ..Default::default()
        })),
    }
}

fn denied<T: std::fmt::Debug>(result: Result<tonic::Response<T>, tonic::Status>, what: &str) {
    let status = result.expect_err(what);
    assert_eq!(
        status.code(),
        tonic::Code::PermissionDenied,
        "{what}: {status:?}"
    );
    assert_eq!(status.message(), "etcdserver: permission denied", "{what}");
}

#[test]
fn rbac_ops_inside_nested_txns_are_checked() {
    each_shards(|shards| async move {
        let server = Server::start(shards);
        let token = setup_auth(&server).await;
        let mut kv = pb::kv_client::KvClient::new(channel(&server).await);
        let revision_before = {
            let r = kv
                .range(with_token(
                    &token,
                    pb::RangeRequest {
                        key: b("a/"),
                        ..Default::default()
                    },
                ))
                .await
                .unwrap();
            r.into_inner().header.unwrap().revision
        };
        // A write and a read outside alice's range, one and two txns deep, in either branch.
        for (what, txn) in [
            (
                "nested put",
                pb::TxnRequest {
                    success: vec![nested(vec![op_put("secret/k", false)])],
                    ..Default::default()
                },
            ),
            (
                "nested get",
                pb::TxnRequest {
                    success: vec![nested(vec![op_get("secret/k")])],
                    ..Default::default()
                },
            ),
            (
                "doubly nested put",
                pb::TxnRequest {
                    failure: vec![nested(vec![nested(vec![op_put("secret/x", false)])])],
                    ..Default::default()
                },
            ),
            (
                "nested put to a read-only range",
                pb::TxnRequest {
                    success: vec![op_put("a/ok", false), nested(vec![op_put("r/k", false)])],
                    ..Default::default()
                },
            ),
        ] {
            denied(kv.txn(with_token(&token, txn)).await, what);
        }
        // Nothing changed: no revision consumed, the secret intact.
        let r = kv
            .range(with_token(
                &token,
                pb::RangeRequest {
                    key: b("a/"),
                    ..Default::default()
                },
            ))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r.header.unwrap().revision, revision_before);
        let out = server.etcdctl(&[
            "--user",
            "root:rootpw",
            "get",
            "secret/k",
            "--print-value-only",
        ]);
        assert_eq!(out.ok().trim(), "hidden");
        // A nested txn inside alice's range is allowed.
        kv.txn(with_token(
            &token,
            pb::TxnRequest {
                success: vec![nested(vec![op_put("a/1", false)])],
                ..Default::default()
            },
        ))
        .await
        .expect("a nested txn within the permitted range");
    });
}

#[test]
fn rbac_prev_kv_needs_read_permission() {
    each_shards(|shards| async move {
        let server = Server::start(shards);
        server.etcdctl(&["role", "add", "w"]).ok();
        server
            .etcdctl(&[
                "role",
                "grant-permission",
                "--prefix=true",
                "w",
                "write",
                "w/",
            ])
            .ok();
        server.etcdctl(&["put", "w/k", "old-secret"]).ok();
        let token = setup_auth_with_writer(&server).await;
        let mut kv = pb::kv_client::KvClient::new(channel(&server).await);
        denied(
            kv.put(with_token(
                &token,
                pb::PutRequest {
                    key: b("w/k"),
                    value: b("new"),
                    prev_kv: true,
                    ..Default::default()
                },
            ))
            .await,
            "put with prev_kv on a write-only key",
        );
        denied(
            kv.delete_range(with_token(
                &token,
                pb::DeleteRangeRequest {
                    key: b("w/k"),
                    prev_kv: true,
                    ..Default::default()
                },
            ))
            .await,
            "delete with prev_kv on a write-only key",
        );
        denied(
            kv.txn(with_token(
                &token,
                pb::TxnRequest {
                    success: vec![op_put("w/k", true)],
                    ..Default::default()
                },
            ))
            .await,
            "txn put with prev_kv on a write-only key",
        );
        let out = server.etcdctl(&["--user", "root:rootpw", "get", "w/k", "--print-value-only"]);
        assert_eq!(
            out.ok().trim(),
            "old-secret",
            "a refused write changed the key"
        );
        // Without prev_kv the write is allowed.
        kv.put(with_token(
            &token,
            pb::PutRequest {
                key: b("w/k"),
                value: b("new"),
                ..Default::default()
            },
        ))
        .await
        .expect("a plain put with write permission");
    });
}

/// `bob` (password `pw`) may only write `w/`..`w0`.
async fn setup_auth_with_writer(server: &Server) -> String {
    for args in [
        vec!["user", "add", "root:rootpw"],
        vec!["user", "add", "bob:pw"],
        vec!["user", "grant-role", "bob", "w"],
        vec!["auth", "enable"],
    ] {
        server.etcdctl(&args).ok();
    }
    pb::auth_client::AuthClient::new(channel(server).await)
        .authenticate(pb::AuthenticateRequest {
            name: "bob".into(),
            password: "pw".into(),
        })
        .await
        .expect("bob authenticates")
        .into_inner()
        .token
}

#[test]
fn rbac_lease_keys_and_revoke_need_permission_on_the_keys() {
    each_shards(|shards| async move {
        let server = Server::start(shards);
        let out = server.etcdctl(&["lease", "grant", "600"]).ok().to_string();
        // "lease 694d... granted with TTL(600s)"
        let id_hex = out.split_whitespace().nth(1).unwrap().to_string();
        let id = i64::from_str_radix(&id_hex, 16).unwrap();
        server
            .etcdctl(&["put", "secret/leased", "v", "--lease", &id_hex])
            .ok();
        let token = setup_auth(&server).await;
        let mut lease = pb::lease_client::LeaseClient::new(channel(&server).await);
        // CVE-2023-32082: TimeToLive with keys named a key alice may not read.
        denied(
            lease
                .lease_time_to_live(with_token(
                    &token,
                    pb::LeaseTimeToLiveRequest { id, keys: true },
                ))
                .await,
            "LeaseTimeToLive with keys",
        );
        // Revoking would delete a key alice may not write.
        denied(
            lease
                .lease_revoke(with_token(&token, pb::LeaseRevokeRequest { id }))
                .await,
            "LeaseRevoke of a lease holding another's key",
        );
        let out = server.etcdctl(&[
            "--user",
            "root:rootpw",
            "get",
            "secret/leased",
            "--print-value-only",
        ]);
        assert_eq!(out.ok().trim(), "v", "the refused revoke deleted the key");
        // Without keys the TTL query is allowed.
        let ttl = lease
            .lease_time_to_live(with_token(
                &token,
                pb::LeaseTimeToLiveRequest { id, keys: false },
            ))
            .await
            .expect("LeaseTimeToLive without keys")
            .into_inner();
        assert!(ttl.ttl > 0 && ttl.keys.is_empty());
    });
}

// ---------------------------------------------------------------------------------------------
// CRL: a revoked client certificate is refused everywhere

/// Runs openssl; panics with its output if it fails.
fn openssl(dir: &std::path::Path, args: &[&str]) {
    let out = std::process::Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("running openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn crl_revoked_client_certificate_is_refused_on_grpc_gateway_and_http() {
    let pki = tempfile::tempdir().unwrap();
    let dir = pki.path();
    std::fs::write(dir.join("index.txt"), "").unwrap();
    std::fs::write(dir.join("crlnumber"), "01\n").unwrap();
    std::fs::write(
        dir.join("ca.cnf"),
        "[ca]\ndefault_ca=c\n[c]\ndatabase=index.txt\ncrlnumber=crlnumber\ndefault_md=sha256\ndefault_crl_days=30\n\
         [ext]\nsubjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth,clientAuth\n",
    )
    .unwrap();
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
            "-days",
            "2",
            "-subj",
            "/CN=test ca",
        ],
    );
    for name in ["server", "good", "revoked"] {
        openssl(
            dir,
            &[
                "req",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-keyout",
                &format!("{name}.key"),
                "-out",
                &format!("{name}.csr"),
                "-subj",
                &format!("/CN={name}"),
            ],
        );
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                &format!("{name}.csr"),
                "-CA",
                "ca.crt",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                &format!("{name}.crt"),
                "-days",
                "2",
                "-extfile",
                "ca.cnf",
                "-extensions",
                "ext",
            ],
        );
    }
    openssl(
        dir,
        &[
            "ca",
            "-config",
            "ca.cnf",
            "-keyfile",
            "ca.key",
            "-cert",
            "ca.crt",
            "-revoke",
            "revoked.crt",
        ],
    );
    openssl(
        dir,
        &[
            "ca",
            "-config",
            "ca.cnf",
            "-keyfile",
            "ca.key",
            "-cert",
            "ca.crt",
            "-gencrl",
            "-out",
            "revoked.crl",
        ],
    );
    let path = |n: &str| dir.join(n).display().to_string();

    let port = common::free_port();
    let url = format!("https://127.0.0.1:{port}");
    let mut server = ServerOpts::new(1)
        .arg("--listen-client-urls")
        .arg(url.clone())
        .arg("--advertise-client-urls")
        .arg(url.clone())
        .arg("--cert-file")
        .arg(path("server.crt"))
        .arg("--key-file")
        .arg(path("server.key"))
        .arg("--trusted-ca-file")
        .arg(path("ca.crt"))
        .arg("--client-cert-auth")
        .arg("--client-crl-file")
        .arg(path("revoked.crl"))
        .start();
    let ctl = |cert: &str, args: &[&str]| {
        let mut all = vec![
            "--cacert".to_string(),
            path("ca.crt"),
            "--cert".to_string(),
            path(&format!("{cert}.crt")),
            "--key".to_string(),
            path(&format!("{cert}.key")),
            "--dial-timeout=3s".to_string(),
            "--command-timeout=3s".to_string(),
        ];
        all.extend(args.iter().map(|a| a.to_string()));
        let refs: Vec<&str> = all.iter().map(String::as_str).collect();
        common::etcdctl(&format!("127.0.0.1:{port}"), &refs, None)
    };
    let curl = |cert: &str, path_and_body: (&str, Option<&str>)| {
        let mut cmd = std::process::Command::new("curl");
        cmd.args([
            "-sS",
            "--max-time",
            "5",
            "--cacert",
            &path("ca.crt"),
            "--cert",
            &path(&format!("{cert}.crt")),
            "--key",
            &path(&format!("{cert}.key")),
        ]);
        if let Some(body) = path_and_body.1 {
            cmd.args(["-X", "POST", "-d", body]);
        }
        cmd.arg(format!("{url}{}", path_and_body.0));
        cmd.output().expect("running curl")
    };
    // The good certificate works on every path.
    ctl("good", &["put", "k", "v"]).ok();
    let out = curl("good", ("/v3/kv/range", Some(r#"{"key":"aw=="}"#)));
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("\"kvs\""),
        "gateway with the good cert: {out:?}"
    );
    let out = curl("good", ("/health", None));
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("\"health\""),
        "/health with the good cert: {out:?}"
    );
    // The revoked one on none, however often it tries (no session resumption bypass).
    for _ in 0..3 {
        assert!(
            !ctl("revoked", &["get", "k"]).status.success(),
            "gRPC with a revoked certificate"
        );
        assert!(
            !ctl("revoked", &["put", "k", "stolen"]).status.success(),
            "gRPC write with a revoked certificate"
        );
        let out = curl(
            "revoked",
            ("/v3/kv/put", Some(r#"{"key":"aw==","value":"c3RvbGVu"}"#)),
        );
        assert!(
            !out.status.success(),
            "gateway write with a revoked certificate: {out:?}"
        );
        let out = curl("revoked", ("/health", None));
        assert!(
            !out.status.success(),
            "/health with a revoked certificate: {out:?}"
        );
    }
    let value = ctl("good", &["get", "k", "--print-value-only"]);
    assert_eq!(value.ok().trim(), "v", "a refused client changed the key");
    server.kill();
}
