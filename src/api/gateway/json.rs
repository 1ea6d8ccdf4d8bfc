//! The JSON form of etcd's messages on the gateway: Go's `jsonpb` (golang/protobuf v1.5) as
//! grpc-gateway v1.16 runs it for etcd (`JSONPb{OrigName: true}`, unknown fields allowed), over
//! prost-reflect's dynamic messages. Clients and etcd's own tests compare the output as text
//! (e.g. `"revision":"1","raft_term":"2"},"hash":`), so the writer follows jsonpb rather than
//! the proto3 JSON spec where they differ:
//! - fields in declaration order under their proto names, a oneof at the place of its first
//!   member; unset messages, zero scalars and empty lists left out (a set oneof member is
//!   written even when zero);
//! - 64-bit integers as decimal strings, 32-bit ones as numbers, enums by name (by number when
//!   the number has no name), bytes as padded standard base64;
//! - strings escaped as Go's encoding/json escapes them (`<`, `>`, `&`, U+2028/9 included).
//!
//! The reader takes what jsonpb takes: proto or lowerCamel names (lowerCamel wins when both are
//! present), integers as numbers or quoted numbers, enums by name or number, `null` for unset;
//! names it does not know are ignored. Its errors are worded as Go's decoder words them.

use std::io::Write as _;
use std::sync::OnceLock;

use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use base64::engine::DecodePaddingMode;
use base64::Engine as _;
use prost_reflect::{
    DescriptorPool, DynamicMessage, FieldDescriptor, Kind, MessageDescriptor, ReflectMessage,
};
use prost_reflect::{Value, Value as V};
use serde_json::Value as Json;

/// The etcd API's descriptors, as `proto/build.rs` compiled them.
pub fn pool() -> &'static DescriptorPool {
    static POOL: OnceLock<DescriptorPool> = OnceLock::new();
    POOL.get_or_init(|| {
        DescriptorPool::decode(proto::FILE_DESCRIPTOR_SET)
            .expect("the descriptor set built by proto/build.rs decodes")
    })
}

/// Go's `base64.StdEncoding`: padding required, stray bits in the last symbol tolerated.
const GO_STD_BASE64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new()
        .with_decode_allow_trailing_bits(true)
        .with_decode_padding_mode(DecodePaddingMode::RequireCanonical),
);

/// A message's fields in declaration order, the order jsonpb walks (prost-reflect's own
/// iteration is by field number).
fn declared_fields(desc: &MessageDescriptor) -> impl Iterator<Item = FieldDescriptor> + '_ {
    desc.descriptor_proto()
        .field
        .iter()
        .filter_map(move |f| desc.get_field(f.number() as u32))
}

/// Appends `m` as jsonpb writes it.
pub fn write_message(out: &mut Vec<u8>, m: &DynamicMessage) {
    let desc = m.descriptor();
    out.push(b'{');
    let mut first = true;
    let mut oneofs_done: Vec<String> = Vec::new();
    for fd in declared_fields(&desc) {
        let fd = match fd.containing_oneof() {
            Some(oneof) => {
                if oneofs_done.iter().any(|n| n == oneof.name()) {
                    continue;
                }
                oneofs_done.push(oneof.name().to_string());
                match oneof.fields().find(|f| m.has_field(f)) {
                    Some(set) => set,
                    None => continue,
                }
            }
            None if m.has_field(&fd) => fd,
            None => continue,
        };
        if !first {
            out.push(b',');
        }
        first = false;
        write_str(out, fd.name());
        out.push(b':');
        match &*m.get_field(&fd) {
            V::List(items) => {
                out.push(b'[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    write_single(out, &fd.kind(), item);
                }
                out.push(b']');
            }
            v => write_single(out, &fd.kind(), v),
        }
    }
    out.push(b'}');
}

