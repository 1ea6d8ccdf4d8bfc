//! etcd's auth store as coordinator state: users, roles with key-range permissions, the enabled
//! flag and the auth revision. Changed only by applying raft entries (`AuthRequest`), so every
//! member computes the same state; password hashes arrive already computed (bcrypt runs on the
//! receiving core before proposing), so apply is deterministic.
//!
//! After each change the coordinator publishes the whole store as an `Arc<AuthStore>`; every
//! core checks permissions against that read-only copy (`AuthShared::snapshot`). The store is
//! small (users and roles, not keys), so a copy per auth change is cheap.
//!
//! Simple tokens live in a table on each member (`TokenTable`), filled as each member applies
//! the Authenticate entry that issued them, so a token works on every member; as in etcd they
//! are kept in memory only and lost at restart (clients re-authenticate on "invalid auth
//! token").

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use shards::{RequestOp, TxnRequest};

use crate::error::EtcdError;

pub const ROOT_USER: &str = "root";
pub const ROOT_ROLE: &str = "root";

/// etcd's authpb.Permission_Type, with its wire numbers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PermType {
    Read = 0,
    Write = 1,
    ReadWrite = 2,
}

impl PermType {
    pub fn from_i32(v: i32) -> Option<PermType> {
        match v {
            0 => Some(PermType::Read),
            1 => Some(PermType::Write),
            2 => Some(PermType::ReadWrite),
            _ => None,
        }
    }
    fn allows(self, want: Access) -> bool {
        matches!(
            (self, want),
            (PermType::ReadWrite, _)
                | (PermType::Read, Access::Read)
                | (PermType::Write, Access::Write)
        )
    }
}

/// What a request needs on a key range.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    Read,
    Write,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Permission {
    pub key: Bytes,
    pub range_end: Bytes,
    pub perm: PermType,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct User {
    pub name: String,
    /// The bcrypt hash; `None` for a user added with `--no-password`.
    pub password_hash: Option<String>,
    /// Sorted, as etcd keeps them.
    pub roles: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Role {
    /// Sorted by key, as etcd keeps them.
    pub perms: Vec<Permission>,
}

/// An auth mutation: the payload of an auth raft entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AuthRequest {
    Enable,
    Disable,
    UserAdd {
        name: String,
        password_hash: String,
        no_password: bool,
    },
    UserDelete {
        name: String,
    },
    UserChangePassword {
        name: String,
        password_hash: String,
    },
    UserGrantRole {
        user: String,
        role: String,
    },
    UserRevokeRole {
        name: String,
        role: String,
    },
    RoleAdd {
        name: String,
    },
    RoleDelete {
        role: String,
    },
    RoleGrantPermission {
        name: String,
        perm: Permission,
    },
    RoleRevokePermission {
        role: String,
        key: Bytes,
        range_end: Bytes,
    },
}

/// Who sent a request, as the receiving core resolved it from a token or a client certificate,
/// and the auth revision that identity was checked at.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuthInfo {
    pub user: String,
    pub revision: u64,
}

/// One end of a permission interval: a key, or past every key.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum End {
    Key(Bytes),
    Infinite,
}

/// A user's permissions merged across roles: sorted, disjoint, non-adjacent intervals.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Merged {
    read: Vec<(Bytes, End)>,
    write: Vec<(Bytes, End)>,
}

/// The auth state. `Clone` is the published snapshot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuthStore {
    enabled: bool,
    revision: u64,
    users: BTreeMap<String, User>,
    roles: BTreeMap<String, Role>,
    /// Per user, the merged intervals of all their roles (etcd's range permission cache).
    cache: HashMap<String, Merged>,
}

impl Default for AuthStore {
    fn default() -> Self {
        // etcd's auth store starts at revision 1.
        AuthStore {
            enabled: false,
            revision: 1,
            users: BTreeMap::new(),
            roles: BTreeMap::new(),
            cache: HashMap::new(),
        }
    }
}

/// What an applied auth request changed beyond the store, for the member-local token table.
#[derive(Debug, PartialEq, Eq)]
pub enum TokenEffect {
    None,
    InvalidateUser(String),
    InvalidateAll,
}

