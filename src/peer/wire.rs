//! The peer protocol's bytes, as plain functions without sockets: the connection preamble,
//! length-prefixed frames and their size limits, raft batches, and the listener's handshake
//! checks. docs/peer-protocol.md draws the layout.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use prost::Message as _;
use protobuf::Message as _;
use raft::eraftpb::Message;

pub use proto::rusdpeer as pb;

/// The first bytes a dialer sends, before any frame. Its first byte is not 0x16 (a TLS
/// handshake record), so plaintext and TLS can share a port, and anything that is not a rusd
/// peer (an etcd peer, an HTTP client) is told apart at once.
pub const PREAMBLE: &[u8; 8] = b"rusdpeer";

/// The protocol this build speaks; a handshake with another version is refused.
pub const PROTOCOL_VERSION: u32 = 1;

/// The length prefix of every frame: a big-endian u32 counting the payload bytes after it.
pub const FRAME_HEADER_BYTES: usize = 4;

/// The largest handshake or handshake answer. They hold a few IDs and the sender's peer URLs;
/// a larger claim before the dialer proved it is a member is refused without reading it.
pub const HANDSHAKE_FRAME_BYTES_MAX: usize = 64 * 1024;

/// The largest frame after the handshake, unless the configuration raises it
/// (`PeerOptions::frame_bytes_max`). A frame holds one raft batch (the writer stops adding
/// messages at [`BATCH_BYTES_MAX`], but always sends at least one), one request or response,
/// or one snapshot piece. The largest raft message carries one entry of at most
/// `--max-request-bytes` (1.5 MiB by default; etcd warns above 10 MiB), so 64 MiB leaves six
/// times the size etcd warns about, while a peer can never make us hold more than this for
/// one frame (and memory grows only as the bytes actually arrive). A frame claiming more is a
/// protocol error that closes the connection.
pub const FRAME_BYTES_MAX: usize = 64 << 20;

/// A raft batch stops growing at this many bytes of messages; a single larger message still
/// goes alone. Small enough that a batch never delays the next heartbeat by much on a slow
/// link, large enough that appends of 1 MiB (raft's `max_size_per_msg`) travel a few at a time.
pub const BATCH_BYTES_MAX: usize = 4 << 20;

/// The largest chunk of a snapshot frame; the sender splits bigger pieces.
pub const SNAPSHOT_CHUNK_BYTES_MAX: usize = 1 << 20;

/// Bytes a frame adds around its content (oneof tag and length, field tags and lengths), as an
/// upper bound used when checking that a message fits in a frame.
pub const FRAME_OVERHEAD_BYTES_MAX: usize = 32;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("not a rusd peer connection (the first bytes are not the rusd peer preamble)")]
    BadPreamble,
    #[error("a frame claims {claimed} bytes, more than the limit of {limit} bytes")]
    FrameTooLarge { claimed: usize, limit: usize },
    #[error("the connection ended inside a frame ({have} of {need} bytes received)")]
    Truncated { have: usize, need: usize },
    #[error("undecodable {what}: {detail}")]
    Decode { what: &'static str, detail: String },
    #[error("unexpected {frame} frame on a {kind} connection")]
    Unexpected {
        frame: &'static str,
        kind: ConnectionKind,
    },
}

/// What kind of traffic a connection carries (`pb::ConnectionKind` without its "unspecified").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ConnectionKind {
    Raft,
    Request,
    Snapshot,
}

impl ConnectionKind {
    pub fn to_pb(self) -> pb::ConnectionKind {
        match self {
            ConnectionKind::Raft => pb::ConnectionKind::Raft,
            ConnectionKind::Request => pb::ConnectionKind::Request,
            ConnectionKind::Snapshot => pb::ConnectionKind::Snapshot,
        }
    }

    pub fn from_pb(value: i32) -> Option<ConnectionKind> {
        match pb::ConnectionKind::try_from(value).ok()? {
            pb::ConnectionKind::Raft => Some(ConnectionKind::Raft),
            pb::ConnectionKind::Request => Some(ConnectionKind::Request),
            pb::ConnectionKind::Snapshot => Some(ConnectionKind::Snapshot),
            pb::ConnectionKind::Unspecified => None,
        }
    }
}

impl std::fmt::Display for ConnectionKind {
    /// etcd's stream type names where one exists (the raft connection is etcd's
    /// "stream Message"), so log lines read the same.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ConnectionKind::Raft => "stream Message",
            ConnectionKind::Request => "request",
            ConnectionKind::Snapshot => "snapshot",
        })
    }
}

