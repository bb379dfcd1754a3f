//! auth::perm: etcd's key-range permission arithmetic.
//!
//! A permission (and a request) names keys the way etcd does: `range_end`
//! empty is the single key `key`; `range_end == "\0"` is every key from
//! `key` on ("from key"); otherwise the half-open range `[key, range_end)`.
//! A point request is allowed when some granted interval contains the key;
//! a range request only when the union of the granted intervals covers the
//! whole requested range (etcd merges a user's permissions across roles,
//! so two adjacent grants together cover a range neither covers alone).
//! Pure functions, no state: the auth store calls them.

/// A half-open key interval; `end == None` is unbounded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interval {
    /// First key in the interval.
    pub start: Vec<u8>,
    /// First key past the interval; `None` means no upper bound.
    pub end: Option<Vec<u8>>,
}

impl Interval {
    /// The interval etcd means by `(key, range_end)`.
    pub fn from_etcd(key: &[u8], range_end: &[u8]) -> Interval {
        if range_end.is_empty() {
            let mut end = key.to_vec();
            end.push(0);
            Interval {
                start: key.to_vec(),
                end: Some(end),
            }
        } else if range_end == [0] {
            Interval {
                start: key.to_vec(),
                end: None,
            }
        } else {
            Interval {
                start: key.to_vec(),
                end: Some(range_end.to_vec()),
            }
        }
    }

    fn contains_key(&self, k: &[u8]) -> bool {
        self.start.as_slice() <= k && self.end.as_deref().is_none_or(|e| k < e)
    }
}

/// Whether the granted intervals allow the request `(key, range_end)`.
pub fn permitted(granted: &[Interval], key: &[u8], range_end: &[u8]) -> bool {
    if range_end.is_empty() {
        return granted.iter().any(|g| g.contains_key(key));
    }
    let want = Interval::from_etcd(key, range_end);
    if let Some(e) = &want.end {
        if e.as_slice() <= want.start.as_slice() {
            // An empty (or inverted) range names no key: etcd's interval
            // tree finds no covering interval for it either.
            return granted.iter().any(|g| g.contains_key(key));
        }
    }
    // Sweep: extend the covered prefix [want.start, cur) with any granted
    // interval that starts at or before `cur` and reaches past it.
    let mut cur = want.start.clone();
    loop {
        let mut next: Option<Option<Vec<u8>>> = None;
        for g in granted {
            if g.start.as_slice() <= cur.as_slice() && g.contains_key(&cur) {
                match (&next, &g.end) {
                    (_, None) => next = Some(None),
                    (Some(None), _) => {}
                    (Some(Some(n)), Some(e)) if e <= n => {}
                    (_, Some(e)) => next = Some(Some(e.clone())),
                }
            }
        }
        match next {
            None => return false,
            Some(None) => return true,
            Some(Some(end)) => {
                if let Some(w) = &want.end {
                    if end.as_slice() >= w.as_slice() {
                        return true;
                    }
                }
                cur = end;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn g(k: &str, e: &str) -> Interval {
        Interval::from_etcd(k.as_bytes(), e.as_bytes())
    }
    fn from(k: &str) -> Interval {
        Interval::from_etcd(k.as_bytes(), b"\0")
    }

    #[test]
    fn single_key_grant() {
        let p = [g("foo", "")];
        assert!(permitted(&p, b"foo", b""));
        assert!(!permitted(&p, b"foo0", b""));
        assert!(!permitted(&p, b"fo", b""));
        // [foo, foo\0) is exactly the key.
        assert!(permitted(&p, b"foo", b"foo\0"));
        assert!(!permitted(&p, b"foo", b"fop"));
    }

    #[test]
    fn prefix_grant_covers_prefix_ranges_only() {
        // etcdctl role grant-permission --prefix r readwrite foo -> [foo, fop)
        let p = [g("foo", "fop")];
        assert!(permitted(&p, b"foo", b""));
        assert!(permitted(&p, b"foobar", b""));
        assert!(permitted(&p, b"foo/", b"foo0"));
        assert!(permitted(&p, b"foo", b"fop"));
        assert!(!permitted(&p, b"foo", b"foq"));
        assert!(!permitted(&p, b"fop", b""));
        assert!(!permitted(&p, b"fo", b"fop"));
        assert!(!permitted(&p, b"foo", b"\0"));
    }

    #[test]
    fn from_key_grant_is_unbounded() {
        let p = [from("m")];
        assert!(permitted(&p, b"m", b""));
        assert!(permitted(&p, b"zzzz", b""));
        assert!(permitted(&p, b"m", b"\0"));
        assert!(permitted(&p, b"x", b"\0"));
        assert!(!permitted(&p, b"a", b"\0"));
        assert!(!permitted(&p, b"l", b"n"));
        // Everything: key "" from-key.
        let all = [from("")];
        assert!(permitted(&all, b"", b"\0"));
        assert!(permitted(&all, b"\xff\xff", b""));
    }

    #[test]
    fn adjacent_grants_merge() {
        let p = [g("a", "c"), g("c", "e")];
        assert!(permitted(&p, b"a", b"e"));
        assert!(permitted(&p, b"b", b"d"));
        assert!(!permitted(&p, b"a", b"f"));
        let gap = [g("a", "c"), g("d", "e")];
        assert!(!permitted(&gap, b"a", b"e"));
        // Overlapping, out of order.
        let p = [g("c", "z"), g("a", "d"), g("b", "c")];
        assert!(permitted(&p, b"a", b"y"));
        // A range reaching into from-key.
        let p = [g("a", "c"), from("b")];
        assert!(permitted(&p, b"a", b"\0"));
    }

    #[test]
    fn nothing_granted_denies() {
        assert!(!permitted(&[], b"k", b""));
        assert!(!permitted(&[], b"k", b"\0"));
        assert!(!permitted(&[], b"", b"\0"));
    }
}