impl AuthStore {
    pub fn enabled(&self) -> bool {
        self.enabled
    }
    pub fn revision(&self) -> u64 {
        self.revision
    }
    pub fn user(&self, name: &str) -> Option<&User> {
        self.users.get(name)
    }
    pub fn role(&self, name: &str) -> Option<&Role> {
        self.roles.get(name)
    }
    pub fn user_names(&self) -> Vec<String> {
        self.users.keys().cloned().collect()
    }
    pub fn role_names(&self) -> Vec<String> {
        self.roles.keys().cloned().collect()
    }
    pub fn has_role(&self, user: &str, role: &str) -> bool {
        self.users
            .get(user)
            .is_some_and(|u| u.roles.iter().any(|r| r == role))
    }

    fn commit(&mut self) {
        self.revision += 1;
        self.refresh_cache();
    }

    /// The replicated state, for a checkpoint.
    pub fn to_record(&self) -> super::checkpoint::AuthRecord {
        use super::checkpoint::{PermissionRecord, RoleRecord, UserRecord};
        super::checkpoint::AuthRecord {
            enabled: self.enabled,
            revision: self.revision,
            users: self
                .users
                .values()
                .map(|u| UserRecord {
                    name: u.name.clone(),
                    password_hash: u.password_hash.clone(),
                    roles: u.roles.clone(),
                })
                .collect(),
            roles: self
                .roles
                .iter()
                .map(|(name, role)| RoleRecord {
                    name: name.clone(),
                    perms: role
                        .perms
                        .iter()
                        .map(|p| PermissionRecord {
                            key: p.key.to_vec(),
                            range_end: p.range_end.to_vec(),
                            perm: p.perm as i32,
                        })
                        .collect(),
                })
                .collect(),
        }
    }

    /// The state a checkpoint recorded. An unknown permission type is corruption.
    pub fn from_record(r: &super::checkpoint::AuthRecord) -> Result<AuthStore, String> {
        let mut store = AuthStore {
            enabled: r.enabled,
            revision: r.revision,
            users: r
                .users
                .iter()
                .map(|u| {
                    let user = User {
                        name: u.name.clone(),
                        password_hash: u.password_hash.clone(),
                        roles: u.roles.clone(),
                    };
                    (u.name.clone(), user)
                })
                .collect(),
            roles: BTreeMap::new(),
            cache: HashMap::new(),
        };
        for role in &r.roles {
            let mut perms = Vec::with_capacity(role.perms.len());
            for p in &role.perms {
                let perm = PermType::from_i32(p.perm)
                    .ok_or_else(|| format!("role {:?}: permission type {}", role.name, p.perm))?;
                perms.push(Permission {
                    key: Bytes::copy_from_slice(&p.key),
                    range_end: Bytes::copy_from_slice(&p.range_end),
                    perm,
                });
            }
            store.roles.insert(role.name.clone(), Role { perms });
        }
        store.refresh_cache();
        Ok(store)
    }

    fn refresh_cache(&mut self) {
        self.cache = self
            .users
            .values()
            .map(|u| (u.name.clone(), merged_perms(u, &self.roles)))
            .collect();
    }

