//! auth::token: this member's auth tokens (`--auth-token`).
//!
//! `simple` (the default): a token is `<16 random letters>.<raft index>`;
//! the proposer picks the letters and every member registers the token
//! when the Authenticate entry applies, so it works on every member (as
//! in etcd, where each member's simple token keeper assigns it at apply).
//! A simple token expires after `--auth-token-ttl` seconds without use,
//! and all of a user's tokens die when the user is deleted or changes
//! password, and all tokens when auth is disabled.
//! `jwt,pub-key=…,priv-key=…,sign-method=…,ttl=…`: a signed JWT with
//! etcd's claims `username`, `revision` and `exp`, verified by any member
//! with the public key. Tokens are never part of the replicated state.

use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use parking_lot::Mutex;
use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// A parsed `--auth-token` value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenSpec {
    /// Simple tokens.
    Simple,
    /// JWT with these options.
    Jwt {
        /// Public key file (PEM).
        pub_key: Option<String>,
        /// Private key file (PEM); without it this member only verifies.
        priv_key: Option<String>,
        /// Signing algorithm, etcd's names (RS256, ES256, PS256, EdDSA, HS256…).
        sign_method: String,
        /// Token lifetime.
        ttl: Duration,
    },
}

/// Parse `--auth-token` as etcd does (`simple`, or `jwt,key=value,...`).
pub fn parse_spec(s: &str) -> std::result::Result<TokenSpec, String> {
    let mut parts = s.split(',');
    let kind = parts.next().unwrap_or_default();
    match kind {
        "simple" => Ok(TokenSpec::Simple),
        "jwt" => {
            let (mut pub_key, mut priv_key, mut method, mut ttl) =
                (None, None, String::new(), Duration::from_secs(300));
            for p in parts {
                let Some((k, v)) = p.split_once('=') else {
                    return Err(format!(
                        "invalid --auth-token option {p:?} (want key=value)"
                    ));
                };
                match k {
                    "pub-key" => pub_key = Some(v.to_string()),
                    "priv-key" => priv_key = Some(v.to_string()),
                    "sign-method" => method = v.to_string(),
                    "ttl" => {
                        ttl = humantime::parse_duration(v)
                            .map_err(|e| format!("invalid --auth-token ttl {v:?}: {e}"))?
                    }
                    _ => return Err(format!("unknown token option {k:?}")),
                }
            }
            if method.is_empty() {
                return Err("failed to parse jwt options: sign-method is required".into());
            }
            algorithm(&method)?;
            Ok(TokenSpec::Jwt {
                pub_key,
                priv_key,
                sign_method: method,
                ttl,
            })
        }
        // etcd logs "unknown token type" and fails with ErrInvalidAuthOpts.
        other => Err(format!(
            "unknown token type {other:?}: auth: invalid auth options"
        )),
    }
}

fn algorithm(m: &str) -> std::result::Result<Algorithm, String> {
    Ok(match m {
        "RS256" => Algorithm::RS256,
        "RS384" => Algorithm::RS384,
        "RS512" => Algorithm::RS512,
        "PS256" => Algorithm::PS256,
        "PS384" => Algorithm::PS384,
        "PS512" => Algorithm::PS512,
        "ES256" => Algorithm::ES256,
        "ES384" => Algorithm::ES384,
        "EdDSA" => Algorithm::EdDSA,
        "HS256" => Algorithm::HS256,
        "HS384" => Algorithm::HS384,
        "HS512" => Algorithm::HS512,
        other => return Err(format!("unsupported jwt sign-method {other:?}")),
    })
}

/// An EC signing key from PEM: PKCS#8 (`BEGIN PRIVATE KEY`) as is, or
/// SEC1 (`BEGIN EC PRIVATE KEY`, what `openssl ecparam -genkey` writes and
/// etcd accepts), which is wrapped into PKCS#8 for the signer.
fn ec_encoding_key(pem: &[u8], alg: Algorithm) -> jsonwebtoken::errors::Result<EncodingKey> {
    let text = String::from_utf8_lossy(pem);
    let (begin, end) = (
        "-----BEGIN EC PRIVATE KEY-----",
        "-----END EC PRIVATE KEY-----",
    );
    let (Some(b), Some(e)) = (text.find(begin), text.find(end)) else {
        return EncodingKey::from_ec_pem(pem);
    };
    use base64::Engine;
    let body: String = text[b + begin.len()..e].split_whitespace().collect();
    let sec1 = base64::engine::general_purpose::STANDARD
        .decode(body)
        .map_err(|_| jsonwebtoken::errors::ErrorKind::InvalidKeyFormat)?;
    Ok(EncodingKey::from_ec_der(&sec1_to_pkcs8(&sec1, alg)))
}

