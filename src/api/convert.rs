//! Conversions between the protobuf messages clients send and the plain types the shards and
//! the coordinator speak. The only place where both worlds meet.

use proto::etcdserverpb as pb;
use proto::etcdserverpb::compare::{
    CompareResult as PbResult, CompareTarget as PbTarget, TargetUnion,
};
use proto::etcdserverpb::range_request::{SortOrder as PbOrder, SortTarget as PbSortTarget};
use proto::etcdserverpb::request_op::Request as PbOp;
use proto::etcdserverpb::response_op::Response as PbOpResponse;
use proto::mvccpb;
use shards as s;

use crate::error::EtcdError;

pub fn kv_out(kv: s::KeyValue) -> mvccpb::KeyValue {
    mvccpb::KeyValue {
        key: kv.key,
        create_revision: kv.create_revision,
        mod_revision: kv.mod_revision,
        version: kv.version,
        value: kv.value,
        lease: kv.lease,
    }
}

pub fn range_in(r: pb::RangeRequest) -> Result<s::RangeRequest, EtcdError> {
    // etcd reports a missing key before a bad sort option.
    if r.key.is_empty() {
        return Err(EtcdError::EmptyKey);
    }
    let sort_order = match PbOrder::try_from(r.sort_order) {
        Ok(PbOrder::None) => s::SortOrder::None,
        Ok(PbOrder::Ascend) => s::SortOrder::Ascend,
        Ok(PbOrder::Descend) => s::SortOrder::Descend,
        Err(_) => return Err(EtcdError::InvalidSortOption),
    };
    let sort_target = match PbSortTarget::try_from(r.sort_target) {
        Ok(PbSortTarget::Key) => s::SortTarget::Key,
        Ok(PbSortTarget::Version) => s::SortTarget::Version,
        Ok(PbSortTarget::Create) => s::SortTarget::Create,
        Ok(PbSortTarget::Mod) => s::SortTarget::Mod,
        Ok(PbSortTarget::Value) => s::SortTarget::Value,
        Err(_) => return Err(EtcdError::InvalidSortOption),
    };
    Ok(s::RangeRequest {
        key: r.key,
        range_end: r.range_end,
        limit: r.limit,
        revision: r.revision,
        sort_order,
        sort_target,
        keys_only: r.keys_only,
        count_only: r.count_only,
        min_mod_revision: r.min_mod_revision,
        max_mod_revision: r.max_mod_revision,
        min_create_revision: r.min_create_revision,
        max_create_revision: r.max_create_revision,
    })
}

pub fn range_out(r: s::RangeResponse) -> (Vec<mvccpb::KeyValue>, bool, i64) {
    (r.kvs.into_iter().map(kv_out).collect(), r.more, r.count)
}

pub fn put_in(p: pb::PutRequest) -> Result<s::PutRequest, EtcdError> {
    if p.key.is_empty() {
        return Err(EtcdError::EmptyKey);
    }
    if p.ignore_value && !p.value.is_empty() {
        return Err(EtcdError::ValueProvided);
    }
    if p.ignore_lease && p.lease != 0 {
        return Err(EtcdError::LeaseProvided);
    }
    Ok(s::PutRequest {
        key: p.key,
        value: p.value,
        lease: p.lease,
        prev_kv: p.prev_kv,
        ignore_value: p.ignore_value,
        ignore_lease: p.ignore_lease,
    })
}

pub fn delete_in(d: pb::DeleteRangeRequest) -> Result<s::DeleteRangeRequest, EtcdError> {
    if d.key.is_empty() {
        return Err(EtcdError::EmptyKey);
    }
    Ok(s::DeleteRangeRequest {
        key: d.key,
        range_end: d.range_end,
        prev_kv: d.prev_kv,
    })
}

fn compare_in(c: pb::Compare) -> Result<s::Compare, EtcdError> {
    if c.key.is_empty() {
        return Err(EtcdError::EmptyKey);
    }
    // etcd reads the operand that matches `target`; a union holding another field reads as
    // that field's zero value.
    let int =
        |want: fn(&TargetUnion) -> Option<i64>| c.target_union.as_ref().and_then(want).unwrap_or(0);
    let target = match PbTarget::try_from(c.target).unwrap_or(PbTarget::Version) {
        PbTarget::Version => s::CompareTarget::Version(int(|u| match u {
            TargetUnion::Version(v) => Some(*v),
            _ => None,
        })),
        PbTarget::Create => s::CompareTarget::Create(int(|u| match u {
            TargetUnion::CreateRevision(v) => Some(*v),
            _ => None,
        })),
        PbTarget::Mod => s::CompareTarget::Mod(int(|u| match u {
            TargetUnion::ModRevision(v) => Some(*v),
            _ => None,
        })),
        PbTarget::Lease => s::CompareTarget::Lease(int(|u| match u {
            TargetUnion::Lease(v) => Some(*v),
            _ => None,
        })),
        PbTarget::Value => s::CompareTarget::Value(match &c.target_union {
            Some(TargetUnion::Value(v)) => v.clone(),
            _ => bytes::Bytes::new(),
        }),
    };
    let result = match PbResult::try_from(c.result).unwrap_or(PbResult::Equal) {
        PbResult::Equal => s::CompareResult::Equal,
        PbResult::Greater => s::CompareResult::Greater,
        PbResult::Less => s::CompareResult::Less,
        PbResult::NotEqual => s::CompareResult::NotEqual,
    };
    Ok(s::Compare {
        key: c.key,
        range_end: c.range_end,
        result,
        target,
    })
}

