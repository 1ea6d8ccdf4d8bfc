//! etcd's Auth service, and the identity of every request: the `token` metadata (a simple
//! token from this member's table, or a JWT), else the client certificate's CN when
//! `--client-cert-auth` is on. Permission checks run on the receiving core against the auth
//! state the coordinator published; writes carry the identity into the log
//! (`WriteRequest::Authed`) so apply checks them again at their turn, as etcd does.
//!
//! bcrypt (hashing before a UserAdd/ChangePassword is proposed, checking in Authenticate) runs
//! on glommio's blocking pool, never on an executor or the coordinator.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use proto::authpb;
use proto::etcdserverpb as pb;
use tonic::{Request, Response, Status};

use super::status::status;
use super::Context;
use crate::coordinator::auth::{
    Access, AuthInfo, AuthRequest, AuthShared, AuthStore, PermType, Permission,
};
use crate::coordinator::{WriteOutcome, WriteRequest, WriteResponse};
use crate::error::EtcdError;

/// How this member issues and checks tokens (`--auth-token`), and the bcrypt cost.
pub struct AuthConfig {
    tokens: TokenKind,
    bcrypt_cost: u32,
    simple_ttl: Duration,
    client_cert_auth: bool,
}

enum TokenKind {
    Simple,
    Jwt(Box<Jwt>),
}

struct Jwt {
    alg: Algorithm,
    /// `None` when only a public key was given: this member verifies but cannot sign.
    sign: Option<EncodingKey>,
    verify: DecodingKey,
    ttl: Duration,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Claims {
    username: String,
    revision: u64,
    exp: u64,
}

/// etcd's default JWT lifetime when `ttl` is not given.
const JWT_TTL_DEFAULT: Duration = Duration::from_secs(300);

impl AuthConfig {
    /// How long an unused simple token lives (`--auth-token-ttl`).
    pub fn simple_token_ttl(&self) -> Duration {
        self.simple_ttl
    }