/// Checks the preamble a dialer sent.
pub fn check_preamble(bytes: &[u8]) -> Result<(), WireError> {
    if bytes == PREAMBLE {
        Ok(())
    } else {
        Err(WireError::BadPreamble)
    }
}

/// Appends one frame holding `message` to `out`. Fails, appending nothing, when the encoded
/// message exceeds `limit`: the receiver would refuse it.
pub fn encode_frame<M: prost::Message>(
    message: &M,
    limit: usize,
    out: &mut BytesMut,
) -> Result<(), WireError> {
    let length = message.encoded_len();
    if length > limit || length > u32::MAX as usize {
        return Err(WireError::FrameTooLarge {
            claimed: length,
            limit,
        });
    }
    out.reserve(FRAME_HEADER_BYTES + length);
    out.put_u32(length as u32);
    message
        .encode(out)
        .expect("the buffer was reserved for the whole message");
    Ok(())
}

/// Splits frames off the front of a receive buffer.
#[derive(Debug, Clone, Copy)]
pub struct FrameDecoder {
    /// The largest payload accepted.
    pub limit: usize,
}

impl FrameDecoder {
    pub fn new(limit: usize) -> FrameDecoder {
        FrameDecoder { limit }
    }

    /// Takes the first complete frame's payload off `buffer`. `Ok(None)`: more bytes are
    /// needed. A header claiming more than the limit is an error before any payload byte is
    /// stored, so a peer cannot make us allocate what it claims.
    pub fn decode(&self, buffer: &mut BytesMut) -> Result<Option<Bytes>, WireError> {
        let Some(need) = self.frame_bytes(buffer)? else {
            return Ok(None);
        };
        if buffer.len() < need {
            return Ok(None);
        }
        buffer.advance(FRAME_HEADER_BYTES);
        Ok(Some(buffer.split_to(need - FRAME_HEADER_BYTES).freeze()))
    }

    /// The whole size (header and payload) of the frame at the front of `buffer`, once its
    /// header is there.
    pub fn frame_bytes(&self, buffer: &[u8]) -> Result<Option<usize>, WireError> {
        if buffer.len() < FRAME_HEADER_BYTES {
            return Ok(None);
        }
        let claimed = u32::from_be_bytes(buffer[..4].try_into().expect("four bytes")) as usize;
        if claimed > self.limit {
            return Err(WireError::FrameTooLarge {
                claimed,
                limit: self.limit,
            });
        }
        Ok(Some(FRAME_HEADER_BYTES + claimed))
    }

    /// The error for a connection that ended with `buffer` still holding part of a frame, or
    /// `Ok` when it ended cleanly between frames.
    pub fn check_end(&self, buffer: &[u8]) -> Result<(), WireError> {
        if buffer.is_empty() {
            return Ok(());
        }
        let need = self
            .frame_bytes(buffer)?
            .unwrap_or(FRAME_HEADER_BYTES)
            .max(buffer.len() + 1);
        Err(WireError::Truncated {
            have: buffer.len(),
            need,
        })
    }
}

pub fn decode_handshake(payload: Bytes) -> Result<pb::Handshake, WireError> {
    pb::Handshake::decode(payload).map_err(|e| WireError::Decode {
        what: "handshake",
        detail: e.to_string(),
    })
}

pub fn decode_handshake_answer(payload: Bytes) -> Result<pb::HandshakeAnswer, WireError> {
    pb::HandshakeAnswer::decode(payload).map_err(|e| WireError::Decode {
        what: "handshake answer",
        detail: e.to_string(),
    })
}

/// Decodes a frame after the handshake; a frame without a body is an error.
pub fn decode_frame(payload: Bytes) -> Result<pb::frame::Body, WireError> {
    let frame = pb::Frame::decode(payload).map_err(|e| WireError::Decode {
        what: "frame",
        detail: e.to_string(),
    })?;
    frame.body.ok_or(WireError::Decode {
        what: "frame",
        detail: "no body".into(),
    })
}

/// The name of a frame's body, for errors and logs.
pub fn frame_name(body: &pb::frame::Body) -> &'static str {
    use pb::frame::Body;
    match body {
        Body::Raft(_) => "raft batch",
        Body::Request(_) => "request",
        Body::Response(_) => "response",
        Body::SnapshotMeta(_) => "snapshot meta",
        Body::SnapshotChunk(_) => "snapshot chunk",
        Body::SnapshotEnd(_) => "snapshot end",
        Body::SnapshotDone(_) => "snapshot done",
        Body::Goodbye(_) => "goodbye",
        Body::Ping(_) => "ping",
    }
}

