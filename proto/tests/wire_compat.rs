//! Wire-compatibility check against etcd's own v3.5.17 protos.
//!
//! etcd's `rpc.proto`, `kv.proto`, `auth.proto` (API module) and
//! `v3election.proto`, `v3lock.proto` (server module) are taken from the Go
//! module cache (downloaded with `go mod download` if absent) and compiled with
//! protox at test time. Their descriptors are then compared with our
//! `proto::FILE_DESCRIPTOR_SET` message by message, field by field, enum by
//! enum and method by method. Any difference fails the test; a missing etcd
//! source fails it too (it never passes vacuously).
//!
//! etcd's files import `gogoproto/gogo.proto` and `google/api/annotations.proto`.
//! Those are taken from the module cache when present (gogo/protobuf,
//! grpc-gateway v1 third_party/googleapis); otherwise minimal stubs declaring
//! just the options etcd uses are written. `etcd_with_stub_imports` always
//! uses the stubs so both paths stay exercised.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use prost::Message;
use prost_reflect::{DescriptorPool, DynamicMessage};
use prost_types::{
    field_descriptor_proto::{Label, Type},
    DescriptorProto, EnumDescriptorProto, FileDescriptorSet,
};

const ETCD_API_MODULE: &str = "go.etcd.io/etcd/api/v3";
const ETCD_VERSION: &str = "v3.5.17";
const ETCD_SERVER_MODULE: &str = "go.etcd.io/etcd/server/v3";
const PACKAGES: &[&str] = &[
    "etcdserverpb",
    "mvccpb",
    "authpb",
    "membershippb",
    "leasepb",
    "v3electionpb",
    "v3lockpb",
];

/// Where etcd's files must sit so their own `import` lines resolve.
const ETCD_FILES: &[(&str, &str)] = &[
    ("etcdserverpb/rpc.proto", "etcd/api/etcdserverpb/rpc.proto"),
    ("mvccpb/kv.proto", "etcd/api/mvccpb/kv.proto"),
    ("authpb/auth.proto", "etcd/api/authpb/auth.proto"),
    (
        "etcdserverpb/etcdserver.proto",
        "etcd/api/etcdserverpb/etcdserver.proto",
    ),
    (
        "membershippb/membership.proto",
        "etcd/api/membershippb/membership.proto",
    ),
    (
        "etcdserverpb/raft_internal.proto",
        "etcd/api/etcdserverpb/raft_internal.proto",
    ),
];

/// etcd's Election and Lock protos, from the server module (they import the API files above).
const ETCD_SERVER_FILES: &[(&str, &str)] = &[
    (
        "etcdserver/api/v3election/v3electionpb/v3election.proto",
        "etcd/server/etcdserver/api/v3election/v3electionpb/v3election.proto",
    ),
    (
        "etcdserver/api/v3lock/v3lockpb/v3lock.proto",
        "etcd/server/etcdserver/api/v3lock/v3lockpb/v3lock.proto",
    ),
    (
        "lease/leasepb/lease.proto",
        "etcd/server/lease/leasepb/lease.proto",
    ),
];

/// etcd builds raft_internal.proto with its own directory on the include path, so it imports
/// its neighbours by bare name; here every file has one name, from the include root.
fn etcd_import_paths(contents: &[u8]) -> Vec<u8> {
    String::from_utf8_lossy(contents)
        .replace(
            "import \"etcdserver.proto\";",
            "import \"etcd/api/etcdserverpb/etcdserver.proto\";",
        )
        .replace(
            "import \"rpc.proto\";",
            "import \"etcd/api/etcdserverpb/rpc.proto\";",
        )
        .into_bytes()
}

// ---------------------------------------------------------------------------
// Locating etcd's sources
// ---------------------------------------------------------------------------

fn go_env(var: &str) -> Option<String> {
    let out = Command::new("go").args(["env", var]).output().ok()?;
    if !out.status.success() {
        return None;
    }
    let s = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (!s.is_empty()).then_some(s)
}