    /// From `--auth-token`, `--bcrypt-cost`, `--auth-token-ttl` and `--client-cert-auth`.
    pub fn new(
        auth_token: &str,
        bcrypt_cost: u32,
        simple_ttl_secs: u64,
        client_cert_auth: bool,
    ) -> anyhow::Result<AuthConfig> {
        // etcd falls back to its default cost for one out of bcrypt's range.
        let bcrypt_cost = if (4..=31).contains(&bcrypt_cost) {
            bcrypt_cost
        } else {
            10
        };
        let mut parts = auth_token.split(',');
        let kind = parts.next().unwrap_or("");
        let mut opts = std::collections::HashMap::new();
        for p in parts {
            let (k, v) = p
                .split_once('=')
                .filter(|(_, v)| !v.contains('='))
                .ok_or_else(|| anyhow::anyhow!("auth: invalid auth options"))?;
            if opts.insert(k.to_string(), v.to_string()).is_some() {
                anyhow::bail!("auth: invalid auth options");
            }
        }
        let tokens = match kind {
            "simple" | "" => TokenKind::Simple,
            "jwt" => TokenKind::Jwt(Box::new(Jwt::new(&opts)?)),
            _ => anyhow::bail!("auth: invalid auth options"),
        };
        Ok(AuthConfig {
            tokens,
            bcrypt_cost,
            simple_ttl: Duration::from_secs(simple_ttl_secs.max(1)),
            client_cert_auth,
        })
    }
}

impl Jwt {
    fn new(opts: &std::collections::HashMap<String, String>) -> anyhow::Result<Jwt> {
        let alg = match opts.get("sign-method").map(String::as_str) {
            Some("RS256") => Algorithm::RS256,
            Some("RS384") => Algorithm::RS384,
            Some("RS512") => Algorithm::RS512,
            Some("PS256") => Algorithm::PS256,
            Some("PS384") => Algorithm::PS384,
            Some("PS512") => Algorithm::PS512,
            Some("ES256") => Algorithm::ES256,
            Some("ES384") => Algorithm::ES384,
            _ => anyhow::bail!("auth: invalid auth signature method"),
        };
        let ec = matches!(alg, Algorithm::ES256 | Algorithm::ES384);
        let ttl = match opts.get("ttl") {
            Some(t) => {
                parse_go_duration(t).ok_or_else(|| anyhow::anyhow!("auth: invalid auth options"))?
            }
            None => JWT_TTL_DEFAULT,
        };
        let read = |k: &str| -> anyhow::Result<Option<Vec<u8>>> {
            match opts.get(k) {
                None => Ok(None),
                Some(path) => std::fs::read(path)
                    .map(Some)
                    .map_err(|e| anyhow::anyhow!("auth: reading {k} {path}: {e}")),
            }
        };
        let sign = match read("priv-key")? {
            None => None,
            Some(pem) => Some(if ec {
                EncodingKey::from_ec_pem(&pem)?
            } else {
                EncodingKey::from_rsa_pem(&pem)?
            }),
        };
        let verify = match read("pub-key")? {
            None => anyhow::bail!("auth: missing key data"),
            Some(pem) => public_key(&pem, ec)?,
        };
        Ok(Jwt {
            alg,
            sign,
            verify,
            ttl,
        })
    }
}

/// A public key PEM, or a certificate whose key to use (etcd accepts both).
fn public_key(pem: &[u8], ec: bool) -> anyhow::Result<DecodingKey> {
    if let Ok((_, p)) = x509_parser::pem::parse_x509_pem(pem) {
        if p.label == "CERTIFICATE" {
            let cert = p
                .parse_x509()
                .map_err(|e| anyhow::anyhow!("auth: parsing the public key certificate: {e}"))?;
            let bits = &cert.public_key().subject_public_key.data;
            return Ok(if ec {
                DecodingKey::from_ec_der(bits)
            } else {
                DecodingKey::from_rsa_der(bits)
            });
        }
    }
    Ok(if ec {
        DecodingKey::from_ec_pem(pem)?
    } else {
        DecodingKey::from_rsa_pem(pem)?
    })
}

/// Go's `time.ParseDuration` for the forms a TTL takes ("1s", "5m", "1h30m", "250ms").
fn parse_go_duration(s: &str) -> Option<Duration> {
    let mut total = 0f64;
    let mut rest = s;
    if rest.is_empty() {
        return None;
    }
    if rest == "0" {
        return Some(Duration::ZERO);
    }
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let n: f64 = rest[..num_len].parse().ok()?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return None,
        };
        rest = &rest[unit_len..];
        total += n * scale;
    }
    Some(Duration::from_secs_f64(total))
}

/// What a request presented: its token and its client certificate's CN.
#[derive(Clone, Debug, Default)]
pub struct Credentials {
    token: Option<String>,
    common_name: Option<String>,
}

impl Credentials {
    pub fn of<T>(request: &Request<T>) -> Credentials {
        let md = request.metadata();
        let token = md
            .get("token")
            .or_else(|| md.get("authorization"))
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        // A gRPC-gateway request carries the proxy's certificate: never a user (as etcd).
        let gateway = md.get("grpcgateway-accept").is_some();
        let common_name = request
            .extensions()
            .get::<crate::net::tls::PeerCommonName>()
            .filter(|_| !gateway)
            .map(|cn| cn.0.clone());
        Credentials { token, common_name }
    }
}

impl Context {
    /// Whether `token` is a simple token issued at a raft index this member has not applied
    /// yet: another member answered the Authenticate after applying it, and this one may lag.
    /// Such a request waits for this member to catch up before its token is checked (etcd's
    /// simple-token index wait), instead of failing with "invalid auth token".
    pub fn simple_token_pending(&self, token: &str) -> bool {
        if !matches!(self.auth.tokens, TokenKind::Simple) {
            return false;
        }
        let Some(index) = token
            .split_once('.')
            .and_then(|(_, index)| index.parse::<u64>().ok())
        else {
            return false;
        };
        index
            > self
                .published
                .applied_index
                .load(std::sync::atomic::Ordering::Acquire)
            && !self.published.auth.has_simple_token(token)
    }