fn der(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut v = vec![tag];
    let n = content.len();
    if n < 0x80 {
        v.push(n as u8);
    } else if n < 0x100 {
        v.extend([0x81, n as u8]);
    } else {
        v.extend([0x82, (n >> 8) as u8, n as u8]);
    }
    v.extend_from_slice(content);
    v
}

/// PrivateKeyInfo { 0, { id-ecPublicKey, curve }, OCTET STRING sec1 }.
fn sec1_to_pkcs8(sec1: &[u8], alg: Algorithm) -> Vec<u8> {
    const EC_PUBLIC_KEY: &[u8] = &[0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
    const P256: &[u8] = &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
    const P384: &[u8] = &[0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x22];
    let curve = if alg == Algorithm::ES384 { P384 } else { P256 };
    let alg_id = der(0x30, &[EC_PUBLIC_KEY, curve].concat());
    let body = [&[0x02, 0x01, 0x00][..], &alg_id, &der(0x04, sec1)].concat();
    der(0x30, &body)
}

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    username: String,
    revision: u64,
    exp: u64,
}

struct Jwt {
    alg: Algorithm,
    enc: Option<EncodingKey>,
    dec: DecodingKey,
    ttl: Duration,
}

struct SimpleToken {
    user: String,
    last_used: Instant,
}

/// Who a valid token names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenInfo {
    /// User name.
    pub username: String,
    /// Auth revision in the token (JWT), or `None` for simple tokens
    /// (which take the store's current revision).
    pub revision: Option<u64>,
}

/// This member's token keeper.
pub struct TokenProvider {
    jwt: Option<Jwt>,
    simple_ttl: Duration,
    /// Simple tokens. A std-style short critical section: no await inside.
    simple: Mutex<HashMap<String, SimpleToken>>,
}

impl TokenProvider {
    /// Build from `--auth-token` and `--auth-token-ttl`; reads JWT key files.
    pub fn new(spec: &TokenSpec, simple_ttl: Duration) -> std::result::Result<Self, String> {
        let jwt = match spec {
            TokenSpec::Simple => None,
            TokenSpec::Jwt {
                pub_key,
                priv_key,
                sign_method,
                ttl,
            } => {
                let alg = algorithm(sign_method)?;
                let read = |p: &str| {
                    std::fs::read(p).map_err(|e| format!("cannot read jwt key file {p}: {e}"))
                };
                let hmac = matches!(alg, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512);
                let (enc, dec) = if hmac {
                    let k =
                        read(priv_key.as_deref().or(pub_key.as_deref()).ok_or(
                            "jwt HMAC sign-method needs priv-key (the shared secret file)",
                        )?)?;
                    (
                        Some(EncodingKey::from_secret(&k)),
                        DecodingKey::from_secret(&k),
                    )
                } else {
                    let pk = read(pub_key.as_deref().ok_or("jwt needs pub-key")?)?;
                    let dec = match alg {
                        Algorithm::ES256 | Algorithm::ES384 => DecodingKey::from_ec_pem(&pk),
                        Algorithm::EdDSA => DecodingKey::from_ed_pem(&pk),
                        _ => DecodingKey::from_rsa_pem(&pk),
                    }
                    .map_err(|e| format!("invalid jwt pub-key: {e}"))?;
                    let enc = match priv_key {
                        None => None,
                        Some(p) => {
                            let sk = read(p)?;
                            Some(
                                match alg {
                                    Algorithm::ES256 | Algorithm::ES384 => {
                                        ec_encoding_key(&sk, alg)
                                    }
                                    Algorithm::EdDSA => EncodingKey::from_ed_pem(&sk),
                                    _ => EncodingKey::from_rsa_pem(&sk),
                                }
                                .map_err(|e| format!("invalid jwt priv-key: {e}"))?,
                            )
                        }
                    };
                    (enc, dec)
                };
                Some(Jwt {
                    alg,
                    enc,
                    dec,
                    ttl: *ttl,
                })
            }
        };
        Ok(TokenProvider {
            jwt,
            simple_ttl,
            simple: Mutex::new(HashMap::new()),
        })
    }

    /// The proposer's part of Authenticate: a random simple-token prefix,
    /// or "" for JWT (etcd's GenTokenPrefix).
    pub fn gen_prefix(&self) -> String {
        if self.jwt.is_some() {
            return String::new();
        }
        let mut rng = rand::thread_rng();
        (0..16)
            .map(|_| {
                let c = rng.gen_range(0..52u8);
                (if c < 26 { b'a' + c } else { b'A' + c - 26 }) as char
            })
            .collect()
    }

