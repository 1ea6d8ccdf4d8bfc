//! `grpc.health.v1.Health` on the client port through the real binary, with the generated
//! client (as grpc-go's health client and load balancers call it).

mod common;

use common::{each_shards, Server, ServerOpts};
use proto::grpc_health_v1::health_check_response::ServingStatus;
use proto::grpc_health_v1::health_client::HealthClient;
use proto::grpc_health_v1::HealthCheckRequest;
use tonic::transport::Channel;

async fn health(server: &Server) -> HealthClient<Channel> {
    HealthClient::new(
        Channel::from_shared(server.url())
            .unwrap()
            .connect()
            .await
            .unwrap(),
    )
}

fn request(service: &str) -> HealthCheckRequest {
    HealthCheckRequest {
        service: service.into(),
    }
}

#[test]
fn check_and_watch_answer_as_etcd() {
    each_shards(|shards| async move {
        let server = Server::start(shards);
        let mut client = health(&server).await;
        let status = client.check(request("")).await.unwrap().into_inner().status;
        assert_eq!(status, ServingStatus::Serving as i32);
        let err = client.check(request("etcdserverpb.KV")).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::NotFound);
        assert_eq!(err.message(), "unknown service");

        let mut watch = client.watch(request("")).await.unwrap().into_inner();
        let first = watch.message().await.unwrap().unwrap();
        assert_eq!(first.status, ServingStatus::Serving as i32);
        let mut unknown = client.watch(request("nope")).await.unwrap().into_inner();
        let first = unknown.message().await.unwrap().unwrap();
        assert_eq!(first.status, ServingStatus::ServiceUnknown as i32);
        // The stream stays open while nothing changes.
        let more =
            tokio::time::timeout(std::time::Duration::from_millis(300), watch.message()).await;
        assert!(more.is_err(), "a second status without a change: {more:?}");
    });
}

/// Defragment with --experimental-stop-grpc-service-on-defrag: etcd logs the NOT_SERVING and
/// SERVING edges (the window itself is instant in rusd; the defragBeforeCopy failpoint widens
/// it in failpoint builds), and the member serves again afterwards.
#[test]
fn defrag_with_stop_flag_goes_not_serving_and_back() {
    let server = ServerOpts::new(1)
        .arg("--experimental-stop-grpc-service-on-defrag")
        .start();
    server.etcdctl(&["defrag"]).ok();
    let log = server.log();
    let not_serving = log
        .find("\"status\":\"NOT_SERVING\"")
        .expect("NOT_SERVING logged");
    let serving = log.rfind("\"status\":\"SERVING\"").expect("SERVING logged");
    assert!(not_serving < serving, "SERVING logged before NOT_SERVING");
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut client = health(&server).await;
        let status = client.check(request("")).await.unwrap().into_inner().status;
        assert_eq!(status, ServingStatus::Serving as i32);
    });
}
