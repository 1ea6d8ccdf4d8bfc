//! `--namespace`: the gRPC proxy prefixes every key of a request with the namespace and removes
//! it from the keys of the answer, as clientv3's `namespace` package does, so each client sees
//! the namespace as the whole keyspace.

use bytes::Bytes;

/// The first key after every key with `prefix` (etcd's `GetPrefixRangeEnd`); `\0` when there is
/// none.
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.last_mut() {
        if *last < 0xff {
            *last += 1;
            return end;
        }
        end.pop();
    }
    vec![0]
}

#[derive(Clone, Debug, Default)]
pub struct Namespace {
    prefix: Vec<u8>,
}

impl Namespace {
    pub fn new(prefix: &str) -> Namespace {
        Namespace {
            prefix: prefix.as_bytes().to_vec(),
        }
    }

    /// A key of the request.
    pub fn key(&self, key: &Bytes) -> Bytes {
        if self.prefix.is_empty() {
            return key.clone();
        }
        let mut k = self.prefix.clone();
        k.extend_from_slice(key);
        k.into()
    }

    /// A key range of the request (clientv3's `prefixInterval`).
    pub fn interval(&self, key: &Bytes, range_end: &Bytes) -> (Bytes, Bytes) {
        if self.prefix.is_empty() {
            return (key.clone(), range_end.clone());
        }
        if key.is_empty() {
            // The whole keyspace ("\0" end) or a range from the start.
            if range_end.as_ref() == [0] || range_end.is_empty() {
                let end = if range_end.is_empty() {
                    Bytes::new()
                } else {
                    prefix_end(&self.prefix).into()
                };
                return (self.prefix.clone().into(), end);
            }
        }
        let end = if range_end.as_ref() == [0] {
            prefix_end(&self.prefix).into()
        } else if range_end.is_empty() {
            Bytes::new()
        } else {
            self.key(range_end)
        };
        (self.key(key), end)
    }

    /// A key of the answer.
    pub fn strip(&self, key: &mut Bytes) {
        if !self.prefix.is_empty() && key.starts_with(&self.prefix) {
            *key = key.slice(self.prefix.len()..);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixing_and_stripping() {
        let ns = Namespace::new("t/");
        assert_eq!(
            ns.key(&Bytes::from_static(b"a")),
            Bytes::from_static(b"t/a")
        );
        assert_eq!(
            ns.interval(&Bytes::from_static(b""), &Bytes::from_static(b"\0")),
            (Bytes::from_static(b"t/"), Bytes::from_static(b"t0"))
        );
        assert_eq!(
            ns.interval(&Bytes::from_static(b"a"), &Bytes::from_static(b"\0")),
            (Bytes::from_static(b"t/a"), Bytes::from_static(b"t0"))
        );
        assert_eq!(
            ns.interval(&Bytes::from_static(b"a"), &Bytes::from_static(b"b")),
            (Bytes::from_static(b"t/a"), Bytes::from_static(b"t/b"))
        );
        let mut k = Bytes::from_static(b"t/x");
        ns.strip(&mut k);
        assert_eq!(k, Bytes::from_static(b"x"));
        assert_eq!(prefix_end(b"a\xff"), b"b".to_vec());
        assert_eq!(prefix_end(b"\xff"), vec![0]);
    }
}
