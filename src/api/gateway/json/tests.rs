use prost::Message;
use proto::etcdserverpb as pb;
use proto::mvccpb;

use super::*;

fn desc(name: &str) -> MessageDescriptor {
    pool().get_message_by_name(name).unwrap()
}

/// `msg` as the gateway writes it.
fn to_json<M: Message>(name: &str, msg: &M) -> String {
    let m = DynamicMessage::decode(desc(name), msg.encode_to_vec().as_slice()).unwrap();
    let mut out = Vec::new();
    write_message(&mut out, &m);
    String::from_utf8(out).unwrap()
}

/// `json` read as a `name` message, then decoded as the prost type `M`.
fn from_json<M: Message + Default>(name: &str, json: &str) -> Result<M, String> {
    let v: Json = serde_json::from_str(json).unwrap();
    let m = read_message(&desc(name), &v)?;
    Ok(M::decode(m.encode_to_vec().as_slice()).unwrap())
}

fn header() -> pb::ResponseHeader {
    pb::ResponseHeader {
        cluster_id: 14841639068965178418,
        member_id: 10276657743932975437,
        revision: 1,
        raft_term: 2,
    }
}

#[test]
fn header_fields_in_declaration_order_with_64_bit_strings() {
    let out = to_json(
        "etcdserverpb.HashResponse",
        &pb::HashResponse {
            header: Some(header()),
            hash: 1084519789,
        },
    );
    assert_eq!(
        out,
        r#"{"header":{"cluster_id":"14841639068965178418","member_id":"10276657743932975437","revision":"1","raft_term":"2"},"hash":1084519789}"#
    );
}