fn op_in(op: pb::RequestOp, max_ops: usize) -> Result<s::RequestOp, EtcdError> {
    Ok(match op.request {
        Some(PbOp::RequestRange(r)) => s::RequestOp::Range(range_in(r)?),
        Some(PbOp::RequestPut(p)) => s::RequestOp::Put(put_in(p)?),
        Some(PbOp::RequestDeleteRange(d)) => s::RequestOp::DeleteRange(delete_in(d)?),
        Some(PbOp::RequestTxn(t)) => s::RequestOp::Txn(txn_in_inner(t, max_ops)?),
        // etcd's checkRequestOp refuses an op with no request in it.
        None => return Err(EtcdError::KeyNotFound),
    })
}

/// Converts and validates a txn as etcd's v3rpc layer does: op counts against `max_ops`
/// (nested txns get what the outer one leaves), empty keys, then duplicate writes per branch.
pub fn txn_in(t: pb::TxnRequest, max_ops: usize) -> Result<s::TxnRequest, EtcdError> {
    let txn = txn_in_inner(t, max_ops)?;
    check_intervals(&txn.success)?;
    check_intervals(&txn.failure)?;
    Ok(txn)
}

fn txn_in_inner(t: pb::TxnRequest, max_ops: usize) -> Result<s::TxnRequest, EtcdError> {
    let opc = t.compare.len().max(t.success.len()).max(t.failure.len());
    if opc > max_ops {
        return Err(EtcdError::TooManyOps);
    }
    let compare = t
        .compare
        .into_iter()
        .map(compare_in)
        .collect::<Result<Vec<_>, _>>()?;
    let inner_max = max_ops - opc;
    let success = t
        .success
        .into_iter()
        .map(|op| op_in(op, inner_max))
        .collect::<Result<Vec<_>, _>>()?;
    let failure = t
        .failure
        .into_iter()
        .map(|op| op_in(op, inner_max))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(s::TxnRequest {
        compare,
        success,
        failure,
    })
}

/// A deleted key range; `end == None` is a single key.
struct Interval<'a> {
    start: &'a [u8],
    end: Option<&'a [u8]>,
}

impl Interval<'_> {
    fn contains(&self, key: &[u8]) -> bool {
        // etcd v3.5 builds this check's intervals literally, so a from-key delete
        // (end "\0") covers no put: [start, "\0") is empty for any real key.
        match self.end {
            None => self.start == key,
            Some(end) => key >= self.start && key < end,
        }
    }
}

/// etcd's rule: within one branch (nested txns included), a key may be put at most once and
/// may not be both put and deleted; a nested txn's then/else branches may put the same key.
fn check_intervals(ops: &[s::RequestOp]) -> Result<(Vec<&[u8]>, Vec<Interval<'_>>), EtcdError> {
    let mut dels: Vec<Interval<'_>> = ops
        .iter()
        .filter_map(|op| match op {
            s::RequestOp::DeleteRange(d) => Some(Interval {
                start: &d.key,
                end: (!d.range_end.is_empty()).then_some(&d.range_end[..]),
            }),
            _ => None,
        })
        .collect();
    let mut puts: Vec<&[u8]> = Vec::new();
    for op in ops {
        let s::RequestOp::Txn(t) = op else { continue };
        let (puts_then, dels_then) = check_intervals(&t.success)?;
        let (puts_else, dels_else) = check_intervals(&t.failure)?;
        for k in &puts_then {
            if puts.contains(k) || dels.iter().any(|d| d.contains(k)) {
                return Err(EtcdError::DuplicateKey);
            }
            puts.push(k);
        }
        for k in &puts_else {
            if (puts.contains(k) && !puts_then.contains(k)) || dels.iter().any(|d| d.contains(k)) {
                return Err(EtcdError::DuplicateKey);
            }
            // A key both branches put counts once, as in etcd's set of puts.
            if !puts.contains(k) {
                puts.push(k);
            }
        }
        dels.extend(dels_then);
        dels.extend(dels_else);
    }
    for op in ops {
        let s::RequestOp::Put(p) = op else { continue };
        let k: &[u8] = &p.key;
        if puts.contains(&k) || dels.iter().any(|d| d.contains(k)) {
            return Err(EtcdError::DuplicateKey);
        }
        puts.push(k);
    }
    Ok((puts, dels))
}