    /// The auth state now and the identity of `creds` (etcd's AuthInfoFromCtx): `None` when
    /// auth is off or nothing identifies the sender.
    pub fn identify(
        &self,
        creds: &Credentials,
    ) -> Result<(Arc<AuthStore>, Option<AuthInfo>), Status> {
        let store = self.published.auth.snapshot();
        if !store.enabled() {
            return Ok((store, None));
        }
        if let Some(token) = &creds.token {
            let info = match &self.auth.tokens {
                TokenKind::Simple => {
                    self.published
                        .auth
                        .simple_token_user(token)
                        .map(|user| AuthInfo {
                            user,
                            revision: store.revision(),
                        })
                }
                TokenKind::Jwt(jwt) => {
                    let mut v = Validation::new(jwt.alg);
                    v.leeway = 0;
                    jsonwebtoken::decode::<Claims>(token, &jwt.verify, &v)
                        .ok()
                        .map(|d| AuthInfo {
                            user: d.claims.username,
                            revision: d.claims.revision,
                        })
                }
            };
            return match info {
                Some(info) => Ok((store, Some(info))),
                None => Err(status(EtcdError::InvalidAuthToken)),
            };
        }
        if self.auth.client_cert_auth {
            if let Some(cn) = &creds.common_name {
                let info = AuthInfo {
                    user: cn.clone(),
                    revision: store.revision(),
                };
                return Ok((store, Some(info)));
            }
        }
        Ok((store, None))
    }

    /// etcd's gateway check: with client certificate auth and auth enabled, a certificate that
    /// names a user cannot call the gateway, which would not act as that user.
    pub fn gateway_ignores_common_name(
        &self,
        cn: Option<&crate::net::tls::PeerCommonName>,
    ) -> bool {
        self.auth.client_cert_auth
            && cn.is_some_and(|c| !c.0.is_empty())
            && self.published.auth.snapshot().enabled()
    }

    /// `identify` for a unary request.
    pub fn identify_request<T>(
        &self,
        request: &Request<T>,
    ) -> Result<(Arc<AuthStore>, Option<AuthInfo>), Status> {
        self.identify(&Credentials::of(request))
    }

    /// Root only when auth is on (etcd's IsAdminPermitted), for maintenance and member RPCs.
    pub fn require_admin<T>(&self, request: &Request<T>) -> Result<(), Status> {
        let (store, ai) = self.identify_request(request)?;
        store.check_admin(ai.as_ref()).map_err(status)
    }

    /// Checks a write before proposing it and, when auth is on, wraps it with the sender's
    /// identity so that apply checks it again.
    pub fn authorize_write(
        &self,
        creds: &Credentials,
        req: WriteRequest,
    ) -> Result<WriteRequest, Status> {
        let (store, ai) = self.identify(creds)?;
        if !store.enabled() {
            return Ok(req);
        }
        let info = ai.unwrap_or(AuthInfo {
            user: String::new(),
            revision: 0,
        });
        // Lease keys are the coordinator's; apply checks them.
        crate::coordinator::auth::check_apply(&store, &info, &req, &|_| Vec::new())
            .map_err(status)?;
        Ok(WriteRequest::Authed {
            info,
            req: Box::new(req),
        })
    }

    /// A read of `[key, range_end)` needs read permission.
    pub fn authorize_read<T>(
        &self,
        request: &Request<T>,
        key: &[u8],
        range_end: &[u8],
    ) -> Result<(), Status> {
        let (store, ai) = self.identify_request(request)?;
        store
            .check_range(ai.as_ref(), key, range_end, Access::Read)
            .map_err(status)
    }
}

pub struct AuthService {
    pub ctx: Context,
}

/// gRPC decode limit above --max-request-bytes (as the router's other services).
const GRPC_DECODE_OVERHEAD_BYTES: usize = 512 * 1024;

/// The Auth gRPC service for the router.
pub fn server(ctx: Context) -> pb::auth_server::AuthServer<AuthService> {
    let limit = ctx.max_request_bytes + GRPC_DECODE_OVERHEAD_BYTES;
    pb::auth_server::AuthServer::new(AuthService { ctx })
        .max_decoding_message_size(limit)
        .max_encoding_message_size(usize::MAX)
}

/// Threads that run bcrypt (tens of milliseconds per hash), so it never runs on an executor
/// or the coordinator; jobs beyond `BCRYPT_QUEUE_MAX` make their senders wait.
const BCRYPT_THREADS: usize = 4;
const BCRYPT_QUEUE_MAX: usize = 1024;

type Job = Box<dyn FnOnce() + Send>;