/// Appends a frame of `body` to `out`.
pub fn encode_body(
    body: pb::frame::Body,
    limit: usize,
    out: &mut BytesMut,
) -> Result<(), WireError> {
    encode_frame(&pb::Frame { body: Some(body) }, limit, out)
}

/// One raft message as it travels inside a batch.
pub fn encode_raft_message(message: &Message) -> Bytes {
    Bytes::from(
        message
            .write_to_bytes()
            .expect("rust-protobuf encodes any message it built"),
    )
}

/// The raft messages of a batch, in order. Entry payloads stay slices of the frame's buffer.
pub fn decode_raft_batch(batch: pb::RaftBatch) -> Result<Vec<Message>, WireError> {
    batch
        .messages
        .iter()
        .map(|bytes| {
            Message::parse_from_carllerche_bytes(bytes).map_err(|e| WireError::Decode {
                what: "raft message",
                detail: e.to_string(),
            })
        })
        .collect()
}

/// What the listener knows when it checks a handshake.
pub struct ListenerView<'a> {
    pub member_id: u64,
    pub cluster_id: u64,
    /// Whether a member ID is one of this member's peers.
    pub is_peer: &'a dyn Fn(u64) -> bool,
    /// Whether a member ID was removed from the cluster.
    pub is_removed: &'a dyn Fn(u64) -> bool,
}

/// The listener's decision on a handshake, in etcd's order of checks: version, cluster ID,
/// removed sender, intended receiver, known sender.
/// - A REQUEST may come from a member that knows neither its cluster nor its own ID yet (a
///   joining member asking for the member list): cluster ID 0, sender 0 and receiver 0 are
///   accepted there, and only there.
/// - RAFT needs a sender that is one of our peers (etcd's stream handler answers 404
///   otherwise); SNAPSHOT takes any sender not removed (etcd's snapshot handler does not look
///   the sender up).
pub fn check_handshake(
    handshake: &pb::Handshake,
    view: &ListenerView<'_>,
) -> Result<ConnectionKind, pb::Refusal> {
    if handshake.protocol_version != PROTOCOL_VERSION {
        return Err(pb::Refusal::VersionUnsupported);
    }
    let Some(kind) = ConnectionKind::from_pb(handshake.kind) else {
        return Err(pb::Refusal::UnknownKind);
    };
    let request = kind == ConnectionKind::Request;
    let cluster_unknown = request && handshake.cluster_id == 0;
    if !cluster_unknown && handshake.cluster_id != view.cluster_id {
        return Err(pb::Refusal::ClusterIdMismatch);
    }
    if handshake.from != 0 && (view.is_removed)(handshake.from) {
        return Err(pb::Refusal::RemovedMember);
    }
    let receiver_unknown = request && handshake.to == 0;
    if !receiver_unknown && handshake.to != view.member_id {
        return Err(pb::Refusal::ReceiverMismatch);
    }
    if handshake.from == 0 && !request {
        return Err(pb::Refusal::UnknownSender);
    }
    if kind == ConnectionKind::Raft && !(view.is_peer)(handshake.from) {
        return Err(pb::Refusal::UnknownSender);
    }
    Ok(kind)
}

/// The refusal as etcd words it, for errors and logs.
pub fn refusal_text(refusal: pb::Refusal) -> &'static str {
    match refusal {
        pb::Refusal::None => "accepted",
        pb::Refusal::ClusterIdMismatch => "cluster ID mismatch",
        pb::Refusal::RemovedMember => "the member has been permanently removed from the cluster",
        pb::Refusal::ReceiverMismatch => "to field mismatch",
        pb::Refusal::UnknownSender => "error sender not found",
        pb::Refusal::VersionUnsupported => "incompatible version",
        pb::Refusal::UnknownKind => "invalid connection kind",
        pb::Refusal::ShuttingDown => "the peer is shutting down",
    }
}

/// The CRC-32C (Castagnoli) of a snapshot stream so far, extended by `data`.
pub fn snapshot_crc(crc: u32, data: &[u8]) -> u32 {
    crc32c::crc32c_append(crc, data)
}

#[cfg(test)]
mod tests {
    use super::*;
    use raft::eraftpb::{Entry, MessageType};

    fn raft_message(from: u64, to: u64, payload: &[u8]) -> Message {
        let mut m = Message::default();
        m.set_msg_type(MessageType::MsgAppend);
        m.from = from;
        m.to = to;
        m.term = 7;
        m.entries.push(Entry {
            index: 42,
            term: 7,
            data: Bytes::copy_from_slice(payload),
            ..Default::default()
        });
        m
    }

