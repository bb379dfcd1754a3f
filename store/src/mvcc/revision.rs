//! revision: etcd's `(main, sub)` revision pair.

/// A revision: `main` is bumped once per write request, `sub` counts the
/// changes inside it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Revision {
    /// The store revision of the write request.
    pub main: i64,
    /// The index of the change within the request.
    pub sub: i64,
}

impl Revision {
    /// Encode as 17 bytes the way etcd's backend keys are laid out: 8 bytes
    /// big-endian main, `_`, 8 bytes big-endian sub.
    pub fn to_bytes(self) -> [u8; 17] {
        let mut b = [0u8; 17];
        b[..8].copy_from_slice(&self.main.to_be_bytes());
        b[8] = b'_';
        b[9..].copy_from_slice(&self.sub.to_be_bytes());
        b
    }

    /// Decode the 17-byte form.
    pub fn from_bytes(b: &[u8]) -> Option<Self> {
        if b.len() != 17 || b[8] != b'_' {
            return None;
        }
        Some(Revision {
            main: i64::from_be_bytes(b[..8].try_into().ok()?),
            sub: i64::from_be_bytes(b[9..].try_into().ok()?),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_roundtrip_and_order() {
        let a = Revision { main: 5, sub: 1 };
        let b = Revision { main: 6, sub: 0 };
        assert_eq!(Revision::from_bytes(&a.to_bytes()), Some(a));
        assert!(a.to_bytes() < b.to_bytes());
        assert!(a < b);
        assert_eq!(Revision::from_bytes(b"short"), None);
    }
}