fn bcrypt_pool() -> &'static flume::Sender<Job> {
    static POOL: std::sync::OnceLock<flume::Sender<Job>> = std::sync::OnceLock::new();
    POOL.get_or_init(|| {
        let (tx, rx) = flume::bounded::<Job>(BCRYPT_QUEUE_MAX);
        for i in 0..BCRYPT_THREADS {
            let rx = rx.clone();
            std::thread::Builder::new()
                .name(format!("rusd-bcrypt-{i}"))
                .spawn(move || {
                    while let Ok(job) = rx.recv() {
                        job();
                    }
                })
                .expect("spawning a bcrypt thread");
        }
        tx
    })
}

/// Runs `f` on the bcrypt threads and waits for its result without blocking the core.
async fn off_core<R: Send + 'static>(f: impl FnOnce() -> R + Send + 'static) -> Result<R, Status> {
    let (tx, rx) = futures::channel::oneshot::channel();
    let job: Job = Box::new(move || {
        let _ = tx.send(f());
    });
    bcrypt_pool()
        .send_async(job)
        .await
        .map_err(|_| status(EtcdError::Stopped))?;
    rx.await.map_err(|_| status(EtcdError::Stopped))
}

impl AuthService {
    async fn propose<T>(
        &self,
        request: &Request<T>,
        a: AuthRequest,
    ) -> Result<WriteOutcome, Status> {
        let req = self
            .ctx
            .authorize_write(&Credentials::of(request), WriteRequest::Auth(a))?;
        self.ctx.coordinator.propose(req).await.map_err(status)
    }

    fn header(&self, out: &WriteOutcome) -> Option<pb::ResponseHeader> {
        Some(self.ctx.header(out.revision))
    }

    /// A linearizable view of the auth state plus the sender's identity, for the queries etcd
    /// answers through the log.
    async fn read<T>(
        &self,
        request: &Request<T>,
    ) -> Result<(Arc<AuthStore>, Option<AuthInfo>), Status> {
        self.ctx.coordinator.read_index().await.map_err(status)?;
        self.ctx.identify_request(request)
    }

    async fn hash(&self, password: String) -> Result<String, Status> {
        let cost = self.ctx.auth.bcrypt_cost;
        off_core(move || bcrypt::hash(password, cost))
            .await?
            .map_err(|e| Status::internal(format!("bcrypt: {e}")))
    }

    fn now_header(&self) -> Option<pb::ResponseHeader> {
        Some(self.ctx.header(self.ctx.published.revision()))
    }
}

fn perm_out(p: &Permission) -> authpb::Permission {
    authpb::Permission {
        perm_type: p.perm as i32,
        key: p.key.clone(),
        range_end: p.range_end.clone(),
    }
}

#[tonic::async_trait]
impl pb::auth_server::Auth for AuthService {
    async fn auth_enable(
        &self,
        request: Request<pb::AuthEnableRequest>,
    ) -> Result<Response<pb::AuthEnableResponse>, Status> {
        let out = self.propose(&request, AuthRequest::Enable).await?;
        Ok(Response::new(pb::AuthEnableResponse {
            header: self.header(&out),
        }))
    }

    async fn auth_disable(
        &self,
        request: Request<pb::AuthDisableRequest>,
    ) -> Result<Response<pb::AuthDisableResponse>, Status> {
        let out = self.propose(&request, AuthRequest::Disable).await?;
        Ok(Response::new(pb::AuthDisableResponse {
            header: self.header(&out),
        }))
    }

    async fn auth_status(
        &self,
        request: Request<pb::AuthStatusRequest>,
    ) -> Result<Response<pb::AuthStatusResponse>, Status> {
        let (store, ai) = self.read(&request).await?;
        store.check_admin(ai.as_ref()).map_err(status)?;
        Ok(Response::new(pb::AuthStatusResponse {
            header: self.now_header(),
            enabled: store.enabled(),
            auth_revision: store.revision(),
        }))
    }