    /// Issue a token when an Authenticate entry applies (every member).
    pub fn assign(&self, user: &str, revision: u64, prefix: &str, index: u64) -> Result<String> {
        if let Some(j) = &self.jwt {
            let Some(enc) = &j.enc else {
                return Err(Error::Internal(
                    "jwt token provider has no priv-key to sign with".into(),
                ));
            };
            let exp = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default()
                .saturating_add(j.ttl)
                .as_secs();
            let claims = Claims {
                username: user.to_string(),
                revision,
                exp,
            };
            return jsonwebtoken::encode(&Header::new(j.alg), &claims, enc)
                .map_err(|e| Error::Internal(format!("jwt sign: {e}")));
        }
        let token = format!("{prefix}.{index}");
        let mut m = self.simple.lock();
        let now = Instant::now();
        let ttl = self.simple_ttl;
        m.retain(|_, t| now.duration_since(t.last_used) < ttl);
        m.insert(
            token.clone(),
            SimpleToken {
                user: user.to_string(),
                last_used: now,
            },
        );
        Ok(token)
    }

    /// Who `token` names, if it is valid (a use renews a simple token).
    pub fn info(&self, token: &str) -> Option<TokenInfo> {
        if let Some(j) = &self.jwt {
            let mut v = Validation::new(j.alg);
            v.leeway = 0;
            v.validate_exp = true;
            v.required_spec_claims = ["exp".to_string()].into_iter().collect();
            let data = jsonwebtoken::decode::<Claims>(token, &j.dec, &v).ok()?;
            return Some(TokenInfo {
                username: data.claims.username,
                revision: Some(data.claims.revision),
            });
        }
        let mut m = self.simple.lock();
        let now = Instant::now();
        let t = m.get_mut(token)?;
        if now.duration_since(t.last_used) >= self.simple_ttl {
            m.remove(token);
            return None;
        }
        t.last_used = now;
        Some(TokenInfo {
            username: t.user.clone(),
            revision: None,
        })
    }

    /// Drop every simple token of `user` (deleted or new password).
    pub fn invalidate_user(&self, user: &str) {
        self.simple.lock().retain(|_, t| t.user != user);
    }

    /// Drop every simple token (auth disabled).
    pub fn clear(&self) {
        self.simple.lock().clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_parsing() {
        assert_eq!(parse_spec("simple"), Ok(TokenSpec::Simple));
        assert!(parse_spec("bogus")
            .unwrap_err()
            .contains("unknown token type"));
        match parse_spec("jwt,pub-key=a,priv-key=b,sign-method=RS256,ttl=10m").unwrap() {
            TokenSpec::Jwt {
                ttl, sign_method, ..
            } => {
                assert_eq!(ttl, Duration::from_secs(600));
                assert_eq!(sign_method, "RS256");
            }
            other => panic!("{other:?}"),
        }
        assert!(parse_spec("jwt,pub-key=a").is_err());
        assert!(parse_spec("jwt,sign-method=XX1").is_err());
    }

    #[test]
    fn simple_tokens_expire_without_use_and_die_with_the_user() {
        let p = TokenProvider::new(&TokenSpec::Simple, Duration::from_millis(200)).unwrap();
        let pre = p.gen_prefix();
        assert_eq!(pre.len(), 16);
        let t = p.assign("alice", 3, &pre, 42).unwrap();
        assert_eq!(t, format!("{pre}.42"));
        assert_eq!(p.info(&t).unwrap().username, "alice");
        std::thread::sleep(Duration::from_millis(120));
        assert!(p.info(&t).is_some(), "a use renews the token");
        std::thread::sleep(Duration::from_millis(120));
        assert!(p.info(&t).is_some());
        std::thread::sleep(Duration::from_millis(250));
        assert!(p.info(&t).is_none(), "expired after the ttl without use");
        let t2 = p.assign("bob", 3, &pre, 43).unwrap();
        p.invalidate_user("bob");
        assert!(p.info(&t2).is_none());
        assert!(p.info("nonsense").is_none());
    }

    #[test]
    fn hmac_jwt_roundtrip_and_tamper() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("secret");
        std::fs::write(&key, b"0123456789abcdef0123456789abcdef").unwrap();
        let spec = parse_spec(&format!(
            "jwt,priv-key={},sign-method=HS256,ttl=1m",
            key.display()
        ))
        .unwrap();
        let p = TokenProvider::new(&spec, Duration::from_secs(300)).unwrap();
        assert_eq!(p.gen_prefix(), "");
        let t = p.assign("alice", 9, "", 1).unwrap();
        assert_eq!(
            p.info(&t),
            Some(TokenInfo {
                username: "alice".into(),
                revision: Some(9)
            })
        );
        // Flip a character well inside the signature (not a padding bit).
        let mut bad: Vec<char> = t.chars().collect();
        let i = bad.len() - 5;
        bad[i] = if bad[i] == 'A' { 'B' } else { 'A' };
        let bad: String = bad.into_iter().collect();
        assert!(p.info(&bad).is_none());
    }
}