    /// Applies one auth mutation with etcd's checks and errors.
    pub fn apply(&mut self, req: AuthRequest) -> Result<TokenEffect, EtcdError> {
        use AuthRequest::*;
        match req {
            Enable => {
                if self.enabled {
                    return Ok(TokenEffect::None);
                }
                let root = self
                    .users
                    .get(ROOT_USER)
                    .ok_or(EtcdError::RootUserNotExist)?;
                if !root.roles.iter().any(|r| r == ROOT_ROLE) {
                    return Err(EtcdError::RootRoleNotExist);
                }
                // Enabling does not move the auth revision (as etcd).
                self.enabled = true;
                self.refresh_cache();
                Ok(TokenEffect::None)
            }
            Disable => {
                if !self.enabled {
                    return Ok(TokenEffect::None);
                }
                self.enabled = false;
                self.commit();
                Ok(TokenEffect::InvalidateAll)
            }
            UserAdd {
                name,
                password_hash,
                no_password,
            } => {
                if name.is_empty() {
                    return Err(EtcdError::UserEmpty);
                }
                if self.users.contains_key(&name) {
                    return Err(EtcdError::UserAlreadyExist);
                }
                let user = User {
                    name: name.clone(),
                    password_hash: (!no_password).then_some(password_hash),
                    roles: Vec::new(),
                };
                self.users.insert(name, user);
                self.commit();
                Ok(TokenEffect::None)
            }
            UserDelete { name } => {
                if self.enabled && name == ROOT_USER {
                    return Err(EtcdError::InvalidAuthMgmt);
                }
                if self.users.remove(&name).is_none() {
                    return Err(EtcdError::UserNotFound);
                }
                self.commit();
                Ok(TokenEffect::InvalidateUser(name))
            }
            UserChangePassword {
                name,
                password_hash,
            } => {
                let user = self.users.get_mut(&name).ok_or(EtcdError::UserNotFound)?;
                if user.password_hash.is_some() {
                    user.password_hash = Some(password_hash);
                }
                self.commit();
                Ok(TokenEffect::InvalidateUser(name))
            }
            UserGrantRole { user, role } => {
                if !self.users.contains_key(&user) {
                    return Err(EtcdError::UserNotFound);
                }
                if role != ROOT_ROLE && !self.roles.contains_key(&role) {
                    return Err(EtcdError::RoleNotFound);
                }
                let u = self.users.get_mut(&user).expect("checked above");
                match u.roles.binary_search(&role) {
                    Ok(_) => Ok(TokenEffect::None), // already granted: ignored, as etcd
                    Err(at) => {
                        u.roles.insert(at, role);
                        self.commit();
                        Ok(TokenEffect::None)
                    }
                }
            }
            UserRevokeRole { name, role } => {
                if self.enabled && name == ROOT_USER && role == ROOT_ROLE {
                    return Err(EtcdError::InvalidAuthMgmt);
                }
                let u = self.users.get_mut(&name).ok_or(EtcdError::UserNotFound)?;
                let before = u.roles.len();
                u.roles.retain(|r| *r != role);
                if u.roles.len() == before {
                    return Err(EtcdError::RoleNotGranted);
                }
                self.commit();
                Ok(TokenEffect::None)
            }
            RoleAdd { name } => {
                if name.is_empty() {
                    return Err(EtcdError::RoleEmpty);
                }
                if self.roles.contains_key(&name) {
                    return Err(EtcdError::RoleAlreadyExist);
                }
                self.roles.insert(name, Role::default());
                self.commit();
                Ok(TokenEffect::None)
            }
            RoleDelete { role } => {
                if self.enabled && role == ROOT_ROLE {
                    return Err(EtcdError::InvalidAuthMgmt);
                }
                if self.roles.remove(&role).is_none() {
                    return Err(EtcdError::RoleNotFound);
                }
                for u in self.users.values_mut() {
                    u.roles.retain(|r| *r != role);
                }
                self.commit();
                Ok(TokenEffect::None)
            }
            RoleGrantPermission { name, perm } => {
                if !is_valid_permission_range(&perm.key, &perm.range_end) {
                    return Err(EtcdError::InvalidAuthMgmt);
                }
                let role = self.roles.get_mut(&name).ok_or(EtcdError::RoleNotFound)?;
                if let Some(p) = role
                    .perms
                    .iter_mut()
                    .find(|p| p.key == perm.key && p.range_end == perm.range_end)
                {
                    p.perm = perm.perm;
                } else {
                    role.perms.push(perm);
                    role.perms.sort_by(|a, b| a.key.cmp(&b.key));
                }
                self.commit();
                Ok(TokenEffect::None)
            }
            RoleRevokePermission {
                role,
                key,
                range_end,
            } => {
                let r = self.roles.get_mut(&role).ok_or(EtcdError::RoleNotFound)?;
                let before = r.perms.len();
                r.perms
                    .retain(|p| !(p.key == key && p.range_end == range_end));
                if r.perms.len() == before {
                    return Err(EtcdError::PermissionNotGranted);
                }
                self.commit();
                Ok(TokenEffect::None)
            }
        }
    }

    /// etcd's IsAdminPermitted.
    pub fn check_admin(&self, ai: Option<&AuthInfo>) -> Result<(), EtcdError> {
        if !self.enabled {
            return Ok(());
        }
        let ai = match ai {
            Some(ai) if !ai.user.is_empty() => ai,
            _ => return Err(EtcdError::UserEmpty),
        };
        let u = self.users.get(&ai.user).ok_or(EtcdError::UserNotFound)?;
        if u.roles.iter().any(|r| r == ROOT_ROLE) {
            Ok(())
        } else {
            Err(EtcdError::PermissionDenied)
        }
    }