    #[test]
    fn frames_round_trip_one_by_one_and_byte_by_byte() {
        let decoder = FrameDecoder::new(1024);
        let mut wire = BytesMut::new();
        for i in 0..3u64 {
            encode_body(
                pb::frame::Body::Request(pb::Request {
                    id: i,
                    body: Bytes::from(vec![i as u8; 10 * i as usize]),
                }),
                1024,
                &mut wire,
            )
            .unwrap();
        }
        let all = wire.clone().freeze();
        // Fed one byte at a time, the decoder yields each frame exactly when it is complete.
        let mut buffer = BytesMut::new();
        let mut got = Vec::new();
        for b in all.iter() {
            buffer.put_u8(*b);
            while let Some(payload) = decoder.decode(&mut buffer).unwrap() {
                got.push(decode_frame(payload).unwrap());
            }
        }
        assert!(buffer.is_empty());
        assert_eq!(got.len(), 3);
        for (i, body) in got.into_iter().enumerate() {
            let pb::frame::Body::Request(r) = body else {
                panic!("not a request")
            };
            assert_eq!(r.id, i as u64);
            assert_eq!(r.body.len(), 10 * i);
        }
    }

    #[test]
    fn a_length_above_the_limit_is_refused_before_its_payload_arrives() {
        let decoder = FrameDecoder::new(1000);
        let mut buffer = BytesMut::new();
        buffer.put_u32(1001);
        assert_eq!(
            decoder.decode(&mut buffer),
            Err(WireError::FrameTooLarge {
                claimed: 1001,
                limit: 1000
            })
        );
        // The largest possible claim is refused as well, never allocated.
        let mut buffer = BytesMut::from(&[0xff, 0xff, 0xff, 0xff][..]);
        assert!(matches!(
            decoder.decode(&mut buffer),
            Err(WireError::FrameTooLarge {
                claimed: 0xffff_ffff,
                ..
            })
        ));
        // Exactly the limit is fine.
        let mut buffer = BytesMut::new();
        buffer.put_u32(1000);
        buffer.put_slice(&[0u8; 1000]);
        assert_eq!(decoder.decode(&mut buffer).unwrap().unwrap().len(), 1000);
    }

    #[test]
    fn the_sender_refuses_a_frame_the_receiver_would_refuse() {
        let mut out = BytesMut::new();
        let err = encode_body(
            pb::frame::Body::Request(pb::Request {
                id: 1,
                body: Bytes::from(vec![0u8; 2000]),
            }),
            1000,
            &mut out,
        )
        .unwrap_err();
        assert!(matches!(err, WireError::FrameTooLarge { limit: 1000, .. }));
        assert!(out.is_empty(), "nothing is appended on failure");
    }

    #[test]
    fn a_truncated_frame_is_an_error_at_the_end_of_the_stream() {
        let decoder = FrameDecoder::new(1000);
        assert_eq!(decoder.check_end(&[]), Ok(()));
        // Half a header.
        assert_eq!(
            decoder.check_end(&[0, 0]),
            Err(WireError::Truncated { have: 2, need: 4 })
        );
        // A header claiming 10 bytes and 3 of them.
        let mut buffer = BytesMut::new();
        buffer.put_u32(10);
        buffer.put_slice(&[1, 2, 3]);
        assert_eq!(decoder.decode(&mut buffer), Ok(None));
        assert_eq!(
            decoder.check_end(&buffer),
            Err(WireError::Truncated { have: 7, need: 14 })
        );
    }

    #[test]
    fn garbage_payloads_are_decode_errors() {
        // A field with tag 1 as a length-delimited value that runs past the end.
        let bad = Bytes::from_static(&[0x0a, 0x05, 0x01]);
        assert!(matches!(
            decode_frame(bad.clone()),
            Err(WireError::Decode { what: "frame", .. })
        ));
        assert!(matches!(
            decode_handshake(bad),
            Err(WireError::Decode {
                what: "handshake",
                ..
            })
        ));
        // A frame with no body.
        assert!(matches!(
            decode_frame(Bytes::new()),
            Err(WireError::Decode { what: "frame", .. })
        ));
        // A raft batch whose message is not a raft message.
        let batch = pb::RaftBatch {
            messages: vec![Bytes::from_static(&[0xff, 0xff, 0xff])],
        };
        assert!(matches!(
            decode_raft_batch(batch),
            Err(WireError::Decode {
                what: "raft message",
                ..
            })
        ));
        assert_eq!(check_preamble(b"GET / HT"), Err(WireError::BadPreamble));
        assert_eq!(check_preamble(PREAMBLE), Ok(()));
    }