fn mod_cache() -> PathBuf {
    if let Some(p) = std::env::var_os("GOMODCACHE").filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    if let Some(p) = go_env("GOMODCACHE") {
        return PathBuf::from(p);
    }
    if let Some(p) = std::env::var_os("GOPATH").filter(|p| !p.is_empty()) {
        return PathBuf::from(p).join("pkg/mod");
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
    PathBuf::from(home).join("go/pkg/mod")
}

/// `go mod download -json MODULE@VERSION` inside a throwaway wrapper module;
/// returns the module's directory.
fn go_mod_download(module_at_version: &str) -> Result<PathBuf, String> {
    let tmp = tempfile::tempdir().map_err(|e| e.to_string())?;
    let run = |args: &[&str]| {
        Command::new("go")
            .args(args)
            .current_dir(tmp.path())
            .env("GOFLAGS", "-mod=mod")
            .output()
            .map_err(|e| format!("cannot run `go {}`: {e}", args.join(" ")))
    };
    let init = run(&["mod", "init", "rusd.invalid/wirecompat"])?;
    if !init.status.success() {
        return Err(format!(
            "`go mod init` failed: {}",
            String::from_utf8_lossy(&init.stderr)
        ));
    }
    let out = run(&["mod", "download", "-json", module_at_version])?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Err(format!(
            "`go mod download {module_at_version}` failed: {}{}",
            String::from_utf8_lossy(&out.stderr),
            stdout
        ));
    }
    // Pull "Dir": "..." out of the JSON without a JSON dependency.
    let dir = stdout
        .lines()
        .map(str::trim)
        .find_map(|l| l.strip_prefix("\"Dir\": \""))
        .and_then(|l| l.strip_suffix("\","))
        .ok_or_else(|| format!("no Dir in `go mod download -json` output: {stdout}"))?;
    Ok(PathBuf::from(dir))
}

fn etcd_api_dir() -> PathBuf {
    etcd_module_dir(ETCD_API_MODULE, "etcdserverpb/rpc.proto")
}

fn etcd_server_dir() -> PathBuf {
    etcd_module_dir(ETCD_SERVER_MODULE, ETCD_SERVER_FILES[0].0)
}

/// The module's directory in the Go module cache (downloaded if absent); `probe` must exist.
fn etcd_module_dir(module: &str, probe: &str) -> PathBuf {
    let cached = mod_cache().join(format!("{module}@{ETCD_VERSION}"));
    if cached.join(probe).is_file() {
        return cached;
    }
    eprintln!(
        "{} not found; running `go mod download {module}@{ETCD_VERSION}`",
        cached.display()
    );
    match go_mod_download(&format!("{module}@{ETCD_VERSION}")) {
        Ok(dir) if dir.join(probe).is_file() => dir,
        Ok(dir) => panic!(
            "etcd module downloaded to {} but {probe} is missing",
            dir.display()
        ),
        Err(e) => panic!(
            "wire-compat test needs etcd's original protos ({module}@{ETCD_VERSION}) \
             from the Go module cache ({}), and fetching them failed: {e}\n\
             Install Go and run `go mod download {module}@{ETCD_VERSION}`.",
            cached.display()
        ),
    }
}

/// First existing `<modcache>/<prefix>@*/<rel>`, newest-sorting version last wins.
fn find_in_mod_cache(prefix: &str, rel: &str) -> Option<PathBuf> {
    let root = mod_cache();
    let (parent, name) = match prefix.rsplit_once('/') {
        Some((p, n)) => (root.join(p), n.to_string()),
        None => (root.clone(), prefix.to_string()),
    };
    let mut hits: Vec<PathBuf> = fs::read_dir(parent)
        .ok()?
        .filter_map(Result::ok)
        .filter(|e| {
            e.file_name()
                .to_str()
                .is_some_and(|n| n.starts_with(&format!("{name}@")))
        })
        .map(|e| e.path().join(rel))
        .filter(|p| p.is_file())
        .collect();
    hits.sort();
    hits.pop()
}