    /// etcd's isOpPermitted: `range_end` empty for one key, `[0]` for every key from `key` on.
    pub fn check_range(
        &self,
        ai: Option<&AuthInfo>,
        key: &[u8],
        range_end: &[u8],
        access: Access,
    ) -> Result<(), EtcdError> {
        if !self.enabled {
            return Ok(());
        }
        let ai = match ai {
            Some(ai) if ai.revision != 0 => ai,
            _ => return Err(EtcdError::UserEmpty),
        };
        if ai.revision < self.revision {
            return Err(EtcdError::AuthOldRevision);
        }
        let user = self
            .users
            .get(&ai.user)
            .ok_or(EtcdError::PermissionDenied)?;
        if user.roles.iter().any(|r| r == ROOT_ROLE) {
            return Ok(());
        }
        let Some(m) = self.cache.get(&ai.user) else {
            return Err(EtcdError::PermissionDenied);
        };
        let ivls = match access {
            Access::Read => &m.read,
            Access::Write => &m.write,
        };
        let ok = if range_end.is_empty() {
            ivls.iter()
                .any(|(b, e)| b.as_ref() <= key && end_after_key(e, key))
        } else {
            let want_end = if range_end == [0] {
                End::Infinite
            } else {
                End::Key(Bytes::copy_from_slice(range_end))
            };
            ivls.iter()
                .any(|(b, e)| b.as_ref() <= key && *e >= want_end)
        };
        if ok {
            Ok(())
        } else {
            Err(EtcdError::PermissionDenied)
        }
    }

    /// etcd's checkTxnAuth: every compare (read), every op on both branches, nested txns too.
    pub fn check_txn(&self, ai: Option<&AuthInfo>, t: &TxnRequest) -> Result<(), EtcdError> {
        if !self.enabled {
            return Ok(());
        }
        for c in &t.compare {
            self.check_range(ai, &c.key, &c.range_end, Access::Read)?;
        }
        for op in t.success.iter().chain(t.failure.iter()) {
            match op {
                RequestOp::Range(r) => self.check_range(ai, &r.key, &r.range_end, Access::Read)?,
                RequestOp::Put(p) => {
                    self.check_range(ai, &p.key, &[], Access::Write)?;
                    if p.prev_kv {
                        self.check_range(ai, &p.key, &[], Access::Read)?;
                    }
                }
                RequestOp::DeleteRange(d) => {
                    if d.prev_kv {
                        self.check_range(ai, &d.key, &d.range_end, Access::Read)?;
                    }
                    self.check_range(ai, &d.key, &d.range_end, Access::Write)?;
                }
                RequestOp::Txn(inner) => self.check_txn(ai, inner)?,
            }
        }
        Ok(())
    }
}

/// Applies an auth mutation to the coordinator's store and, if it changed anything, publishes
/// the new state to every core and updates the member's token table.
pub fn apply_published(
    store: &mut Arc<AuthStore>,
    shared: &AuthShared,
    req: AuthRequest,
) -> Result<(), EtcdError> {
    let effect = Arc::make_mut(store).apply(req)?;
    shared.publish(store.clone());
    shared.apply_token_effect(effect);
    Ok(())
}

/// The apply-time permission check of a request sent by `info` (etcd's authApplierV3): auth
/// mutations need root; puts, deletes and txns need their ranges (at an auth revision no older
/// than the store's); a lease revoke, or a put attaching a lease, needs write permission on
/// every key the lease holds. `lease_keys` answers the keys attached to a lease.
pub fn check_apply(
    store: &AuthStore,
    info: &AuthInfo,
    req: &super::WriteRequest,
    lease_keys: &dyn Fn(i64) -> Vec<Bytes>,
) -> Result<(), EtcdError> {
    use super::WriteRequest as W;
    if !store.enabled() {
        return Ok(());
    }
    let ai = Some(info);
    let lease_puts = |id: i64| -> Result<(), EtcdError> {
        if id == 0 || store.check_admin(ai).is_ok() {
            return Ok(());
        }
        for key in lease_keys(id) {
            store.check_range(ai, &key, &[], Access::Write)?;
        }
        Ok(())
    };
    match req {
        W::Auth(_) => store.check_admin(ai),
        W::Put(p) => {
            store.check_range(ai, &p.key, &[], Access::Write)?;
            lease_puts(p.lease)?;
            if p.prev_kv {
                store.check_range(ai, &p.key, &[], Access::Read)?;
            }
            Ok(())
        }
        W::DeleteRange(d) => {
            store.check_range(ai, &d.key, &d.range_end, Access::Write)?;
            if d.prev_kv {
                store.check_range(ai, &d.key, &d.range_end, Access::Read)?;
            }
            Ok(())
        }
        W::Txn(t) => store.check_txn(ai, t),
        W::LeaseRevoke { id } => lease_puts(*id),
        _ => Ok(()),
    }
}