    #[test]
    fn raft_messages_survive_a_batch_frame() {
        let messages = vec![
            raft_message(1, 2, b"hello"),
            raft_message(1, 2, &[7u8; 3000]),
            Message::default(),
        ];
        let batch = pb::RaftBatch {
            messages: messages.iter().map(encode_raft_message).collect(),
        };
        let mut wire = BytesMut::new();
        encode_body(pb::frame::Body::Raft(batch), FRAME_BYTES_MAX, &mut wire).unwrap();
        let payload = FrameDecoder::new(FRAME_BYTES_MAX)
            .decode(&mut wire)
            .unwrap()
            .unwrap();
        let pb::frame::Body::Raft(batch) = decode_frame(payload).unwrap() else {
            panic!("not a raft batch")
        };
        assert_eq!(decode_raft_batch(batch).unwrap(), messages);
    }

    fn handshake(kind: pb::ConnectionKind, cluster_id: u64, from: u64, to: u64) -> pb::Handshake {
        pb::Handshake {
            protocol_version: PROTOCOL_VERSION,
            cluster_id,
            from,
            to,
            kind: kind as i32,
            ..Default::default()
        }
    }

    #[test]
    fn handshake_checks() {
        let is_peer = |id: u64| id == 2 || id == 3;
        let is_removed = |id: u64| id == 9;
        let view = ListenerView {
            member_id: 1,
            cluster_id: 100,
            is_peer: &is_peer,
            is_removed: &is_removed,
        };
        use pb::ConnectionKind as K;
        use pb::Refusal as R;
        let check = |h: pb::Handshake| check_handshake(&h, &view);

        assert_eq!(
            check(handshake(K::Raft, 100, 2, 1)),
            Ok(ConnectionKind::Raft)
        );
        assert_eq!(
            check(handshake(K::Snapshot, 100, 7, 1)),
            Ok(ConnectionKind::Snapshot),
            "a snapshot may come from a member we do not know yet"
        );
        assert_eq!(
            check(handshake(K::Request, 0, 0, 0)),
            Ok(ConnectionKind::Request),
            "a joining member that knows only a URL may ask"
        );
        // Cluster ID mismatch, whatever the kind; 0 is no wildcard outside requests.
        assert_eq!(
            check(handshake(K::Raft, 101, 2, 1)),
            Err(R::ClusterIdMismatch)
        );
        assert_eq!(
            check(handshake(K::Raft, 0, 2, 1)),
            Err(R::ClusterIdMismatch)
        );
        assert_eq!(
            check(handshake(K::Request, 101, 2, 1)),
            Err(R::ClusterIdMismatch)
        );
        // A removed member is refused on every kind of connection, even if still a peer.
        assert_eq!(check(handshake(K::Raft, 100, 9, 1)), Err(R::RemovedMember));
        assert_eq!(
            check(handshake(K::Request, 100, 9, 0)),
            Err(R::RemovedMember)
        );
        assert_eq!(
            check(handshake(K::Snapshot, 100, 9, 1)),
            Err(R::RemovedMember)
        );
        // The wrong receiver.
        assert_eq!(
            check(handshake(K::Raft, 100, 2, 5)),
            Err(R::ReceiverMismatch)
        );
        assert_eq!(
            check(handshake(K::Raft, 100, 2, 0)),
            Err(R::ReceiverMismatch)
        );
        assert_eq!(
            check(handshake(K::Request, 100, 2, 5)),
            Err(R::ReceiverMismatch)
        );
        // Raft only from a known peer.
        assert_eq!(check(handshake(K::Raft, 100, 7, 1)), Err(R::UnknownSender));
        assert_eq!(
            check(handshake(K::Snapshot, 100, 0, 1)),
            Err(R::UnknownSender)
        );
        // Version and kind.
        let mut h = handshake(K::Raft, 100, 2, 1);
        h.protocol_version = 2;
        assert_eq!(check(h), Err(R::VersionUnsupported));
        assert_eq!(
            check(handshake(K::Unspecified, 100, 2, 1)),
            Err(R::UnknownKind)
        );
        let mut h = handshake(K::Raft, 100, 2, 1);
        h.kind = 77;
        assert_eq!(check(h), Err(R::UnknownKind));
    }

    #[test]
    fn snapshot_checksum_is_crc32c_over_the_concatenated_chunks() {
        let whole = snapshot_crc(0, b"hello world");
        let pieces = snapshot_crc(snapshot_crc(0, b"hello "), b"world");
        assert_eq!(whole, pieces);
        // The standard CRC-32C check value.
        assert_eq!(snapshot_crc(0, b"123456789"), 0xe306_9283);
    }
}