// ---------------------------------------------------------------------------
// Stubs for etcd's non-wire imports
// ---------------------------------------------------------------------------

const GOGO_STUB: &str = r#"
syntax = "proto2";
package gogoproto;
import "google/protobuf/descriptor.proto";
extend google.protobuf.FileOptions {
  optional bool goproto_getters_all = 63001;
  optional bool goproto_enum_prefix_all = 63002;
  optional bool marshaler_all = 63017;
  optional bool unmarshaler_all = 63018;
  optional bool sizer_all = 63020;
}
extend google.protobuf.FieldOptions {
  optional bool nullable = 65001;
  optional bool embed = 65002;
  optional string customtype = 65003;
  optional string customname = 65004;
  optional string jsontag = 65005;
  optional string moretags = 65006;
  optional string casttype = 65007;
}
"#;

const ANNOTATIONS_STUB: &str = r#"
syntax = "proto3";
package google.api;
import "google/api/http.proto";
import "google/protobuf/descriptor.proto";
extend google.protobuf.MethodOptions {
  HttpRule http = 72295728;
}
"#;

const HTTP_STUB: &str = r#"
syntax = "proto3";
package google.api;
message HttpRule {
  string selector = 1;
  oneof pattern {
    string get = 2;
    string put = 3;
    string post = 4;
    string delete = 5;
    string patch = 6;
  }
  string body = 7;
  repeated HttpRule additional_bindings = 11;
}
"#;

fn put(root: &Path, rel: &str, contents: &[u8]) {
    let dst = root.join(rel);
    fs::create_dir_all(dst.parent().unwrap()).unwrap();
    fs::write(&dst, contents).unwrap();
}

/// Lays etcd's files (and their imports) out in a temp include root and
/// compiles them with protox.
fn compile_etcd(real_imports: bool) -> (FileDescriptorSet, DescriptorPool) {
    let api = etcd_api_dir();
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();

    for (src, dst) in ETCD_FILES {
        put(
            root,
            dst,
            &etcd_import_paths(&fs::read(api.join(src)).unwrap()),
        );
    }
    let server = etcd_server_dir();
    for (src, dst) in ETCD_SERVER_FILES {
        put(root, dst, &fs::read(server.join(src)).unwrap());
    }

    let gogo = real_imports
        .then(|| find_in_mod_cache("github.com/gogo/protobuf", "gogoproto/gogo.proto"))
        .flatten();
    match gogo {
        Some(p) => {
            eprintln!("gogo.proto: {}", p.display());
            put(root, "gogoproto/gogo.proto", &fs::read(p).unwrap());
        }
        None => {
            eprintln!("gogo.proto: stub");
            put(root, "gogoproto/gogo.proto", GOGO_STUB.as_bytes());
        }
    }

    let googleapis = real_imports
        .then(|| {
            find_in_mod_cache(
                "github.com/grpc-ecosystem/grpc-gateway",
                "third_party/googleapis/google/api/annotations.proto",
            )
        })
        .flatten()
        .map(|p| p.parent().unwrap().to_path_buf());
    match googleapis {
        Some(dir) => {
            eprintln!("google/api: {}", dir.display());
            for f in ["annotations.proto", "http.proto"] {
                put(
                    root,
                    &format!("google/api/{f}"),
                    &fs::read(dir.join(f)).unwrap(),
                );
            }
        }
        None => {
            eprintln!("google/api: stub");
            put(
                root,
                "google/api/annotations.proto",
                ANNOTATIONS_STUB.as_bytes(),
            );
            put(root, "google/api/http.proto", HTTP_STUB.as_bytes());
        }
    }

    let mut compiler = protox::Compiler::new([root]).unwrap();
    compiler.include_imports(true);
    for (_, dst) in ETCD_FILES.iter().chain(ETCD_SERVER_FILES) {
        if let Err(e) = compiler.open_file(dst) {
            panic!("protox failed on etcd's {dst}: {e:?}");
        }
    }
    (compiler.file_descriptor_set(), compiler.descriptor_pool())
}