fn write_single(out: &mut Vec<u8>, kind: &Kind, v: &Value) {
    // Writes into a Vec cannot fail.
    let _ = match v {
        V::Bool(b) => write!(out, "{b}"),
        V::I32(n) => write!(out, "{n}"),
        V::U32(n) => write!(out, "{n}"),
        V::I64(n) => write!(out, "\"{n}\""),
        V::U64(n) => write!(out, "\"{n}\""),
        V::F32(f) => write!(out, "{f}"),
        V::F64(f) => write!(out, "{f}"),
        V::String(s) => {
            write_str(out, s);
            Ok(())
        }
        V::Bytes(b) => {
            out.push(b'"');
            let start = out.len();
            out.resize(start + b.len().div_ceil(3) * 4, 0);
            let n = GO_STD_BASE64
                .encode_slice(b, &mut out[start..])
                .expect("the buffer was sized for the encoding");
            out.truncate(start + n);
            out.push(b'"');
            Ok(())
        }
        V::EnumNumber(n) => match kind.as_enum().and_then(|e| e.get_value(*n)) {
            Some(named) => write!(out, "\"{}\"", named.name()),
            None => write!(out, "{n}"),
        },
        V::Message(m) => {
            write_message(out, m);
            Ok(())
        }
        // No field of etcd's API is a map (tests::no_maps_or_floats), and lists do not nest.
        V::List(_) | V::Map(_) => {
            out.extend_from_slice(b"null");
            Ok(())
        }
    };
}