fn end_after_key(e: &End, key: &[u8]) -> bool {
    match e {
        End::Infinite => true,
        End::Key(k) => key < k.as_ref(),
    }
}

/// etcd's isValidPermissionRange.
fn is_valid_permission_range(key: &[u8], range_end: &[u8]) -> bool {
    if key.is_empty() {
        return false;
    }
    range_end.is_empty() || key < range_end || range_end == [0]
}

/// The point `key` as an interval: `[key, key\0)`.
fn point_end(key: &Bytes) -> End {
    let mut k = key.to_vec();
    k.push(0);
    End::Key(Bytes::from(k))
}

fn merged_perms(user: &User, roles: &BTreeMap<String, Role>) -> Merged {
    let mut read = Vec::new();
    let mut write = Vec::new();
    for role in user.roles.iter().filter_map(|r| roles.get(r)) {
        for p in &role.perms {
            let end = if p.range_end.is_empty() {
                point_end(&p.key)
            } else if p.range_end.as_ref() == [0] {
                End::Infinite
            } else {
                End::Key(p.range_end.clone())
            };
            if p.perm.allows(Access::Read) {
                read.push((p.key.clone(), end.clone()));
            }
            if p.perm.allows(Access::Write) {
                write.push((p.key.clone(), end));
            }
        }
    }
    Merged {
        read: merge(read),
        write: merge(write),
    }
}

/// Sorts and unions intervals; touching intervals join (etcd's interval tree `Contains` treats
/// them as contiguous).
fn merge(mut v: Vec<(Bytes, End)>) -> Vec<(Bytes, End)> {
    v.sort();
    let mut out: Vec<(Bytes, End)> = Vec::with_capacity(v.len());
    for (b, e) in v {
        if let Some(last) = out.last_mut() {
            let touches = match &last.1 {
                End::Infinite => true,
                End::Key(k) => b <= *k,
            };
            if touches {
                if e > last.1 {
                    last.1 = e;
                }
                continue;
            }
        }
        out.push((b, e));
    }
    out
}

/// A simple token's owner and when it lapses.
struct TokenEntry {
    user: String,
    expires: Instant,
}

/// Tokens are swept when the table grows past this many, so it cannot grow without bound
/// while tokens are still inside their TTL only.
const TOKEN_SWEEP_AT: usize = 4096;

/// etcd's simple-token table: filled by applying Authenticate entries (so the same on every
/// member), kept in memory only, TTL refreshed on every use.
pub struct TokenTable {
    tokens: HashMap<String, TokenEntry>,
    ttl: Duration,
}

/// etcd's default `--auth-token-ttl`.
const DEFAULT_SIMPLE_TOKEN_TTL: Duration = Duration::from_secs(300);

impl TokenTable {
    fn new() -> Self {
        TokenTable {
            tokens: HashMap::new(),
            ttl: DEFAULT_SIMPLE_TOKEN_TTL,
        }
    }
}

/// Auth state shared by every core: the published snapshot (written only by the coordinator)
/// and the member's simple tokens.
pub struct AuthShared {
    snapshot: RwLock<Arc<AuthStore>>,
    tokens: Mutex<TokenTable>,
}

impl Default for AuthShared {
    fn default() -> Self {
        AuthShared {
            snapshot: RwLock::new(Arc::new(AuthStore::default())),
            tokens: Mutex::new(TokenTable::new()),
        }
    }
}

impl std::fmt::Debug for AuthShared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthShared").finish_non_exhaustive()
    }
}