fn ours() -> FileDescriptorSet {
    FileDescriptorSet::decode(proto::FILE_DESCRIPTOR_SET).expect("decode FILE_DESCRIPTOR_SET")
}

// ---------------------------------------------------------------------------
// Descriptor flattening and comparison
// ---------------------------------------------------------------------------

/// (input, output, client_streaming, server_streaming)
type MethodSig = (String, String, bool, bool);

#[derive(Default)]
struct Flat {
    messages: BTreeMap<String, DescriptorProto>,
    enums: BTreeMap<String, EnumDescriptorProto>,
    /// service -> method -> signature
    services: BTreeMap<String, BTreeMap<String, MethodSig>>,
}

fn flatten_msg(prefix: &str, m: &DescriptorProto, flat: &mut Flat) {
    let name = format!("{prefix}.{}", m.name());
    for n in &m.nested_type {
        flatten_msg(&name, n, flat);
    }
    for e in &m.enum_type {
        flat.enums.insert(format!("{name}.{}", e.name()), e.clone());
    }
    flat.messages.insert(name, m.clone());
}

fn flatten(fds: &FileDescriptorSet) -> Flat {
    let mut flat = Flat::default();
    for f in &fds.file {
        if !PACKAGES.contains(&f.package()) {
            continue;
        }
        // etcd writes every file in proto3 except etcdserver.proto (v2 requests and the WAL
        // metadata), which is proto2; ours must say the same, as presence rules differ.
        let expected = if f.name().ends_with("etcdserverpb/etcdserver.proto") {
            ""
        } else {
            "proto3"
        };
        assert_eq!(f.syntax(), expected, "{}: unexpected syntax", f.name());
        let pkg = format!(".{}", f.package());
        for m in &f.message_type {
            flatten_msg(&pkg, m, &mut flat);
        }
        for e in &f.enum_type {
            flat.enums.insert(format!("{pkg}.{}", e.name()), e.clone());
        }
        for s in &f.service {
            let methods = s
                .method
                .iter()
                .map(|m| {
                    (
                        m.name().to_string(),
                        (
                            m.input_type().to_string(),
                            m.output_type().to_string(),
                            m.client_streaming(),
                            m.server_streaming(),
                        ),
                    )
                })
                .collect();
            let prev = flat.services.insert(format!("{pkg}.{}", s.name()), methods);
            assert!(prev.is_none(), "duplicate service {}", s.name());
        }
    }
    flat
}

fn key_diff<V, W>(
    what: &str,
    ours: &BTreeMap<String, V>,
    etcd: &BTreeMap<String, W>,
) -> Vec<String> {
    let a: BTreeSet<_> = ours.keys().collect();
    let b: BTreeSet<_> = etcd.keys().collect();
    let mut d: Vec<String> = b
        .difference(&a)
        .map(|k| format!("{what} {k}: missing in ours"))
        .collect();
    d.extend(a.difference(&b).map(|k| format!("{what} {k}: not in etcd")));
    d
}