pub fn txn_out(t: s::TxnResponse, header: &pb::ResponseHeader) -> pb::TxnResponse {
    // Inside a txn etcd fills only the revision of each op's header, and leaves the header of
    // a nested txn empty.
    let inner = pb::ResponseHeader {
        revision: header.revision,
        ..Default::default()
    };
    txn_out_with(t, Some(*header), &inner)
}

fn txn_out_with(
    t: s::TxnResponse,
    top: Option<pb::ResponseHeader>,
    inner: &pb::ResponseHeader,
) -> pb::TxnResponse {
    pb::TxnResponse {
        header: top,
        succeeded: t.succeeded,
        responses: t
            .responses
            .into_iter()
            .map(|r| pb::ResponseOp {
                response: Some(match r {
                    s::ResponseOp::Range(r) => {
                        let (kvs, more, count) = range_out(r);
                        PbOpResponse::ResponseRange(pb::RangeResponse {
                            header: Some(*inner),
                            kvs,
                            more,
                            count,
                        })
                    }
                    s::ResponseOp::Put(p) => PbOpResponse::ResponsePut(pb::PutResponse {
                        header: Some(*inner),
                        prev_kv: p.prev_kv.map(kv_out),
                    }),
                    s::ResponseOp::DeleteRange(d) => {
                        PbOpResponse::ResponseDeleteRange(pb::DeleteRangeResponse {
                            header: Some(*inner),
                            deleted: d.deleted,
                            prev_kvs: d.prev_kvs.into_iter().map(kv_out).collect(),
                        })
                    }
                    s::ResponseOp::Txn(t) => PbOpResponse::ResponseTxn(txn_out_with(
                        t,
                        Some(pb::ResponseHeader::default()),
                        inner,
                    )),
                }),
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn put(k: &'static str) -> pb::RequestOp {
        pb::RequestOp {
            request: Some(PbOp::RequestPut(pb::PutRequest {
                key: Bytes::from_static(k.as_bytes()),
                ..Default::default()
            })),
        }
    }

    fn del(k: &'static str, end: &'static str) -> pb::RequestOp {
        pb::RequestOp {
            request: Some(PbOp::RequestDeleteRange(pb::DeleteRangeRequest {
                key: Bytes::from_static(k.as_bytes()),
                range_end: Bytes::from_static(end.as_bytes()),
                ..Default::default()
            })),
        }
    }

    fn txn(success: Vec<pb::RequestOp>, failure: Vec<pb::RequestOp>) -> pb::TxnRequest {
        pb::TxnRequest {
            compare: vec![],
            success,
            failure,
        }
    }

    #[test]
    fn duplicate_and_overlapping_writes_are_refused() {
        let dup = |t| txn_in(t, 128).err();
        assert_eq!(
            dup(txn(vec![put("a"), put("a")], vec![])),
            Some(EtcdError::DuplicateKey)
        );
        assert_eq!(
            dup(txn(vec![put("b"), del("a", "c")], vec![])),
            Some(EtcdError::DuplicateKey)
        );
        // etcd v3.5 quirk: a from-key delete does not count as covering a put.
        assert_eq!(dup(txn(vec![put("z"), del("a", "\0")], vec![])), None);
        assert_eq!(
            dup(txn(vec![put("a")], vec![put("a")])),
            None,
            "different branches"
        );
        let nested = pb::RequestOp {
            request: Some(PbOp::RequestTxn(txn(vec![put("a")], vec![put("a")]))),
        };
        assert_eq!(dup(txn(vec![nested.clone()], vec![])), None);
        let twice = pb::RequestOp {
            request: Some(PbOp::RequestTxn(txn(vec![nested.clone()], vec![]))),
        };
        assert_eq!(dup(txn(vec![twice], vec![])), None, "nested two levels");
        assert_eq!(
            dup(txn(vec![nested, put("a")], vec![])),
            Some(EtcdError::DuplicateKey)
        );
    }

    #[test]
    fn op_counts_and_keys_are_checked() {
        let many: Vec<_> = (0..129).map(|_| put("x")).collect();
        assert_eq!(
            txn_in(txn(many, vec![]), 128).err(),
            Some(EtcdError::TooManyOps)
        );
        let empty = txn(vec![put("")], vec![]);
        assert_eq!(txn_in(empty, 128).err(), Some(EtcdError::EmptyKey));
    }
}
