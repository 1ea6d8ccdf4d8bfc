//! Auth in a three-member cluster: a simple token issued by one member works on every member
//! (etcd replicates Authenticate through raft), and deleting its user invalidates it
//! everywhere. Clients such as etcdctl with several endpoints authenticate on one member and
//! then send requests to whichever member their balancer picks.

mod common;

use common::b;
use common::cluster::Cluster;
use proto::etcdserverpb as pb;
use tonic::transport::Channel;

async fn channel(url: &str) -> Channel {
    Channel::from_shared(url.to_string())
        .unwrap()
        .connect()
        .await
        .unwrap()
}

fn with_token<T>(msg: T, token: &str) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    req.metadata_mut()
        .insert("token", token.parse().expect("a token is ASCII"));
    req
}

async fn authenticate(url: &str, name: &str, password: &str) -> String {
    pb::auth_client::AuthClient::new(channel(url).await)
        .authenticate(pb::AuthenticateRequest {
            name: name.into(),
            password: password.into(),
        })
        .await
        .expect("authenticate")
        .into_inner()
        .token
}

async fn put(url: &str, token: &str, key: &str) -> Result<pb::PutResponse, tonic::Status> {
    pb::kv_client::KvClient::new(channel(url).await)
        .put(with_token(
            pb::PutRequest {
                key: b(key),
                value: b("v"),
                ..Default::default()
            },
            token,
        ))
        .await
        .map(|r| r.into_inner())
}

#[test]
fn simple_tokens_work_on_every_member() {
    tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(simple_tokens_scenario());
}

async fn simple_tokens_scenario() {
    let cluster = Cluster::start(3, &[]);
    cluster
        .wait_leader(std::time::Duration::from_secs(20))
        .await;
    let first = &cluster.members[0];
    for args in [
        &["user", "add", "root:rootpw"][..],
        &["user", "add", "alice:alicepw"][..],
        &["role", "add", "rw"][..],
        &["role", "grant-permission", "rw", "readwrite", "a", "b"][..],
        &["user", "grant-role", "alice", "rw"][..],
        &["auth", "enable"][..],
    ] {
        common::etcdctl(&first.endpoint(), args, None).ok();
    }

    // Each member issues a token; each token is good on every member.
    for (issuer, m) in cluster.members.iter().enumerate() {
        let token = authenticate(&m.url(), "alice", "alicepw").await;
        let (prefix, index) = token.split_once('.').expect("etcd's simple token shape");
        assert_eq!(prefix.len(), 16, "{token}");
        assert!(index.parse::<u64>().is_ok(), "{token}");
        for (user_of, other) in cluster.members.iter().enumerate() {
            let key = format!("a{issuer}{user_of}");
            let resp = put(&other.url(), &token, &key).await;
            assert!(
                resp.is_ok(),
                "token from member {issuer} refused by member {user_of}: {resp:?}"
            );
        }
        // The token carries alice's permissions, not more.
        let denied = put(&cluster.members[(issuer + 1) % 3].url(), &token, "z")
            .await
            .unwrap_err();
        assert_eq!(denied.message(), "etcdserver: permission denied");
    }

    // A wrong password issues nothing.
    let refused = pb::auth_client::AuthClient::new(channel(&cluster.members[1].url()).await)
        .authenticate(pb::AuthenticateRequest {
            name: "alice".into(),
            password: "wrong".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(
        refused.message(),
        "etcdserver: authentication failed, invalid user ID or password"
    );

    // Deleting the user invalidates its tokens on every member.
    let token = authenticate(&cluster.members[2].url(), "alice", "alicepw").await;
    let root = authenticate(&first.url(), "root", "rootpw").await;
    pb::auth_client::AuthClient::new(channel(&first.url()).await)
        .user_delete(with_token(
            pb::AuthUserDeleteRequest {
                name: "alice".into(),
            },
            &root,
        ))
        .await
        .expect("user delete");
    for m in &cluster.members {
        // The delete is applied on every member before a linearizable read there answers.
        let read = pb::kv_client::KvClient::new(channel(&m.url()).await)
            .range(with_token(
                pb::RangeRequest {
                    key: b("a"),
                    ..Default::default()
                },
                &root,
            ))
            .await;
        assert!(read.is_ok(), "{read:?}");
        let err = put(&m.url(), &token, "a1").await.unwrap_err();
        assert_eq!(
            err.message(),
            "etcdserver: invalid auth token",
            "member {}",
            m.name
        );
    }
}