    async fn authenticate(
        &self,
        request: Request<pb::AuthenticateRequest>,
    ) -> Result<Response<pb::AuthenticateResponse>, Status> {
        self.ctx.coordinator.read_index().await.map_err(status)?;
        let r = request.into_inner();
        loop {
            let store = self.ctx.published.auth.snapshot();
            if !store.enabled() {
                return Err(status(EtcdError::AuthNotEnabled));
            }
            let hash = match store.user(&r.name).and_then(|u| u.password_hash.clone()) {
                Some(h) => h,
                None => return Err(status(EtcdError::AuthFailed)),
            };
            let password = r.password.clone();
            let ok = off_core(move || bcrypt::verify(password, &hash).unwrap_or(false)).await?;
            if !ok {
                crate::log_info!("invalid password", "user-name" => r.name.clone());
                return Err(status(EtcdError::AuthFailed));
            }
            // The check is good only for the auth state it ran against (etcd retries too).
            let now = self.ctx.published.auth.snapshot();
            if now.revision() != store.revision() || !now.enabled() {
                continue;
            }
            let token = match &self.ctx.auth.tokens {
                TokenKind::Simple => {
                    // Through the log, so that every member knows the token (etcd's
                    // InternalAuthenticateRequest); the password never enters the log.
                    let req = WriteRequest::Authenticate {
                        name: r.name.clone(),
                        token_prefix: AuthShared::simple_token_prefix(),
                    };
                    let out = self.ctx.coordinator.propose(req).await.map_err(status)?;
                    let WriteResponse::Authenticated { token } = out.response else {
                        return Err(Status::internal("auth: unexpected answer to Authenticate"));
                    };
                    // etcd retries when the auth state moved while the request was in flight.
                    if self.ctx.published.auth.snapshot().revision() != store.revision() {
                        continue;
                    }
                    token
                }
                TokenKind::Jwt(jwt) => {
                    let Some(key) = &jwt.sign else {
                        return Err(Status::internal(
                            "auth: token signing attempted with verify-only key",
                        ));
                    };
                    let exp = SystemTime::now()
                        .duration_since(UNIX_EPOCH)
                        .unwrap_or_default()
                        + jwt.ttl;
                    let claims = Claims {
                        username: r.name.clone(),
                        revision: store.revision(),
                        exp: exp.as_secs(),
                    };
                    jsonwebtoken::encode(&Header::new(jwt.alg), &claims, key)
                        .map_err(|e| Status::internal(format!("auth: signing a token: {e}")))?
                }
            };
            return Ok(Response::new(pb::AuthenticateResponse {
                header: self.now_header(),
                token,
            }));
        }
    }

    async fn user_add(
        &self,
        request: Request<pb::AuthUserAddRequest>,
    ) -> Result<Response<pb::AuthUserAddResponse>, Status> {
        // Refuse what needs no hashing to fail before spending a bcrypt.
        self.ctx.authorize_write(
            &Credentials::of(&request),
            WriteRequest::Auth(AuthRequest::Enable),
        )?;
        let no_password = request
            .get_ref()
            .options
            .as_ref()
            .is_some_and(|o| o.no_password);
        let r = request.get_ref();
        if r.name.is_empty() {
            return Err(status(EtcdError::UserEmpty));
        }
        let password_hash = if no_password {
            String::new()
        } else {
            self.hash(r.password.clone()).await?
        };
        let a = AuthRequest::UserAdd {
            name: r.name.clone(),
            password_hash,
            no_password,
        };
        let out = self.propose(&request, a).await?;
        Ok(Response::new(pb::AuthUserAddResponse {
            header: self.header(&out),
        }))
    }

    async fn user_get(
        &self,
        request: Request<pb::AuthUserGetRequest>,
    ) -> Result<Response<pb::AuthUserGetResponse>, Status> {
        let (store, ai) = self.read(&request).await?;
        let name = &request.get_ref().name;
        // A user may read itself; anything else needs root.
        if let Err(e) = store.check_admin(ai.as_ref()) {
            if ai.as_ref().map(|a| &a.user) != Some(name) {
                return Err(status(e));
            }
        }
        let user = store
            .user(name)
            .ok_or_else(|| status(EtcdError::UserNotFound))?;
        Ok(Response::new(pb::AuthUserGetResponse {
            header: self.now_header(),
            roles: user.roles.clone(),
        }))
    }

