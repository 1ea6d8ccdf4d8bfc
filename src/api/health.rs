//! gRPC's health service (`grpc.health.v1.Health`, Check and Watch) on the client port, as etcd
//! v3.5.17 serves it: the whole server (service "") is SERVING once the member serves clients,
//! and NOT_SERVING while a defragmentation runs with `--experimental-stop-grpc-service-on-defrag`.
//!
//! etcd registers grpc-go's stock health server and only ever sets the status of "" (in
//! `v3rpc/health.go`): it does not follow leadership (a member without a leader still answers
//! SERVING over gRPC; the HTTP `/health` endpoint is the one that checks for a leader), and it
//! never marks itself NOT_SERVING on shutdown (its listeners just close). rusd keeps exactly
//! that, so load balancers and clients that probe etcd see the same answers.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use event_listener::Event;
use futures::Stream;
use proto::grpc_health_v1::health_check_response::ServingStatus;
use proto::grpc_health_v1::{HealthCheckRequest, HealthCheckResponse};
use tonic::{Request, Response, Status};

use super::Context;

/// The one service name etcd registers: the server as a whole.
const WHOLE_SERVER: &str = "";

/// The health of this member, shared by every core. Written by the Defragment handler, read by
/// every Check and Watch.
#[derive(Debug)]
pub struct HealthState {
    /// `--experimental-stop-grpc-service-on-defrag`.
    stop_on_defrag: bool,
    /// Defragmentations running now (several clients may ask at once, on different cores).
    defrags_running: AtomicUsize,
    /// Set once the member serves clients (etcd's ReadyNotify). Until then every client
    /// request waits, as etcd's listeners hold connections until the server is ready: a
    /// member still replaying its WAL must not answer with an older revision.
    serving: AtomicBool,
    /// Notified at every change of status, for Watch streams and requests waiting to be
    /// served.
    changed: Event,
}

impl HealthState {
    pub fn new(stop_on_defrag: bool) -> Arc<HealthState> {
        Arc::new(HealthState {
            stop_on_defrag,
            defrags_running: AtomicUsize::new(0),
            serving: AtomicBool::new(false),
            changed: Event::new(),
        })
    }

    /// The member serves clients from now on (called once, when it is ready).
    pub fn mark_serving(&self) {
        self.serving.store(true, Ordering::Release);
        self.changed.notify(usize::MAX);
    }

    pub fn is_serving(&self) -> bool {
        self.serving.load(Ordering::Acquire)
    }

    /// Waits until the member serves clients.
    pub async fn wait_serving(&self) {
        while !self.is_serving() {
            let listener = self.changed.listen();
            if self.is_serving() {
                return;
            }
            listener.await;
        }
    }

    /// The status of `service`, or None for a service this server does not know.
    pub fn status_of(&self, service: &str) -> Option<ServingStatus> {
        if service != WHOLE_SERVER {
            return None;
        }
        let defragmenting = self.defrags_running.load(Ordering::Acquire) > 0;
        Some(if self.stop_on_defrag && defragmenting {
            ServingStatus::NotServing
        } else {
            ServingStatus::Serving
        })
    }

    /// Marks a defragmentation as running until the guard is dropped. With
    /// `--experimental-stop-grpc-service-on-defrag` the member answers NOT_SERVING meanwhile,
    /// and logs etcd's "grpc service status changed" lines on both edges.
    pub fn defrag_started(self: &Arc<Self>) -> DefragGuard {
        let before = self.defrags_running.fetch_add(1, Ordering::AcqRel);
        if self.stop_on_defrag && before == 0 {
            crate::log_warn!(
                "grpc service status changed",
                "service" => WHOLE_SERVER,
                "status" => "NOT_SERVING",
                "reason" => "defrag is active"
            );
        }
        self.changed.notify(usize::MAX);
        DefragGuard {
            state: self.clone(),
        }
    }
}

/// Ends one defragmentation's NOT_SERVING window when dropped (also when its handler fails).
pub struct DefragGuard {
    state: Arc<HealthState>,
}

impl Drop for DefragGuard {
    fn drop(&mut self) {
        let before = self.state.defrags_running.fetch_sub(1, Ordering::AcqRel);
        if self.state.stop_on_defrag && before == 1 {
            crate::log_info!(
                "grpc service status changed",
                "service" => WHOLE_SERVER,
                "status" => "SERVING"
            );
        }
        self.state.changed.notify(usize::MAX);
    }
}

pub struct HealthService {
    pub ctx: Context,
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<HealthCheckResponse, Status>> + Send>>;

#[tonic::async_trait]
impl proto::grpc_health_v1::health_server::Health for HealthService {
    async fn check(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<HealthCheckResponse>, Status> {
        match self.ctx.health.status_of(&request.get_ref().service) {
            Some(s) => Ok(Response::new(HealthCheckResponse { status: s as i32 })),
            // grpc-go's text, which health clients print.
            None => Err(Status::not_found("unknown service")),
        }
    }

    type WatchStream = WatchStream;

    async fn watch(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let service = request.into_inner().service;
        let state = self.ctx.health.clone();
        // As grpc-go: the current status first (SERVICE_UNKNOWN for an unknown service, and
        // the stream stays open in case it appears), then each change, never the same status
        // twice in a row. The stream ends when the client cancels it.
        let stream = futures::stream::unfold(
            (state, service, None::<ServingStatus>),
            |(state, service, last_sent)| async move {
                loop {
                    // Listen before reading, so that a change between the two is not missed.
                    let listener = state.changed.listen();
                    let now = state
                        .status_of(&service)
                        .unwrap_or(ServingStatus::ServiceUnknown);
                    if last_sent != Some(now) {
                        let response = HealthCheckResponse { status: now as i32 };
                        return Some((Ok(response), (state, service, Some(now))));
                    }
                    listener.await;
                }
            },
        );
        Ok(Response::new(Box::pin(stream)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_wait_until_the_member_serves() {
        let state = HealthState::new(false);
        let waiting = std::thread::spawn({
            let state = state.clone();
            move || futures::executor::block_on(state.wait_serving())
        });
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert!(!waiting.is_finished());
        state.mark_serving();
        waiting.join().unwrap();
        futures::executor::block_on(state.wait_serving());
    }

    #[test]
    fn whole_server_serves_and_unknown_services_are_unknown() {
        let state = HealthState::new(false);
        assert_eq!(state.status_of(""), Some(ServingStatus::Serving));
        assert_eq!(state.status_of("etcdserverpb.KV"), None);
        let _defrag = state.defrag_started();
        // Without the flag a defragmentation changes nothing, as in etcd.
        assert_eq!(state.status_of(""), Some(ServingStatus::Serving));
    }

    #[test]
    fn stop_on_defrag_is_not_serving_until_the_last_defrag_ends() {
        let state = HealthState::new(true);
        let first = state.defrag_started();
        let second = state.defrag_started();
        assert_eq!(state.status_of(""), Some(ServingStatus::NotServing));
        drop(first);
        assert_eq!(state.status_of(""), Some(ServingStatus::NotServing));
        drop(second);
        assert_eq!(state.status_of(""), Some(ServingStatus::Serving));
    }
}
