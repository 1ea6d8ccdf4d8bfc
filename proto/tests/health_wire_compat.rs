//! `grpc.health.v1` against grpc-go's own compiled descriptor: grpc-go v1.59.0 (the version
//! etcd v3.5.17 is built with) embeds `health.proto`'s FileDescriptorProto as a byte literal
//! in `health/grpc_health_v1/health.pb.go`. The test reads it from the Go module cache
//! (downloading the module if absent) and compares messages, fields, enums and methods with
//! ours. A missing source fails the test: it never passes vacuously.

use std::path::PathBuf;
use std::process::Command;

use prost::Message;
use prost_types::{FileDescriptorProto, FileDescriptorSet};

const GRPC_MODULE: &str = "google.golang.org/grpc@v1.59.0";

fn grpc_go_health_pb() -> String {
    let out = Command::new("go")
        .args(["mod", "download", "-json", GRPC_MODULE])
        .current_dir(std::env::temp_dir())
        .env("GOFLAGS", "")
        .output()
        .expect("running `go mod download` (Go is needed for this test)");
    let json = String::from_utf8_lossy(&out.stdout);
    let dir = json
        .lines()
        .find_map(|l| l.trim().strip_prefix("\"Dir\": \""))
        .map(|d| PathBuf::from(d.trim_end_matches("\",")))
        .unwrap_or_else(|| panic!("no module dir for {GRPC_MODULE}: {json}"));
    std::fs::read_to_string(dir.join("health/grpc_health_v1/health.pb.go"))
        .expect("reading grpc-go's health.pb.go")
}

/// The bytes of `var file_grpc_health_v1_health_proto_rawDesc = []byte{ 0x0a, ... }`.
fn raw_descriptor(go: &str) -> Vec<u8> {
    let start = go
        .find("file_grpc_health_v1_health_proto_rawDesc = []byte{")
        .expect("the raw descriptor literal");
    let body = &go[start..];
    let body = &body[body.find('{').unwrap() + 1..body.find('}').unwrap()];
    body.split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(|t| u8::from_str_radix(t.trim_start_matches("0x"), 16).expect("a hex byte"))
        .collect()
}

fn ours() -> FileDescriptorProto {
    FileDescriptorSet::decode(proto::FILE_DESCRIPTOR_SET)
        .unwrap()
        .file
        .into_iter()
        .find(|f| f.package() == "grpc.health.v1")
        .expect("grpc.health.v1 in FILE_DESCRIPTOR_SET")
}

/// Everything of a file that reaches the wire or the generated API, as text lines.
fn shape(f: &FileDescriptorProto) -> Vec<String> {
    let mut lines = vec![
        format!("package {}", f.package()),
        format!("syntax {}", f.syntax()),
    ];
    for m in &f.message_type {
        for field in &m.field {
            lines.push(format!(
                "message {} field {} = {} type {:?} label {:?} type_name {:?} json {:?}",
                m.name(),
                field.name(),
                field.number(),
                field.r#type(),
                field.label(),
                field.type_name,
                field.json_name
            ));
        }
        for e in &m.enum_type {
            for v in &e.value {
                lines.push(format!(
                    "enum {}.{} {} = {}",
                    m.name(),
                    e.name(),
                    v.name(),
                    v.number()
                ));
            }
        }
    }
    for s in &f.service {
        for method in &s.method {
            lines.push(format!(
                "service {} rpc {}({}{}) returns ({}{})",
                s.name(),
                method.name(),
                if method.client_streaming() {
                    "stream "
                } else {
                    ""
                },
                method.input_type(),
                if method.server_streaming() {
                    "stream "
                } else {
                    ""
                },
                method.output_type()
            ));
        }
    }
    lines.sort();
    lines
}

#[test]
fn health_proto_matches_grpc_go() {
    let theirs = FileDescriptorProto::decode(raw_descriptor(&grpc_go_health_pb()).as_slice())
        .expect("grpc-go's descriptor decodes");
    let (a, b) = (shape(&ours()), shape(&theirs));
    assert!(b.len() >= 8, "grpc-go's descriptor looks empty: {b:?}");
    assert_eq!(a, b);
}