/// A JSON string as Go's encoding/json writes it (HTML-safe, `\b` and `\f` short forms).
pub fn write_str(out: &mut Vec<u8>, s: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push(b'"');
    let bytes = s.as_bytes();
    let mut start = 0;
    for (i, c) in s.char_indices() {
        let short: &[u8] = match c {
            '"' => b"\\\"",
            '\\' => b"\\\\",
            '\n' => b"\\n",
            '\r' => b"\\r",
            '\t' => b"\\t",
            '\u{8}' => b"\\b",
            '\u{c}' => b"\\f",
            '\u{2028}' => b"\\u2028",
            '\u{2029}' => b"\\u2029",
            c if (c as u32) < 0x20 || c == '<' || c == '>' || c == '&' => &[],
            _ => continue,
        };
        out.extend_from_slice(&bytes[start..i]);
        if short.is_empty() {
            let b = c as u8;
            out.extend_from_slice(b"\\u00");
            out.push(HEX[usize::from(b >> 4)]);
            out.push(HEX[usize::from(b & 0xf)]);
        } else {
            out.extend_from_slice(short);
        }
        start = i + c.len_utf8();
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

/// Builds a `desc` message from one parsed JSON value, as jsonpb's `UnmarshalNext` does.
pub fn read_message(desc: &MessageDescriptor, json: &Json) -> Result<DynamicMessage, String> {
    let mut m = DynamicMessage::new(desc.clone());
    let obj = match json {
        Json::Object(o) => o,
        // Go leaves the message as it was: empty.
        Json::Null => return Ok(m),
        other => return Err(cannot_unmarshal(other, "map[string]json.RawMessage")),
    };
    for fd in declared_fields(desc) {
        let raw = obj.get(fd.json_name()).or_else(|| obj.get(fd.name()));
        let Some(raw) = raw.filter(|v| !v.is_null()) else {
            continue;
        };
        let value = if fd.is_list() {
            let Json::Array(items) = raw else {
                return Err(cannot_unmarshal(raw, "[]json.RawMessage"));
            };
            V::List(
                items
                    .iter()
                    .map(|item| read_single(&fd.kind(), item))
                    .collect::<Result<_, _>>()?,
            )
        } else {
            read_single(&fd.kind(), raw)?
        };
        m.set_field(&fd, value);
    }
    Ok(m)
}

fn read_single(kind: &Kind, raw: &Json) -> Result<Value, String> {
    Ok(match kind {
        Kind::Bool => match raw {
            Json::Bool(b) => V::Bool(*b),
            Json::Null => V::Bool(false),
            other => return Err(cannot_unmarshal(other, "bool")),
        },
        Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => V::I32(integer(raw, "int32")?),
        Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => V::I64(integer(raw, "int64")?),
        Kind::Uint32 | Kind::Fixed32 => V::U32(integer(raw, "uint32")?),
        Kind::Uint64 | Kind::Fixed64 => V::U64(integer(raw, "uint64")?),
        Kind::Float => V::F32(float(raw, "float32")? as f32),
        Kind::Double => V::F64(float(raw, "float64")?),
        Kind::String => match raw {
            Json::String(s) => V::String(s.clone()),
            Json::Null => V::String(String::new()),
            other => return Err(cannot_unmarshal(other, "string")),
        },
        Kind::Bytes => match raw {
            Json::String(s) => V::Bytes(base64_decode(s)?.into()),
            Json::Null => V::Bytes(bytes::Bytes::new()),
            other => return Err(cannot_unmarshal(other, "[]uint8")),
        },
        Kind::Enum(e) => match raw {
            Json::String(name) => match e.get_value_by_name(name) {
                Some(v) => V::EnumNumber(v.number()),
                None => {
                    return Err(format!(
                        "unknown value {:?} for enum {}",
                        format!("\"{name}\""),
                        e.full_name()
                    ))
                }
            },
            Json::Number(_) | Json::Null => V::EnumNumber(integer(raw, "protoreflect.EnumNumber")?),
            other => return Err(cannot_unmarshal(other, "protoreflect.EnumNumber")),
        },
        Kind::Message(md) => V::Message(read_message(md, raw)?),
    })
}

/// Go's `UnmarshalTypeError` text.
fn cannot_unmarshal(v: &Json, go_type: &str) -> String {
    let what = match v {
        Json::Null => "null",
        Json::Bool(_) => "bool",
        Json::Number(_) => "number",
        Json::String(_) => "string",
        Json::Array(_) => "array",
        Json::Object(_) => "object",
    };
    format!("json: cannot unmarshal {what} into Go value of type {go_type}")
}

/// jsonpb strips one pair of quotes and parses the rest as a JSON number, so `5` and `"5"`
/// both read as 5; a fraction, an exponent or an out-of-range value is refused.
fn integer<T: TryFrom<i64> + TryFrom<u64> + Default>(
    raw: &Json,
    go_type: &str,
) -> Result<T, String> {
    let unquoted;
    let n = match raw {
        Json::String(s) => {
            unquoted = serde_json::from_str::<Json>(s).map_err(|e| syntax_error(&e))?;
            &unquoted
        }
        other => other,
    };
    let Json::Number(num) = n else {
        return match n {
            Json::Null => Ok(T::default()),
            other => Err(cannot_unmarshal(other, go_type)),
        };
    };
    let v = match (num.as_i64(), num.as_u64()) {
        (Some(i), _) => T::try_from(i).ok(),
        (None, Some(u)) => T::try_from(u).ok(),
        _ => None,
    };
    v.ok_or_else(|| format!("json: cannot unmarshal number {num} into Go value of type {go_type}"))
}

fn float(raw: &Json, go_type: &str) -> Result<f64, String> {
    match raw {
        Json::Number(n) => n.as_f64().ok_or_else(|| cannot_unmarshal(raw, go_type)),
        Json::String(s) => match s.as_str() {
            "NaN" => Ok(f64::NAN),
            "Infinity" => Ok(f64::INFINITY),
            "-Infinity" => Ok(f64::NEG_INFINITY),
            _ => s.trim().parse().map_err(|_| cannot_unmarshal(raw, go_type)),
        },
        Json::Null => Ok(0.0),
        other => Err(cannot_unmarshal(other, go_type)),
    }
}

/// Go's `[]byte` decoding: standard padded base64; line breaks inside are skipped.
fn base64_decode(s: &str) -> Result<Vec<u8>, String> {
    let cleaned;
    let input = if s.contains(['\r', '\n']) {
        cleaned = s.replace(['\r', '\n'], "");
        cleaned.as_str()
    } else {
        s
    };
    GO_STD_BASE64.decode(input).map_err(|e| {
        let at = match e {
            base64::DecodeError::InvalidByte(at, _)
            | base64::DecodeError::InvalidLastSymbol(at, _) => at,
            base64::DecodeError::InvalidLength(len) => len,
            base64::DecodeError::InvalidPadding => input.len(),
        };
        format!("illegal base64 data at input byte {at}")
    })
}

/// A JSON syntax error in words close to Go's decoder (which callers may show to users).
pub fn syntax_error(e: &serde_json::Error) -> String {
    if e.is_eof() {
        "unexpected EOF".to_string()
    } else {
        format!("invalid JSON: {e}")
    }
}

#[cfg(test)]
mod tests;