    async fn user_list(
        &self,
        request: Request<pb::AuthUserListRequest>,
    ) -> Result<Response<pb::AuthUserListResponse>, Status> {
        let (store, ai) = self.read(&request).await?;
        store.check_admin(ai.as_ref()).map_err(status)?;
        Ok(Response::new(pb::AuthUserListResponse {
            header: self.now_header(),
            users: store.user_names(),
        }))
    }

    async fn user_delete(
        &self,
        request: Request<pb::AuthUserDeleteRequest>,
    ) -> Result<Response<pb::AuthUserDeleteResponse>, Status> {
        let name = request.get_ref().name.clone();
        let out = self
            .propose(&request, AuthRequest::UserDelete { name })
            .await?;
        Ok(Response::new(pb::AuthUserDeleteResponse {
            header: self.header(&out),
        }))
    }

    async fn user_change_password(
        &self,
        request: Request<pb::AuthUserChangePasswordRequest>,
    ) -> Result<Response<pb::AuthUserChangePasswordResponse>, Status> {
        self.ctx.authorize_write(
            &Credentials::of(&request),
            WriteRequest::Auth(AuthRequest::Enable),
        )?;
        let r = request.get_ref();
        let password_hash = if r.password.is_empty() {
            String::new()
        } else {
            self.hash(r.password.clone()).await?
        };
        let a = AuthRequest::UserChangePassword {
            name: r.name.clone(),
            password_hash,
        };
        let out = self.propose(&request, a).await?;
        Ok(Response::new(pb::AuthUserChangePasswordResponse {
            header: self.header(&out),
        }))
    }

    async fn user_grant_role(
        &self,
        request: Request<pb::AuthUserGrantRoleRequest>,
    ) -> Result<Response<pb::AuthUserGrantRoleResponse>, Status> {
        let r = request.get_ref();
        let a = AuthRequest::UserGrantRole {
            user: r.user.clone(),
            role: r.role.clone(),
        };
        let out = self.propose(&request, a).await?;
        Ok(Response::new(pb::AuthUserGrantRoleResponse {
            header: self.header(&out),
        }))
    }

    async fn user_revoke_role(
        &self,
        request: Request<pb::AuthUserRevokeRoleRequest>,
    ) -> Result<Response<pb::AuthUserRevokeRoleResponse>, Status> {
        let r = request.get_ref();
        let a = AuthRequest::UserRevokeRole {
            name: r.name.clone(),
            role: r.role.clone(),
        };
        let out = self.propose(&request, a).await?;
        Ok(Response::new(pb::AuthUserRevokeRoleResponse {
            header: self.header(&out),
        }))
    }

    async fn role_add(
        &self,
        request: Request<pb::AuthRoleAddRequest>,
    ) -> Result<Response<pb::AuthRoleAddResponse>, Status> {
        let name = request.get_ref().name.clone();
        let out = self
            .propose(&request, AuthRequest::RoleAdd { name })
            .await?;
        Ok(Response::new(pb::AuthRoleAddResponse {
            header: self.header(&out),
        }))
    }

    async fn role_get(
        &self,
        request: Request<pb::AuthRoleGetRequest>,
    ) -> Result<Response<pb::AuthRoleGetResponse>, Status> {
        let (store, ai) = self.read(&request).await?;
        let role = &request.get_ref().role;
        // A user may read the roles it has; anything else needs root.
        if let Err(e) = store.check_admin(ai.as_ref()) {
            if !ai.as_ref().is_some_and(|a| store.has_role(&a.user, role)) {
                return Err(status(e));
            }
        }
        let r = store
            .role(role)
            .ok_or_else(|| status(EtcdError::RoleNotFound))?;
        Ok(Response::new(pb::AuthRoleGetResponse {
            header: self.now_header(),
            perm: r.perms.iter().map(perm_out).collect(),
        }))
    }

    async fn role_list(
        &self,
        request: Request<pb::AuthRoleListRequest>,
    ) -> Result<Response<pb::AuthRoleListResponse>, Status> {
        let (store, ai) = self.read(&request).await?;
        store.check_admin(ai.as_ref()).map_err(status)?;
        Ok(Response::new(pb::AuthRoleListResponse {
            header: self.now_header(),
            roles: store.role_names(),
        }))
    }

