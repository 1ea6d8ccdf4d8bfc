//! The reference etcdctl v3.5.17 against the server: put/get/del/txn/compaction, endpoint
//! status/health/hashkv, member list; plain output and `-w json`. Each test runs with
//! `--shards 1` and `--shards 2`.

mod common;

use common::{each_shards, jb64, ji64, ju64, Server, ServerOpts};
use serde_json::Value;

const MEMBER_ID: u64 = 0x8e9e05c52164694d;
const CLUSTER_ID: u64 = 0xcdf818194e3a8c32;

#[track_caller]
fn check_header(h: &Value, revision: i64) {
    assert_eq!(ju64(&h["cluster_id"]), CLUSTER_ID, "{h}");
    assert_eq!(ju64(&h["member_id"]), MEMBER_ID, "{h}");
    assert_eq!(ji64(&h["revision"]), revision, "{h}");
    assert_ne!(ju64(&h["raft_term"]), 0, "{h}");
}

/// (key, value) of each kv of a `get -w json`.
fn kv_pairs(v: &Value) -> Vec<(String, String)> {
    v["kvs"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|kv| {
                    (
                        jb64(&kv["key"]),
                        kv.get("value").map(jb64).unwrap_or_default(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

fn pairs(p: &[(&str, &str)]) -> Vec<(String, String)> {
    p.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn put_get_del() {
    each_shards(|shards| async move {
        let srv = Server::start(shards);
        assert_eq!(srv.etcdctl(&["put", "foo", "bar"]).ok(), "OK\n");
        assert_eq!(srv.etcdctl(&["get", "foo"]).ok(), "foo\nbar\n");
        assert_eq!(srv.etcdctl(&["get", "nope"]).ok(), "");
        assert_eq!(
            srv.etcdctl(&["put", "foo", "baz", "--prev-kv"]).ok(),
            "OK\nfoo\nbar\n"
        );
        assert_eq!(
            srv.etcdctl(&["get", "foo", "--print-value-only"]).ok(),
            "baz\n"
        );

        let v = srv.etcdctl(&["get", "foo", "-w", "json"]).json();
        check_header(&v["header"], 3);
        assert_eq!(ji64(&v["count"]), 1);
        let kv = &v["kvs"][0];
        assert_eq!(jb64(&kv["key"]), "foo");
        assert_eq!(jb64(&kv["value"]), "baz");
        assert_eq!(ji64(&kv["create_revision"]), 2);
        assert_eq!(ji64(&kv["mod_revision"]), 3);
        assert_eq!(ji64(&kv["version"]), 2);
        // The past, by revision.
        assert_eq!(
            srv.etcdctl(&["get", "foo", "--rev", "2"]).ok(),
            "foo\nbar\n"
        );

        // Ranges.
        for (k, v) in [("k1", "v1"), ("k2", "v2"), ("k3", "v3"), ("l", "x")] {
            srv.etcdctl(&["put", k, v]).ok();
        }
        assert_eq!(
            srv.etcdctl(&["get", "k", "--prefix"]).ok(),
            "k1\nv1\nk2\nv2\nk3\nv3\n"
        );
        assert_eq!(
            srv.etcdctl(&["get", "k2", "--from-key", "--keys-only"])
                .ok(),
            "k2\n\nk3\n\nl\n\n"
        );
        assert_eq!(
            srv.etcdctl(&["get", "k1", "k3"]).ok(),
            "k1\nv1\nk2\nv2\n",
            "[k1, k3)"
        );
        let v = srv
            .etcdctl(&["get", "k", "--prefix", "--limit", "2", "-w", "json"])
            .json();
        assert_eq!(kv_pairs(&v), pairs(&[("k1", "v1"), ("k2", "v2")]));
        assert_eq!(v["more"], Value::Bool(true));
        assert_eq!(ji64(&v["count"]), 3);
        // --count-only wants the "fields" output.
        let out = srv.etcdctl(&["get", "k", "--prefix", "--count-only", "-w", "fields"]);
        assert!(out.ok().contains("\"Count\" : 3"), "{}", out.stdout);
        assert!(!out.ok().contains("\"Key\""), "{}", out.stdout);
        assert_eq!(
            srv.etcdctl(&[
                "get",
                "",
                "--prefix",
                "--sort-by=MODIFY",
                "--order=DESCEND",
                "--keys-only"
            ])
            .ok(),
            "l\n\nk3\n\nk2\n\nk1\n\nfoo\n\n"
        );
        assert_eq!(
            srv.etcdctl(&["get", "", "--prefix", "--sort-by=VALUE", "--limit=2"])
                .ok(),
            "foo\nbaz\nk1\nv1\n"
        );

        // Deletes.
        assert_eq!(srv.etcdctl(&["del", "nope"]).ok(), "0\n");
        assert_eq!(srv.etcdctl(&["del", "foo"]).ok(), "1\n");
        assert_eq!(
            srv.etcdctl(&["del", "k", "--prefix", "--prev-kv"]).ok(),
            "3\nk1\nv1\nk2\nv2\nk3\nv3\n"
        );
        let v = srv.etcdctl(&["del", "l", "-w", "json"]).json();
        assert_eq!(ji64(&v["deleted"]), 1);
        check_header(&v["header"], 10);
        assert_eq!(srv.etcdctl(&["get", "", "--prefix"]).ok(), "");
        // Deleting nothing did not move the revision.
        let v = srv.etcdctl(&["del", "l", "-w", "json"]).json();
        check_header(&v["header"], 10);
    });
}

#[test]
fn txn_from_stdin() {
    each_shards(|shards| async move {
        let srv = Server::start(shards);
        srv.etcdctl(&["put", "key1", "v1"]).ok();
        srv.etcdctl(&["put", "key2", "v2"]).ok();

        // etcdctl's non-interactive txn: compares, blank line, success ops, blank line,
        // failure ops, blank line.
        let txn = "mod(\"key1\") > \"0\"\nvalue(\"key2\") = \"v2\"\n\n\
                   put key1 \"overwrote-key1\"\nget key2\ndel key3\n\n\
                   put key1 \"created-key1\"\n\n";
        assert_eq!(
            srv.etcdctl_stdin(&["txn"], txn).ok(),
            "SUCCESS\n\nOK\n\nkey2\nv2\n\n0\n"
        );
        assert_eq!(
            srv.etcdctl(&["get", "key1", "--print-value-only"]).ok(),
            "overwrote-key1\n"
        );

        let txn =
            "version(\"key1\") = \"1\"\n\nput key1 \"then\"\n\nput key1 \"else\"\nget key1\n\n";
        assert_eq!(
            srv.etcdctl_stdin(&["txn"], txn).ok(),
            "FAILURE\n\nOK\n\nkey1\nelse\n"
        );

        // Interactive (-i): the same input, with etcdctl's prompts.
        srv.etcdctl(&["put", "ikey", "v1"]).ok();
        let txn = "value(\"ikey\") = \"v1\"\n\nput ikey v2\nget ikey\n\nput ikey v3\n\n";
        assert_eq!(
            srv.etcdctl_stdin(&["txn", "-i"], txn).ok(),
            "compares:\nsuccess requests (get, put, del):\nfailure requests (get, put, del):\n\
             SUCCESS\n\nOK\n\nikey\nv2\n"
        );

        // JSON: the failure branch of a create-if-absent.
        let txn = "create(\"key2\") = \"0\"\n\nput key2 \"new\"\n\nget key2\n\n";
        let v = srv.etcdctl_stdin(&["txn", "-w", "json"], txn).json();
        check_header(&v["header"], 7);
        assert!(v.get("succeeded").is_none(), "failed txn: {v}");
        let range = &v["responses"][0]["Response"]["response_range"];
        assert_eq!(kv_pairs(range), pairs(&[("key2", "v2")]));

        // JSON: success with a put.
        let txn = "create(\"key9\") = \"0\"\n\nput key9 \"nine\"\n\n\n";
        let v = srv.etcdctl_stdin(&["txn", "-w", "json"], txn).json();
        assert_eq!(v["succeeded"], Value::Bool(true));
        check_header(&v["header"], 8);
        assert!(v["responses"][0]["Response"]["response_put"].is_object());

        // An invalid txn (duplicate key) is an error with etcd's message.
        let txn = "\nput a 1\nput a 2\n\n\n";
        let out = srv.etcdctl_stdin(&["txn"], txn);
        assert!(
            out.err()
                .contains("Error: etcdserver: duplicate key given in txn request"),
            "{}",
            out.stderr
        );
        let v = srv.etcdctl(&["get", "a", "-w", "json"]).json();
        check_header(&v["header"], 8);
    });
}

#[test]
fn compaction() {
    each_shards(|shards| async move {
        let srv = Server::start(shards);
        for i in 0..5 {
            srv.etcdctl(&["put", "c", &format!("v{i}")]).ok();
        }
        assert_eq!(
            srv.etcdctl(&["compaction", "4"]).ok(),
            "compacted revision 4\n"
        );
        let out = srv.etcdctl(&["get", "c", "--rev", "3"]);
        assert!(
            out.err()
                .contains("Error: etcdserver: mvcc: required revision has been compacted"),
            "{}",
            out.stderr
        );
        assert_eq!(srv.etcdctl(&["get", "c", "--rev", "4"]).ok(), "c\nv2\n");
        let out = srv.etcdctl(&["compaction", "4"]);
        assert!(
            out.err()
                .contains("Error: etcdserver: mvcc: required revision has been compacted"),
            "{}",
            out.stderr
        );
        let out = srv.etcdctl(&["compaction", "100"]);
        assert!(
            out.err()
                .contains("Error: etcdserver: mvcc: required revision is a future revision"),
            "{}",
            out.stderr
        );
        assert_eq!(
            srv.etcdctl(&["compaction", "--physical", "6"]).ok(),
            "compacted revision 6\n"
        );
        let v = srv.etcdctl(&["endpoint", "hashkv", "-w", "json"]).json();
        let hk = &v[0]["HashKV"];
        assert_eq!(ji64(&hk["compact_revision"]), 6);
        check_header(&hk["header"], 6);
        assert_eq!(srv.etcdctl(&["get", "c"]).ok(), "c\nv4\n");
    });
}

#[test]
fn endpoint_status_health_and_member_list() {
    each_shards(|shards| async move {
        let srv = Server::start(shards);
        srv.etcdctl(&["put", "a", "1"]).ok();
        let v = srv.etcdctl(&["endpoint", "status", "-w", "json"]).json();
        let e = &v[0];
        assert_eq!(e["Endpoint"], Value::String(srv.endpoint()));
        let st = &e["Status"];
        check_header(&st["header"], 2);
        assert_eq!(st["version"], Value::String("3.5.17".into()));
        assert_eq!(ju64(&st["leader"]), MEMBER_ID);
        assert_ne!(ju64(&st["raftTerm"]), 0);
        assert_eq!(ju64(&st["raftTerm"]), ju64(&st["header"]["raft_term"]));
        assert!(ju64(&st["raftIndex"]) >= 2, "{st}");
        assert!(ju64(&st["raftAppliedIndex"]) >= 2, "{st}");
        // etcd's backend file is never empty (bbolt: 20480 bytes for a new member).
        assert!(
            st.get("dbSize").and_then(Value::as_i64).unwrap_or(0) > 0,
            "dbSize missing or 0: {st}"
        );

        // The table form names the endpoint, the ID and the version.
        let table = srv.etcdctl(&["endpoint", "status", "-w", "table"]);
        let table = table.ok();
        assert!(table.contains("8e9e05c52164694d"), "{table}");
        assert!(table.contains("3.5.17"), "{table}");
        assert!(table.contains(&srv.endpoint()), "{table}");

        let health = srv.etcdctl(&["endpoint", "health"]);
        assert!(
            health.ok().starts_with(&format!(
                "{} is healthy: successfully committed proposal",
                srv.endpoint()
            )),
            "{}",
            health.stdout
        );

        let v = srv.etcdctl(&["member", "list", "-w", "json"]).json();
        assert_eq!(ju64(&v["header"]["cluster_id"]), CLUSTER_ID);
        assert_eq!(ju64(&v["header"]["member_id"]), MEMBER_ID);
        let members = v["members"].as_array().unwrap();
        assert_eq!(members.len(), 1);
        let m = &members[0];
        assert_eq!(ju64(&m["ID"]), MEMBER_ID);
        assert_eq!(m["name"], Value::String("default".into()));
        assert_eq!(m["peerURLs"], serde_json::json!(["http://localhost:2380"]));
        assert_eq!(m["clientURLs"], serde_json::json!([srv.url()]));
        assert!(m.get("isLearner").is_none(), "{m}");
        assert_eq!(
            srv.etcdctl(&["member", "list"]).ok(),
            format!(
                "8e9e05c52164694d, started, default, http://localhost:2380, {}, false\n",
                srv.url()
            )
        );
    });
}

/// Member and cluster IDs for non-default flags, as the reference etcd v3.5.17 computed them
/// for the very same flags; and they are kept across a restart, whatever the flags then say.
#[test]
fn ids_match_etcd_for_other_flags() {
    each_shards(|shards| async move {
        // (flags, member ID, cluster ID, peer URLs as member list shows them)
        let cases: [(&[&str], u64, u64, &[&str]); 2] = [
            (
                &[
                    "--name",
                    "n1",
                    "--initial-advertise-peer-urls",
                    "http://127.0.0.1:24380",
                    "--initial-cluster",
                    "n1=http://127.0.0.1:24380",
                    "--initial-cluster-token",
                    "tok-x",
                ],
                13391344725745224649,
                13996796797899554004,
                &["http://127.0.0.1:24380"],
            ),
            (
                &[
                    "--name",
                    "alpha",
                    "--initial-advertise-peer-urls",
                    "http://127.0.0.1:24382,http://127.0.0.1:24381",
                    "--initial-cluster",
                    "alpha=http://127.0.0.1:24382,alpha=http://127.0.0.1:24381",
                ],
                14200731313224065656,
                16939468162623057801,
                &["http://127.0.0.1:24381", "http://127.0.0.1:24382"],
            ),
        ];
        for (flags, member, cluster, peers) in cases {
            let mut opts = ServerOpts::new(shards);
            for f in flags {
                opts = opts.arg(*f);
            }
            let mut srv = opts.start();
            let check = |srv: &Server| {
                let v = srv.etcdctl(&["member", "list", "-w", "json"]).json();
                assert_eq!(ju64(&v["header"]["cluster_id"]), cluster, "{flags:?}");
                assert_eq!(ju64(&v["header"]["member_id"]), member, "{flags:?}");
                assert_eq!(ju64(&v["members"][0]["ID"]), member, "{flags:?}");
                assert_eq!(v["members"][0]["name"], Value::String(flags[1].into()));
                assert_eq!(v["members"][0]["peerURLs"], serde_json::json!(peers));
                assert_eq!(
                    v["members"][0]["clientURLs"],
                    serde_json::json!([srv.url()]),
                    "{flags:?}"
                );
                let v = srv.etcdctl(&["put", "k", "v", "-w", "json"]).json();
                assert_eq!(ju64(&v["header"]["cluster_id"]), cluster, "{flags:?}");
                assert_eq!(ju64(&v["header"]["member_id"]), member, "{flags:?}");
            };
            check(&srv);
            // A restart with another cluster token keeps the IDs of the data dir.
            srv.opts = srv
                .opts
                .clone()
                .arg("--initial-cluster-token")
                .arg("another-token");
            srv.restart();
            check(&srv);
        }
    });
}