impl AuthShared {
    /// The current auth state; readers hold the lock only to clone an `Arc`.
    pub fn snapshot(&self) -> Arc<AuthStore> {
        self.snapshot
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn publish(&self, store: Arc<AuthStore>) {
        *self.snapshot.write().unwrap_or_else(|e| e.into_inner()) = store;
    }

    /// A fresh token prefix: etcd's shape, 16 random letters. The applier appends `.<raft
    /// index>`, which makes the token unique on every member without coordination.
    pub fn simple_token_prefix() -> String {
        use rand::Rng;
        const LETTERS: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ";
        let mut rng = rand::thread_rng();
        (0..16)
            .map(|_| LETTERS[rng.gen_range(0..LETTERS.len())] as char)
            .collect()
    }

    /// Sets how long an unused simple token lives (`--auth-token-ttl`); a member's own choice,
    /// as in etcd, so it is configuration and not replicated.
    pub fn set_simple_token_ttl(&self, ttl: Duration) {
        self.tokens.lock().unwrap_or_else(|e| e.into_inner()).ttl = ttl;
    }

    /// Records a token that an applied Authenticate issued for `user`.
    pub fn add_simple_token(&self, token: String, user: String) {
        let now = Instant::now();
        let mut t = self.tokens.lock().unwrap_or_else(|e| e.into_inner());
        if t.tokens.len() >= TOKEN_SWEEP_AT {
            t.tokens.retain(|_, e| e.expires > now);
        }
        let expires = now + t.ttl;
        t.tokens.insert(token, TokenEntry { user, expires });
    }

    /// Whether `token` is in the table (live or not yet swept); does not refresh it.
    pub fn has_simple_token(&self, token: &str) -> bool {
        let t = self.tokens.lock().unwrap_or_else(|e| e.into_inner());
        t.tokens.contains_key(token)
    }

    /// The user of a live simple token; refreshes its TTL.
    pub fn simple_token_user(&self, token: &str) -> Option<String> {
        let now = Instant::now();
        let mut t = self.tokens.lock().unwrap_or_else(|e| e.into_inner());
        let ttl = t.ttl;
        match t.tokens.get_mut(token) {
            Some(e) if e.expires > now => {
                e.expires = now + ttl;
                Some(e.user.clone())
            }
            Some(_) => {
                t.tokens.remove(token);
                None
            }
            None => None,
        }
    }

    pub fn apply_token_effect(&self, effect: TokenEffect) {
        let mut t = self.tokens.lock().unwrap_or_else(|e| e.into_inner());
        match effect {
            TokenEffect::None => {}
            TokenEffect::InvalidateUser(name) => t.tokens.retain(|_, e| e.user != name),
            TokenEffect::InvalidateAll => t.tokens.clear(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(s: &str) -> Bytes {
        Bytes::copy_from_slice(s.as_bytes())
    }

    fn ai(user: &str, s: &AuthStore) -> AuthInfo {
        AuthInfo {
            user: user.into(),
            revision: s.revision(),
        }
    }

    fn setup() -> AuthStore {
        let mut s = AuthStore::default();
        for r in [
            AuthRequest::UserAdd {
                name: "root".into(),
                password_hash: "h".into(),
                no_password: false,
            },
            AuthRequest::UserGrantRole {
                user: "root".into(),
                role: "root".into(),
            },
            AuthRequest::UserAdd {
                name: "u".into(),
                password_hash: "h".into(),
                no_password: false,
            },
            AuthRequest::RoleAdd { name: "r".into() },
            AuthRequest::UserGrantRole {
                user: "u".into(),
                role: "r".into(),
            },
            AuthRequest::Enable,
        ] {
            s.apply(r).unwrap();
        }
        s
    }

    fn grant(s: &mut AuthStore, key: &str, end: &[u8], perm: PermType) {
        s.apply(AuthRequest::RoleGrantPermission {
            name: "r".into(),
            perm: Permission {
                key: b(key),
                range_end: Bytes::copy_from_slice(end),
                perm,
            },
        })
        .unwrap();
    }

    #[test]
    fn enable_needs_root_user_with_root_role() {
        let mut s = AuthStore::default();
        assert_eq!(
            s.apply(AuthRequest::Enable),
            Err(EtcdError::RootUserNotExist)
        );
        s.apply(AuthRequest::UserAdd {
            name: "root".into(),
            password_hash: "h".into(),
            no_password: false,
        })
        .unwrap();
        assert_eq!(
            s.apply(AuthRequest::Enable),
            Err(EtcdError::RootRoleNotExist)
        );
        s.apply(AuthRequest::UserGrantRole {
            user: "root".into(),
            role: "root".into(),
        })
        .unwrap();
        let rev = s.revision();
        s.apply(AuthRequest::Enable).unwrap();
        assert!(s.enabled());
        assert_eq!(s.revision(), rev, "enable keeps the revision");
        assert_eq!(
            s.apply(AuthRequest::UserDelete {
                name: "root".into()
            }),
            Err(EtcdError::InvalidAuthMgmt)
        );
        assert_eq!(
            s.apply(AuthRequest::UserRevokeRole {
                name: "root".into(),
                role: "root".into()
            }),
            Err(EtcdError::InvalidAuthMgmt)
        );
        assert_eq!(
            s.apply(AuthRequest::RoleDelete {
                role: "root".into()
            }),
            Err(EtcdError::InvalidAuthMgmt)
        );
    }

    #[test]
    fn key_prefix_and_from_key_permissions() {
        let mut s = setup();
        grant(&mut s, "foo", b"", PermType::ReadWrite);
        grant(&mut s, "/p/", b"/p0", PermType::Write);
        grant(&mut s, "z", b"\0", PermType::Read);
        let u = ai("u", &s);
        let ok = |s: &AuthStore, k: &str, e: &[u8], a| s.check_range(Some(&u), k.as_bytes(), e, a);
        assert_eq!(ok(&s, "foo", b"", Access::Write), Ok(()));
        assert_eq!(ok(&s, "foo", b"", Access::Read), Ok(()));
        assert_eq!(
            ok(&s, "foo1", b"", Access::Read),
            Err(EtcdError::PermissionDenied)
        );
        assert_eq!(ok(&s, "/p/1", b"", Access::Write), Ok(()));
        assert_eq!(ok(&s, "/p/", b"/p0", Access::Write), Ok(()));
        assert_eq!(
            ok(&s, "/p/", b"/p1", Access::Write),
            Err(EtcdError::PermissionDenied)
        );
        assert_eq!(
            ok(&s, "/p/1", b"", Access::Read),
            Err(EtcdError::PermissionDenied)
        );
        assert_eq!(ok(&s, "z9", b"", Access::Read), Ok(()));
        assert_eq!(ok(&s, "\u{7f}\u{7f}", b"", Access::Read), Ok(()));
        assert_eq!(ok(&s, "z", b"\0", Access::Read), Ok(()));
        assert_eq!(
            ok(&s, "y", b"\0", Access::Read),
            Err(EtcdError::PermissionDenied)
        );
        // Root passes everything; no user and stale revisions fail.
        let root = ai("root", &s);
        assert_eq!(
            s.check_range(Some(&root), b"any", b"\0", Access::Write),
            Ok(())
        );
        assert_eq!(
            s.check_range(None, b"foo", b"", Access::Read),
            Err(EtcdError::UserEmpty)
        );
        let old = AuthInfo {
            user: "u".into(),
            revision: 1,
        };
        assert_eq!(
            s.check_range(Some(&old), b"foo", b"", Access::Read),
            Err(EtcdError::AuthOldRevision)
        );
        assert_eq!(s.check_admin(Some(&u)), Err(EtcdError::PermissionDenied));
        assert_eq!(s.check_admin(Some(&root)), Ok(()));
        // Adjacent grants join into one covering interval.
        grant(&mut s, "a", b"c", PermType::Read);
        grant(&mut s, "c", b"e", PermType::Read);
        let u = ai("u", &s);
        assert_eq!(s.check_range(Some(&u), b"a", b"e", Access::Read), Ok(()));
        // Revoking needs the exact range.
        assert_eq!(
            s.apply(AuthRequest::RoleRevokePermission {
                role: "r".into(),
                key: b("a"),
                range_end: b("d")
            }),
            Err(EtcdError::PermissionNotGranted)
        );
    }

    #[test]
    fn role_delete_revokes_from_users_and_tokens_follow_users() {
        let mut s = setup();
        assert!(s.has_role("u", "r"));
        s.apply(AuthRequest::RoleDelete { role: "r".into() })
            .unwrap();
        assert!(!s.has_role("u", "r"));
        let shared = AuthShared::default();
        let t = format!("{}.7", AuthShared::simple_token_prefix());
        shared.add_simple_token(t.clone(), "u".into());
        assert_eq!(shared.simple_token_user(&t).as_deref(), Some("u"));
        let eff = s
            .apply(AuthRequest::UserDelete { name: "u".into() })
            .unwrap();
        shared.apply_token_effect(eff);
        assert_eq!(shared.simple_token_user(&t), None);
    }
}