#[test]
fn zero_values_and_empty_lists_are_left_out_but_set_messages_are_not() {
    let out = to_json(
        "etcdserverpb.RangeResponse",
        &pb::RangeResponse {
            header: Some(pb::ResponseHeader::default()),
            kvs: vec![],
            more: false,
            count: 0,
        },
    );
    assert_eq!(out, r#"{"header":{}}"#);
}

#[test]
fn kvs_bytes_as_base64_and_enum_zero_left_out() {
    let kv = mvccpb::KeyValue {
        key: "foo".into(),
        create_revision: 2,
        mod_revision: 2,
        version: 1,
        value: "bar".into(),
        lease: 0,
    };
    let out = to_json(
        "etcdserverpb.WatchResponse",
        &pb::WatchResponse {
            header: Some(pb::ResponseHeader {
                revision: 2,
                ..Default::default()
            }),
            watch_id: 0,
            events: vec![
                mvccpb::Event {
                    r#type: 0,
                    kv: Some(kv.clone()),
                    prev_kv: None,
                },
                mvccpb::Event {
                    r#type: 1,
                    kv: Some(kv),
                    prev_kv: None,
                },
            ],
            ..Default::default()
        },
    );
    assert_eq!(
        out,
        concat!(
            r#"{"header":{"revision":"2"},"events":["#,
            r#"{"kv":{"key":"Zm9v","create_revision":"2","mod_revision":"2","version":"1","value":"YmFy"}},"#,
            r#"{"type":"DELETE","kv":{"key":"Zm9v","create_revision":"2","mod_revision":"2","version":"1","value":"YmFy"}}]}"#
        )
    );
}

#[test]
fn txn_response_oneofs_under_proto_names() {
    let out = to_json(
        "etcdserverpb.TxnResponse",
        &pb::TxnResponse {
            header: Some(header()),
            succeeded: true,
            responses: vec![pb::ResponseOp {
                response: Some(pb::response_op::Response::ResponsePut(pb::PutResponse {
                    header: Some(pb::ResponseHeader {
                        revision: 2,
                        ..Default::default()
                    }),
                    prev_kv: None,
                })),
            }],
        },
    );
    assert!(
        out.ends_with(
            r#""succeeded":true,"responses":[{"response_put":{"header":{"revision":"2"}}}]}"#
        ),
        "{out}"
    );
}

#[test]
fn lease_names_as_declared() {
    let out = to_json(
        "etcdserverpb.LeaseGrantResponse",
        &pb::LeaseGrantResponse {
            header: None,
            id: 7587862072907470088,
            ttl: 20,
            error: String::new(),
        },
    );
    assert_eq!(out, r#"{"ID":"7587862072907470088","TTL":"20"}"#);
    let out = to_json(
        "etcdserverpb.LeaseTimeToLiveResponse",
        &pb::LeaseTimeToLiveResponse {
            header: None,
            id: 1,
            ttl: 19,
            granted_ttl: 20,
            keys: vec!["foo".into()],
        },
    );
    assert_eq!(
        out,
        r#"{"ID":"1","TTL":"19","grantedTTL":"20","keys":["Zm9v"]}"#
    );
}

#[test]
fn a_set_oneof_member_is_written_even_when_zero() {
    let out = to_json(
        "etcdserverpb.Compare",
        &pb::Compare {
            result: 0,
            target: 1,
            key: "foo".into(),
            range_end: "fop".into(),
            target_union: Some(pb::compare::TargetUnion::CreateRevision(0)),
        },
    );
    // The oneof sits where its first member is declared, before range_end.
    assert_eq!(
        out,
        r#"{"target":"CREATE","key":"Zm9v","create_revision":"0","range_end":"Zm9w"}"#
    );
}

#[test]
fn strings_escaped_as_go_does() {
    let mut out = Vec::new();
    write_str(&mut out, "a\"b\\c\n\r\t\u{8}\u{c}\u{1}<>&\u{2028}\u{2029}é");
    assert_eq!(
        String::from_utf8(out).unwrap(),
        r#""a\"b\\c\n\r\t\b\f\u0001\u003c\u003e\u0026\u2028\u2029é""#
    );
}

#[test]
fn reads_proto_and_camel_names_quoted_or_bare_integers() {
    let p: pb::PutRequest = from_json(
        "etcdserverpb.PutRequest",
        r#"{"key":"Zm9v","value":"YmFy","lease":"12","prev_kv":true,"ignoreValue":true}"#,
    )
    .unwrap();
    assert_eq!(&p.key[..], b"foo");
    assert_eq!(&p.value[..], b"bar");
    assert_eq!(p.lease, 12);
    assert!(p.prev_kv && p.ignore_value && !p.ignore_lease);

    // Both spellings present: the lowerCamel one wins, as in jsonpb.
    let r: pb::RangeRequest = from_json(
        "etcdserverpb.RangeRequest",
        r#"{"key":"YQ==","range_end":"Yg==","rangeEnd":"Yw==","limit":5,"sort_order":"DESCEND","sortTarget":2}"#,
    )
    .unwrap();
    assert_eq!(&r.range_end[..], b"c");
    assert_eq!(r.limit, 5);
    assert_eq!(r.sort_order, 2);
    assert_eq!(r.sort_target, 2);
}

#[test]
fn oneofs_nested_messages_nulls_and_unknown_names() {
    // What etcd's e2e test sends (Go's JSONPb without OrigName).
    let t: pb::TxnRequest = from_json(
        "etcdserverpb.TxnRequest",
        r#"{"compare":[{"target":"CREATE","key":"Zm9v","createRevision":"0"}],"success":[{"requestPut":{"key":"Zm9v","value":"YmFy"}}]}"#,
    )
    .unwrap();
    assert_eq!(
        t.compare[0].target_union,
        Some(pb::compare::TargetUnion::CreateRevision(0))
    );
    assert!(matches!(
        t.success[0].request,
        Some(pb::request_op::Request::RequestPut(_))
    ));
    // Go struct names are not proto names: ignored, leaving the union and the op empty.
    let t: pb::TxnRequest = from_json(
        "etcdserverpb.TxnRequest",
        r#"{"compare":[{"result":0,"target":1,"key":"Zm9v","TargetUnion":null}],"success":[{"Request":{"RequestPut":{"key":"Zm9v","value":"YmFy"}}}]}"#,
    )
    .unwrap();
    assert_eq!(t.compare[0].target, 1);
    assert_eq!(t.compare[0].target_union, None);
    assert_eq!(t.success.len(), 1);
    assert_eq!(t.success[0].request, None);

    let w: pb::WatchRequest = from_json(
        "etcdserverpb.WatchRequest",
        r#"{"create_request" : {"key":"Zm9v","start_revision":1,"prev_kv":null}}"#,
    )
    .unwrap();
    let Some(pb::watch_request::RequestUnion::CreateRequest(c)) = w.request_union else {
        panic!("{w:?}")
    };
    assert_eq!(c.start_revision, 1);
    let empty: pb::RangeRequest = from_json("etcdserverpb.RangeRequest", "null").unwrap();
    assert_eq!(empty, pb::RangeRequest::default());
}

#[test]
fn errors_worded_as_go_words_them() {
    let err =
        |json: &str| from_json::<pb::PutRequest>("etcdserverpb.PutRequest", json).unwrap_err();
    assert_eq!(
        err(r#"{"key":5}"#),
        "json: cannot unmarshal number into Go value of type []uint8"
    );
    assert_eq!(
        err(r#"{"lease":1.5}"#),
        "json: cannot unmarshal number 1.5 into Go value of type int64"
    );
    assert_eq!(
        err(r#"{"prev_kv":"true"}"#),
        "json: cannot unmarshal string into Go value of type bool"
    );
    assert_eq!(
        err(r#"{"key":"Zm9"}"#),
        "illegal base64 data at input byte 3"
    );
    assert_eq!(
        err("[]"),
        "json: cannot unmarshal array into Go value of type map[string]json.RawMessage"
    );
    let e = from_json::<pb::RangeRequest>("etcdserverpb.RangeRequest", r#"{"sort_order":"UP"}"#)
        .unwrap_err();
    assert_eq!(
        e,
        r#"unknown value "\"UP\"" for enum etcdserverpb.RangeRequest.SortOrder"#
    );
    let e = from_json::<pb::LeaseGrantRequest>("etcdserverpb.LeaseGrantRequest", r#"{"TTL":"x"}"#);
    assert!(e.is_err());
    let e = from_json::<pb::WatchCancelRequest>(
        "etcdserverpb.WatchCancelRequest",
        r#"{"watch_id":"9999999999999999999"}"#,
    );
    assert!(e.is_err());
}

#[test]
fn no_maps_or_floats() {
    // The writer leaves maps and floats to simple forms: etcd's API has none.
    for m in pool().all_messages() {
        for f in m.fields() {
            assert!(!f.is_map(), "{}", f.full_name());
            assert!(
                !matches!(f.kind(), Kind::Float | Kind::Double),
                "{}",
                f.full_name()
            );
        }
    }
}