/// Everything about a field that can affect the wire format or generated API.
fn field_sig(m: &DescriptorProto, f: &prost_types::FieldDescriptorProto) -> String {
    let oneof = f
        .oneof_index
        .map(|i| m.oneof_decl[i as usize].name().to_string());
    let opts = f.options.as_ref();
    format!(
        "name={} number={} type={:?} label={:?} type_name={:?} oneof={:?} proto3_optional={:?} \
         json_name={:?} packed={:?} deprecated={:?} default={:?}",
        f.name(),
        f.number(),
        Type::try_from(f.r#type.unwrap_or_default()),
        Label::try_from(f.label.unwrap_or_default()),
        f.type_name,
        oneof,
        f.proto3_optional,
        f.json_name,
        opts.and_then(|o| o.packed),
        opts.and_then(|o| o.deprecated),
        f.default_value,
    )
}

fn compare(ours: &Flat, etcd: &Flat) -> Vec<String> {
    let mut diffs = Vec::new();
    diffs.extend(key_diff("message", &ours.messages, &etcd.messages));
    diffs.extend(key_diff("enum", &ours.enums, &etcd.enums));
    diffs.extend(key_diff("service", &ours.services, &etcd.services));

    for (name, e_msg) in &etcd.messages {
        let Some(o_msg) = ours.messages.get(name) else {
            continue;
        };
        let by_num = |m: &DescriptorProto| -> BTreeMap<i32, String> {
            m.field
                .iter()
                .map(|f| (f.number(), field_sig(m, f)))
                .collect()
        };
        let (o_fields, e_fields) = (by_num(o_msg), by_num(e_msg));
        if o_fields.len() != o_msg.field.len() {
            diffs.push(format!("message {name}: duplicate field numbers in ours"));
        }
        for (num, e_sig) in &e_fields {
            match o_fields.get(num) {
                None => diffs.push(format!(
                    "message {name} field #{num}: missing in ours ({e_sig})"
                )),
                Some(o_sig) if o_sig != e_sig => diffs.push(format!(
                    "message {name} field #{num}:\n  etcd: {e_sig}\n  ours: {o_sig}"
                )),
                Some(_) => {}
            }
        }
        for (num, o_sig) in &o_fields {
            if !e_fields.contains_key(num) {
                diffs.push(format!(
                    "message {name} field #{num}: not in etcd ({o_sig})"
                ));
            }
        }
        let oneofs = |m: &DescriptorProto| -> Vec<String> {
            m.oneof_decl.iter().map(|o| o.name().to_string()).collect()
        };
        if oneofs(o_msg) != oneofs(e_msg) {
            diffs.push(format!(
                "message {name}: oneofs etcd={:?} ours={:?}",
                oneofs(e_msg),
                oneofs(o_msg)
            ));
        }
        let ranges = |m: &DescriptorProto| -> Vec<(i32, i32)> {
            m.reserved_range
                .iter()
                .map(|r| (r.start(), r.end()))
                .collect()
        };
        if ranges(o_msg) != ranges(e_msg) || o_msg.reserved_name != e_msg.reserved_name {
            diffs.push(format!("message {name}: reserved ranges/names differ"));
        }
        let map_entry = |m: &DescriptorProto| m.options.as_ref().and_then(|o| o.map_entry);
        if map_entry(o_msg) != map_entry(e_msg) {
            diffs.push(format!("message {name}: map_entry differs"));
        }
    }

    for (name, e_enum) in &etcd.enums {
        let Some(o_enum) = ours.enums.get(name) else {
            continue;
        };
        let vals = |e: &EnumDescriptorProto| -> Vec<(String, i32)> {
            e.value
                .iter()
                .map(|v| (v.name().to_string(), v.number()))
                .collect()
        };
        if vals(o_enum) != vals(e_enum) {
            diffs.push(format!(
                "enum {name}:\n  etcd: {:?}\n  ours: {:?}",
                vals(e_enum),
                vals(o_enum)
            ));
        }
        let alias = |e: &EnumDescriptorProto| e.options.as_ref().and_then(|o| o.allow_alias);
        if alias(o_enum) != alias(e_enum) {
            diffs.push(format!("enum {name}: allow_alias differs"));
        }
    }

    for (svc, e_methods) in &etcd.services {
        let Some(o_methods) = ours.services.get(svc) else {
            continue;
        };
        // Method order matters for nothing on the wire, but names must match.
        for d in key_diff(&format!("service {svc} method"), o_methods, e_methods) {
            diffs.push(d);
        }
        for (m, e_sig) in e_methods {
            if let Some(o_sig) = o_methods.get(m) {
                if o_sig != e_sig {
                    diffs.push(format!(
                        "rpc {svc}/{m}:\n  etcd: {e_sig:?}\n  ours: {o_sig:?}"
                    ));
                }
            }
        }
    }
    diffs
}

fn assert_wire_compatible(real_imports: bool) {
    let (etcd_fds, _) = compile_etcd(real_imports);
    let etcd = flatten(&etcd_fds);
    let ours = flatten(&ours());

    // Guard against a vacuous pass (e.g. packages filtered away).
    assert!(
        etcd.messages.len() >= 100,
        "etcd: only {} messages",
        etcd.messages.len()
    );
    assert_eq!(
        etcd.services.len(),
        8,
        "etcd services: {:?}",
        etcd.services.keys()
    );
    let n_methods: usize = etcd.services.values().map(BTreeMap::len).sum();
    assert_eq!(n_methods, 48, "etcd method count");

    let diffs = compare(&ours, &etcd);
    assert!(
        diffs.is_empty(),
        "{} wire difference(s) between proto/etcd and etcd {ETCD_VERSION}:\n{}",
        diffs.len(),
        diffs.join("\n")
    );
    eprintln!(
        "wire-compatible: {} messages, {} enums, {} services / {n_methods} methods",
        etcd.messages.len(),
        etcd.enums.len(),
        etcd.services.len()
    );
}

// ---------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------

/// etcd's originals compiled with their real imports from the module cache
/// (stubs only for imports the cache lacks).
#[test]
fn etcd_descriptors_match() {
    assert_wire_compatible(true);
}

/// Same check with the stub gogo/google.api imports, so the fallback works.
#[test]
fn etcd_with_stub_imports() {
    assert_wire_compatible(false);
}

/// The comparison must notice a changed field (guards the checker itself).
#[test]
fn checker_detects_a_changed_field() {
    let (etcd_fds, _) = compile_etcd(false);
    let etcd = flatten(&etcd_fds);
    let mut tampered = ours();
    let rr = tampered
        .file
        .iter_mut()
        .flat_map(|f| f.message_type.iter_mut())
        .find(|m| m.name() == "RangeRequest")
        .unwrap();
    rr.field
        .iter_mut()
        .find(|f| f.name() == "limit")
        .unwrap()
        .number = Some(33);
    let diffs = compare(&flatten(&tampered), &etcd);
    assert!(
        diffs
            .iter()
            .any(|d| d.contains(".etcdserverpb.RangeRequest field #3")),
        "{diffs:?}"
    );
}

/// Generated gRPC paths are etcd's.
#[test]
fn grpc_service_names() {
    use proto::etcdserverpb::*;
    assert_eq!(kv_server::SERVICE_NAME, "etcdserverpb.KV");
    assert_eq!(watch_server::SERVICE_NAME, "etcdserverpb.Watch");
    assert_eq!(lease_server::SERVICE_NAME, "etcdserverpb.Lease");
    assert_eq!(cluster_server::SERVICE_NAME, "etcdserverpb.Cluster");
    assert_eq!(maintenance_server::SERVICE_NAME, "etcdserverpb.Maintenance");
    assert_eq!(auth_server::SERVICE_NAME, "etcdserverpb.Auth");
    assert_eq!(
        proto::v3electionpb::election_server::SERVICE_NAME,
        "v3electionpb.Election"
    );
    assert_eq!(proto::v3lockpb::lock_server::SERVICE_NAME, "v3lockpb.Lock");
}

/// Bytes encoded by our prost types decode under etcd's own descriptors into
/// the expected fields, and re-encode to the same bytes.
#[test]
fn encoded_messages_round_trip_through_etcd_descriptors() {
    use proto::etcdserverpb::{
        compare, request_op, Compare, PutRequest, RangeRequest, RequestOp, TxnRequest,
    };
    let (_, pool) = compile_etcd(false);

    let txn = TxnRequest {
        compare: vec![Compare {
            result: compare::CompareResult::Greater as i32,
            target: compare::CompareTarget::Mod as i32,
            key: "k".into(),
            range_end: "\0".into(),
            target_union: Some(compare::TargetUnion::ModRevision(7)),
        }],
        success: vec![RequestOp {
            request: Some(request_op::Request::RequestPut(PutRequest {
                key: "k".into(),
                value: vec![0u8, 255, 1].into(),
                lease: 0x1234_5678_9abc,
                prev_kv: true,
                ..Default::default()
            })),
        }],
        failure: vec![RequestOp {
            request: Some(request_op::Request::RequestRange(RangeRequest {
                key: "a".into(),
                range_end: "b".into(),
                limit: 10,
                revision: -1,
                sort_order: 2,
                sort_target: 4,
                max_create_revision: 99,
                ..Default::default()
            })),
        }],
    };
    let bytes = txn.encode_to_vec();
    let desc = pool
        .get_message_by_name("etcdserverpb.TxnRequest")
        .expect("etcd TxnRequest");
    let dynamic = DynamicMessage::decode(desc, bytes.as_slice()).unwrap();
    let text = dynamic.to_string();
    for needle in [
        "result:GREATER",
        "target:MOD",
        "mod_revision:7",
        r#"range_end:"\000""#,
        "lease:20015998343868",
        "sort_order:DESCEND",
        "sort_target:VALUE",
        "max_create_revision:99",
    ] {
        assert!(text.contains(needle), "{needle:?} not in {text}");
    }
    assert_eq!(dynamic.encode_to_vec(), bytes);
    assert_eq!(
        TxnRequest::decode(dynamic.encode_to_vec().as_slice()).unwrap(),
        txn
    );
}

/// Election messages (which embed etcdserverpb and mvccpb types across packages) decode under
/// etcd's own descriptors and re-encode to the same bytes.
#[test]
fn election_and_lock_messages_round_trip_through_etcd_descriptors() {
    use proto::etcdserverpb::ResponseHeader;
    use proto::mvccpb::KeyValue;
    use proto::v3electionpb::{CampaignResponse, LeaderKey, LeaderResponse};
    use proto::v3lockpb::LockRequest;
    let (_, pool) = compile_etcd(false);
    let header = Some(ResponseHeader {
        cluster_id: 1,
        member_id: 2,
        revision: 3,
        raft_term: 4,
    });
    let campaign = CampaignResponse {
        header,
        leader: Some(LeaderKey {
            name: "e".into(),
            key: "e/694d7a".into(),
            rev: 17,
            lease: 0x694d_7a00,
        }),
    }
    .encode_to_vec();
    let leader = LeaderResponse {
        header,
        kv: Some(KeyValue {
            key: "e/694d7a".into(),
            create_revision: 17,
            value: "v".into(),
            ..Default::default()
        }),
    }
    .encode_to_vec();
    let lock = LockRequest {
        name: "l".into(),
        lease: 9,
    }
    .encode_to_vec();
    for (name, bytes, needles) in [
        (
            "v3electionpb.CampaignResponse",
            &campaign,
            &["revision:3", "rev:17", r#"key:"e/694d7a""#][..],
        ),
        (
            "v3electionpb.LeaderResponse",
            &leader,
            &["create_revision:17", r#"value:"v""#][..],
        ),
        ("v3lockpb.LockRequest", &lock, &["lease:9"][..]),
    ] {
        let desc = pool.get_message_by_name(name).expect(name);
        let dynamic = DynamicMessage::decode(desc, bytes.as_slice()).unwrap();
        let text = dynamic.to_string();
        for needle in needles {
            assert!(text.contains(needle), "{name}: {needle:?} not in {text}");
        }
        assert_eq!(&dynamic.encode_to_vec(), bytes, "{name}");
    }
}