    async fn role_delete(
        &self,
        request: Request<pb::AuthRoleDeleteRequest>,
    ) -> Result<Response<pb::AuthRoleDeleteResponse>, Status> {
        let role = request.get_ref().role.clone();
        let out = self
            .propose(&request, AuthRequest::RoleDelete { role })
            .await?;
        Ok(Response::new(pb::AuthRoleDeleteResponse {
            header: self.header(&out),
        }))
    }

    async fn role_grant_permission(
        &self,
        request: Request<pb::AuthRoleGrantPermissionRequest>,
    ) -> Result<Response<pb::AuthRoleGrantPermissionResponse>, Status> {
        let r = request.get_ref();
        let Some(p) = &r.perm else {
            return Err(status(EtcdError::PermissionNotGiven));
        };
        let perm = PermType::from_i32(p.perm_type).unwrap_or(PermType::Read);
        let a = AuthRequest::RoleGrantPermission {
            name: r.name.clone(),
            perm: Permission {
                key: p.key.clone(),
                range_end: p.range_end.clone(),
                perm,
            },
        };
        let out = self.propose(&request, a).await?;
        Ok(Response::new(pb::AuthRoleGrantPermissionResponse {
            header: self.header(&out),
        }))
    }

    async fn role_revoke_permission(
        &self,
        request: Request<pb::AuthRoleRevokePermissionRequest>,
    ) -> Result<Response<pb::AuthRoleRevokePermissionResponse>, Status> {
        let r = request.get_ref();
        let a = AuthRequest::RoleRevokePermission {
            role: r.role.clone(),
            key: r.key.clone(),
            range_end: r.range_end.clone(),
        };
        let out = self.propose(&request, a).await?;
        Ok(Response::new(pb::AuthRoleRevokePermissionResponse {
            header: self.header(&out),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations() {
        assert_eq!(parse_go_duration("1s"), Some(Duration::from_secs(1)));
        assert_eq!(parse_go_duration("5m"), Some(Duration::from_secs(300)));
        assert_eq!(parse_go_duration("1h30m"), Some(Duration::from_secs(5400)));
        assert_eq!(parse_go_duration("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse_go_duration("x"), None);
        assert_eq!(parse_go_duration("10"), None);
    }

    /// ES256 with the verifying key taken from a certificate, as e2e's `pub-key=server.crt`.
    #[test]
    fn jwt_round_trip_with_certificate_public_key() {
        let dir = tempfile::tempdir().unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["localhost".into()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let priv_path = dir.path().join("k.pem");
        let pub_path = dir.path().join("c.pem");
        std::fs::write(&priv_path, key.serialize_pem()).unwrap();
        std::fs::write(&pub_path, cert.pem()).unwrap();
        let opts = format!(
            "jwt,pub-key={},priv-key={},sign-method=ES256,ttl=5m",
            pub_path.display(),
            priv_path.display()
        );
        let cfg = AuthConfig::new(&opts, 10, 300, false).unwrap();
        let TokenKind::Jwt(jwt) = &cfg.tokens else {
            panic!("jwt expected")
        };
        let claims = Claims {
            username: "u".into(),
            revision: 7,
            exp: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_secs()
                + 60,
        };
        let token =
            jsonwebtoken::encode(&Header::new(jwt.alg), &claims, jwt.sign.as_ref().unwrap())
                .unwrap();
        let mut v = Validation::new(jwt.alg);
        v.leeway = 0;
        let back = jsonwebtoken::decode::<Claims>(&token, &jwt.verify, &v).unwrap();
        assert_eq!(back.claims.username, "u");
        assert_eq!(back.claims.revision, 7);
        // A token whose time ran out is refused.
        let old = Claims { exp: 1, ..claims };
        let token =
            jsonwebtoken::encode(&Header::new(jwt.alg), &old, jwt.sign.as_ref().unwrap()).unwrap();
        assert!(jsonwebtoken::decode::<Claims>(&token, &jwt.verify, &v).is_err());
    }

    #[test]
    fn token_options() {
        assert!(AuthConfig::new("simple", 10, 300, false).is_ok());
        assert!(AuthConfig::new("bogus", 10, 300, false).is_err());
        assert!(AuthConfig::new("jwt,sign-method=XX", 10, 300, false).is_err());
        assert!(AuthConfig::new("jwt,ttl=1s,ttl=2s", 10, 300, false).is_err());
    }
}
