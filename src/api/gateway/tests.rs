use super::*;

#[test]
fn routes_name_methods_of_the_compiled_protos() {
    let mut seen = std::collections::HashSet::new();
    for (service, paths) in ROUTES {
        let s = json::pool()
            .get_service_by_name(service)
            .unwrap_or_else(|| panic!("{service}"));
        for (path, method) in *paths {
            assert!(seen.insert(*path), "{path} twice");
            assert!(is_gateway_path(path));
            assert_eq!(route(path), Some((*service, *method)));
            assert!(
                s.methods().any(|m| m.name() == *method),
                "{service}/{method}"
            );
        }
    }
    // Every method of etcd's services is reachable (the Lease ones under two paths).
    let methods: usize = [
        "etcdserverpb.KV",
        "etcdserverpb.Watch",
        "etcdserverpb.Lease",
        "etcdserverpb.Cluster",
        "etcdserverpb.Maintenance",
        "etcdserverpb.Auth",
        "v3electionpb.Election",
        "v3lockpb.Lock",
    ]
    .iter()
    .map(|s| json::pool().get_service_by_name(s).unwrap().methods().len())
    .sum();
    assert_eq!(seen.len(), methods + 3);
}

#[test]
fn error_bodies_as_grpc_gateway_writes_them() {
    let s = Status::unknown(r#""leader" field must be provided"#);
    assert_eq!(
        String::from_utf8(error_body(&s)).unwrap(),
        r#"{"error":"\"leader\" field must be provided","code":2,"message":"\"leader\" field must be provided"}"#
    );
    assert_eq!(
        String::from_utf8(error_body(&Status::unavailable(""))).unwrap(),
        r#"{"code":14}"#
    );
    let (code, body) = stream_error(&Status::not_found("etcdserver: requested lease not found"));
    assert_eq!(code, StatusCode::NOT_FOUND);
    assert_eq!(
        body,
        r#"{"error":{"grpc_code":5,"http_code":404,"message":"etcdserver: requested lease not found","http_status":"Not Found"}}"#
    );
}

#[test]
fn http_status_per_code() {
    assert_eq!(http_status(Code::InvalidArgument), StatusCode::BAD_REQUEST);
    assert_eq!(
        http_status(Code::FailedPrecondition),
        StatusCode::BAD_REQUEST
    );
    assert_eq!(http_status(Code::Unauthenticated), StatusCode::UNAUTHORIZED);
    assert_eq!(
        http_status(Code::ResourceExhausted),
        StatusCode::TOO_MANY_REQUESTS
    );
    assert_eq!(http_status(Code::Cancelled), StatusCode::REQUEST_TIMEOUT);
    assert_eq!(
        http_status(Code::Unknown),
        StatusCode::INTERNAL_SERVER_ERROR
    );
}

#[test]
fn forwards_the_token_and_grpc_metadata_headers_only() {
    let mut h = HeaderMap::new();
    h.insert(header::AUTHORIZATION, HeaderValue::from_static("tok.1"));
    h.insert("grpc-metadata-hasleader", HeaderValue::from_static("true"));
    h.insert(header::ACCEPT, HeaderValue::from_static("*/*"));
    let md = forwarded_metadata(&h);
    assert_eq!(md.len(), 2);
    assert_eq!(md["authorization"], "tok.1");
    assert_eq!(md["hasleader"], "true");
}

#[test]
fn grpc_frames_round_trip() {
    let desc = json::pool()
        .get_message_by_name("etcdserverpb.RangeRequest")
        .unwrap();
    let v = serde_json::json!({"key": "Zm9v", "limit": 3});
    let m = json::read_message(&desc, &v).unwrap();
    let frame = grpc_frame(&m);
    assert_eq!(frame[0], 0);
    let len = u32::from_be_bytes([frame[1], frame[2], frame[3], frame[4]]) as usize;
    assert_eq!(len, frame.len() - 5);
    let back = <proto::etcdserverpb::RangeRequest as prost::Message>::decode(&frame[5..]).unwrap();
    assert_eq!(&back.key[..], b"foo");
    assert_eq!(back.limit, 3);
}
