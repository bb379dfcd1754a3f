//! server::tls: TLS for the client, metrics and peer listeners and for the
//! connections this member dials to its peers, on one stack (rustls with
//! the ring provider).
//!
//! It owns reading the PEM files named by the TLS flags (certificates, keys,
//! CA bundles, CRLs), generating the self-signed certificates of
//! `--auto-tls`/`--peer-auto-tls` (kept in `<data-dir>/fixtures/{client,peer}`
//! and reused across restarts, as etcd does), the accept side of https
//! listeners ([`tls_incoming`]: handshakes run concurrently, failed ones are
//! logged as "rejected connection" and never reach the server), and the
//! dial side of peer connections ([`PeerDialer`]: https peer URLs get TLS
//! with the peer certificate as the client certificate).
//!
//! [`client_cert_common_name`] gives handlers the CN of a request's
//! verified client certificate (etcd makes it the auth user name).
//!
//! It never decides who is allowed to do what beyond the handshake (and the
//! `--peer-cert-allowed-cn` check), and never reads files after startup.
//! Called by [`crate::node::Node::start`] ([`Tls::load`]) and by the
//! listeners in [`crate::server`].

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{
    CertificateDer, CertificateRevocationListDer, PrivateKeyDer, ServerName, UnixTime,
};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::server::TlsStream;
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};

use crate::config::{Config, TlsInfo, TlsVersion};

/// How long a client has to finish the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Errors of loading or generating TLS material; all are startup errors.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file named by a flag could not be read (etcd's wording).
    #[error("open {path}: {reason}")]
    Open {
        /// The file.
        path: String,
        /// Why, e.g. "no such file or directory".
        reason: String,
    },
    /// A file held no usable PEM item of the expected kind.
    #[error("{path}: {what}")]
    Pem {
        /// The file.
        path: String,
        /// What is wrong with it.
        what: String,
    },
    /// The flags do not make a usable TLS setup.
    #[error("{0}")]
    Config(String),
    /// rustls refused the material (e.g. a key that does not match the cert).
    #[error("{context}: {source}")]
    Rustls {
        /// What was being built.
        context: String,
        /// rustls's reason.
        source: rustls::Error,
    },
    /// Writing a self-signed certificate failed.
    #[error("cannot generate a self-signed certificate in {dir}: {reason}")]
    SelfCert {
        /// The fixtures directory.
        dir: String,
        /// Why.
        reason: String,
    },
}

/// `Result` of this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The protocol versions between `--tls-min-version` and `--tls-max-version`.
fn versions(info: &TlsInfo) -> Vec<&'static rustls::SupportedProtocolVersion> {
    let mut v = Vec::new();
    if info.min_version <= TlsVersion::Tls13 && info.max_version >= TlsVersion::Tls13 {
        v.push(&rustls::version::TLS13);
    }
    if info.min_version <= TlsVersion::Tls12 && info.max_version >= TlsVersion::Tls12 {
        v.push(&rustls::version::TLS12);
    }
    v
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| Error::Open {
        path: path.display().to_string(),
        reason: match e.kind() {
            io::ErrorKind::NotFound => "no such file or directory".into(),
            io::ErrorKind::PermissionDenied => "permission denied".into(),
            _ => e.to_string(),
        },
    })
}

fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    let pem = read(path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| Error::Pem {
            path: path.display().to_string(),
            what: format!("invalid PEM: {e}"),
        })?;
    if certs.is_empty() {
        return Err(Error::Pem {
            path: path.display().to_string(),
            what: "no PEM certificate found".into(),
        });
    }
    Ok(certs)
}

fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>> {
    let pem = read(path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| Error::Pem {
        path: path.display().to_string(),
        what: format!("no usable PEM private key found: {e}"),
    })
}

fn load_crls(path: &Path) -> Result<Vec<CertificateRevocationListDer<'static>>> {
    let pem = read(path)?;
    CertificateRevocationListDer::pem_slice_iter(&pem)
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| Error::Pem {
            path: path.display().to_string(),
            what: format!("invalid PEM certificate revocation list: {e}"),
        })
}

fn load_roots(path: &Path) -> Result<RootCertStore> {
    let mut roots = RootCertStore::empty();
    for c in load_certs(path)? {
        roots.add(c).map_err(|e| Error::Rustls {
            context: format!("{}: unusable CA certificate", path.display()),
            source: e,
        })?;
    }
    Ok(roots)
}

/// The cert and key files of one side, generating self-signed ones for
/// auto-TLS when none are given. `None`: no certificate configured.
fn cert_and_key(
    info: &TlsInfo,
    fixtures: &Path,
    hosts: &[String],
    validity_years: u32,
) -> Result<Option<(PathBuf, PathBuf)>> {
    match (&info.cert_file, &info.key_file) {
        (Some(c), Some(k)) => Ok(Some((c.clone(), k.clone()))),
        (Some(_), None) | (None, Some(_)) => Err(Error::Config(
            "both a certificate and a key file are needed (--cert-file/--key-file, --peer-cert-file/--peer-key-file)"
                .into(),
        )),
        (None, None) if info.auto_tls => self_cert(fixtures, hosts, validity_years).map(Some),
        (None, None) => Ok(None),
    }
}

/// etcd's SelfCert: reuse `cert.pem`/`key.pem` in `dir`, or generate an
/// ECDSA P-256 certificate valid for `hosts` (server and client auth).
pub fn self_cert(dir: &Path, hosts: &[String], validity_years: u32) -> Result<(PathBuf, PathBuf)> {
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    if cert.exists() && key.exists() {
        return Ok((cert, key));
    }
    let fail = |reason: String| Error::SelfCert {
        dir: dir.display().to_string(),
        reason,
    };
    let mut names: Vec<String> = hosts.to_vec();
    names.sort();
    names.dedup();
    let mut params = rcgen::CertificateParams::new(names).map_err(|e| fail(e.to_string()))?;
    params
        .distinguished_name
        .push(rcgen::DnType::OrganizationName, "etcd");
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::DigitalSignature,
        rcgen::KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![
        rcgen::ExtendedKeyUsagePurpose::ServerAuth,
        rcgen::ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let year = 1970 + (now.as_secs() / 31_556_952) as i32;
    params.not_before = rcgen::date_time_ymd(year - 1, 1, 1);
    params.not_after = rcgen::date_time_ymd(year + validity_years.max(1) as i32, 12, 31);
    let kp = rcgen::KeyPair::generate().map_err(|e| fail(e.to_string()))?;
    let c = params.self_signed(&kp).map_err(|e| fail(e.to_string()))?;
    std::fs::create_dir_all(dir).map_err(|e| fail(e.to_string()))?;
    write_private(&key, kp.serialize_pem().as_bytes()).map_err(|e| fail(e.to_string()))?;
    std::fs::write(&cert, c.pem()).map_err(|e| fail(e.to_string()))?;
    tracing::info!(cert = %cert.display(), hosts = ?hosts, "generated a self-signed certificate (auto TLS)");
    Ok((cert, key))
}

fn write_private(path: &Path, data: &[u8]) -> io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(data)?;
    f.sync_all()
}

/// A server config for one side: its certificate, and the client
/// certificate check of `--client-cert-auth`/`--peer-client-cert-auth`.
fn server_config(info: &TlsInfo, cert: &Path, key: &Path) -> Result<Arc<ServerConfig>> {
    let p = provider();
    let builder = ServerConfig::builder_with_provider(p.clone())
        .with_protocol_versions(&versions(info))
        .map_err(|e| Error::Rustls {
            context: "TLS versions".into(),
            source: e,
        })?;
    // As etcd: a trusted CA alone also makes client certificates required.
    let builder = if info.client_cert_auth || info.trusted_ca_file.is_some() {
        let ca = info.trusted_ca_file.as_deref().ok_or_else(|| {
            Error::Config(
                "client certificate authentication needs a trusted CA file (--trusted-ca-file / --peer-trusted-ca-file)"
                    .into(),
            )
        })?;
        let mut v = WebPkiClientVerifier::builder_with_provider(Arc::new(load_roots(ca)?), p);
        if let Some(crl) = &info.crl_file {
            v = v.with_crls(load_crls(crl)?);
        }
        let v = v.build().map_err(|e| {
            Error::Config(format!(
                "cannot verify client certificates with {}: {e}",
                ca.display()
            ))
        })?;
        builder.with_client_cert_verifier(v)
    } else {
        builder.with_no_client_auth()
    };
    let mut cfg = builder
        .with_single_cert(load_certs(cert)?, load_key(key)?)
        .map_err(|e| Error::Rustls {
            context: format!("{} / {}", cert.display(), key.display()),
            source: e,
        })?;
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

fn hosts_of(urls: &[url::Url]) -> Vec<String> {
    let mut h: Vec<String> = urls
        .iter()
        .filter_map(|u| u.host_str())
        .map(|h| h.trim_start_matches('[').trim_end_matches(']').to_string())
        .collect();
    h.push("127.0.0.1".into());
    h.push("localhost".into());
    h
}

/// The TLS material of a member, loaded once at startup.
#[derive(Clone, Default)]
pub struct Tls {
    /// For https client and metrics listeners; `None` when no certificate
    /// is configured.
    pub client: Option<Arc<ServerConfig>>,
    /// For https peer listeners.
    pub peer: Option<Arc<ServerConfig>>,
    /// `--client-cert-allowed-hostname`.
    pub client_rule: ClientCertRule,
    /// `--peer-cert-allowed-cn`, `--peer-cert-allowed-hostname`.
    pub peer_rule: ClientCertRule,
    /// Dials peers (TLS on https peer URLs).
    pub dialer: PeerDialer,
}

impl Tls {
    /// Read (or generate) everything the flags name. Errors carry etcd's
    /// wording where it has one.
    pub fn load(cfg: &Config) -> Result<Tls> {
        let https = |u: &url::Url| u.scheme() == "https";
        let fixtures = cfg.data_dir.join("fixtures");
        let validity = cfg.self_signed_cert_validity;
        let mut out = Tls {
            client_rule: ClientCertRule {
                cn: None,
                hostname: cfg.client_tls.allowed_hostname.clone(),
            },
            peer_rule: ClientCertRule {
                cn: cfg.peer_tls.allowed_cn.clone(),
                hostname: cfg.peer_tls.allowed_hostname.clone(),
            },
            ..Default::default()
        };
        let client_urls: Vec<url::Url> = cfg
            .listen_client_urls
            .iter()
            .chain(&cfg.listen_metrics_urls)
            .cloned()
            .collect();
        let client_cert = cert_and_key(
            &cfg.client_tls,
            &fixtures.join("client"),
            &hosts_of(&client_urls),
            validity,
        )?;
        match &client_cert {
            Some((c, k)) => out.client = Some(server_config(&cfg.client_tls, c, k)?),
            None => {
                if let Some(u) = cfg.listen_client_urls.iter().find(|u| https(u)) {
                    return Err(Error::Config(format!(
                        "TLS key/cert (--cert-file, --key-file) must be provided for client url {} with HTTPS scheme",
                        u.as_str().trim_end_matches('/')
                    )));
                }
                if let Some(u) = cfg.listen_metrics_urls.iter().find(|u| https(u)) {
                    return Err(Error::Config(format!(
                        "cannot listen on TLS for {}: KeyFile and CertFile are not presented",
                        host_port(u)
                    )));
                }
            }
        }
        let peer_cert = cert_and_key(
            &cfg.peer_tls,
            &fixtures.join("peer"),
            &hosts_of(&cfg.listen_peer_urls),
            validity,
        )?;
        match &peer_cert {
            Some((c, k)) => out.peer = Some(server_config(&cfg.peer_tls, c, k)?),
            None => {
                if let Some(u) = cfg.listen_peer_urls.iter().find(|u| https(u)) {
                    return Err(Error::Config(format!(
                        "cannot listen on TLS for {}: KeyFile and CertFile are not presented",
                        host_port(u)
                    )));
                }
            }
        }
        out.dialer = PeerDialer::new(&cfg.peer_tls, peer_cert.as_ref())?;
        let https_peer = cfg
            .initial_cluster
            .values()
            .flatten()
            .any(|u| u.starts_with("https://"));
        if https_peer && out.dialer.tls.is_none() {
            tracing::warn!(
                "https peer URLs, but neither --peer-trusted-ca-file nor --peer-auto-tls is set: \
                 this member cannot dial its peers"
            );
        }
        Ok(out)
    }
}

fn host_port(u: &url::Url) -> String {
    format!(
        "{}:{}",
        u.host_str().unwrap_or(""),
        u.port_or_known_default().unwrap_or(0)
    )
}

// ---------------------------------------------------------------- accept side

/// Accepted TLS connections of `listener`. Handshakes run concurrently,
/// each bounded in time, so a slow or hostile client cannot stall the
/// others; a failed one is logged ("rejected connection", as etcd logs it)
/// and dropped, and so is one whose client certificate breaks `rule`. The
/// accept task ends when the returned stream is dropped.
pub fn tls_incoming(
    listener: TcpListener,
    config: Arc<ServerConfig>,
    rule: ClientCertRule,
) -> impl futures::Stream<Item = io::Result<TlsStream<TcpStream>>> {
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    // Bounded: accepted connections wait here until the server takes them.
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(async move {
        loop {
            let (tcp, remote) = tokio::select! {
                _ = tx.closed() => return,
                r = listener.accept() => match r {
                    Ok(x) => x,
                    Err(e) => {
                        tracing::debug!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    }
                },
            };
            let _ = tcp.set_nodelay(true);
            let (acceptor, tx, rule) = (acceptor.clone(), tx.clone(), rule.clone());
            tokio::spawn(async move {
                let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await
                {
                    Ok(Ok(s)) => s,
                    Ok(Err(e)) => {
                        tracing::warn!(remote_addr = %remote, error = %e, "rejected connection");
                        return;
                    }
                    Err(_) => {
                        tracing::warn!(remote_addr = %remote, "rejected connection: TLS handshake timed out");
                        return;
                    }
                };
                let cert = tls.get_ref().1.peer_certificates().and_then(|c| c.first());
                if let Err(why) = rule.check(cert) {
                    tracing::warn!(remote_addr = %remote, "rejected connection: {why}");
                    return;
                }
                let _ = tx.send(Ok(tls)).await;
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

/// What a verified client certificate must also satisfy:
/// `--peer-cert-allowed-cn` (its CN) and `--client-cert-allowed-hostname` /
/// `--peer-cert-allowed-hostname` (a SAN matching the host name or IP, with
/// `*.` wildcards, as Go's VerifyHostname).
#[derive(Clone, Debug, Default)]
pub struct ClientCertRule {
    /// The only CN accepted.
    pub cn: Option<String>,
    /// A host name (or IP) the certificate must be valid for.
    pub hostname: Option<String>,
}

impl ClientCertRule {
    /// Ok, or why `cert` (the client's leaf certificate, if it sent one)
    /// is refused.
    pub fn check(&self, cert: Option<&CertificateDer<'_>>) -> std::result::Result<(), String> {
        if let Some(want) = &self.cn {
            let cn = cert.and_then(|c| common_name(c));
            if cn.as_deref() != Some(want.as_str()) {
                return Err(format!(
                    "client certificate CN {cn:?} is not the allowed one ({want})"
                ));
            }
        }
        if let Some(host) = &self.hostname {
            if !cert.is_some_and(|c| valid_for_host(c, host)) {
                return Err(format!(
                    "client certificate is not valid for the allowed hostname {host}"
                ));
            }
        }
        Ok(())
    }
}

/// Whether a DER certificate's SANs cover `host` (an IP or a DNS name).
pub fn valid_for_host(der: &[u8], host: &str) -> bool {
    use x509_parser::extensions::GeneralName;
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else {
        return false;
    };
    let Ok(Some(san)) = cert.subject_alternative_name() else {
        return false;
    };
    let ip: Option<std::net::IpAddr> = host.trim_matches(['[', ']']).parse().ok();
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    san.value.general_names.iter().any(|n| match (n, ip) {
        (GeneralName::IPAddress(b), Some(std::net::IpAddr::V4(v4))) => *b == v4.octets(),
        (GeneralName::IPAddress(b), Some(std::net::IpAddr::V6(v6))) => *b == v6.octets(),
        (GeneralName::DNSName(d), None) => {
            let d = d.trim_end_matches('.').to_ascii_lowercase();
            match d.strip_prefix("*.") {
                Some(rest) => host
                    .split_once('.')
                    .is_some_and(|(first, tail)| !first.is_empty() && tail == rest),
                None => d == host,
            }
        }
        _ => false,
    })
}

/// The Common Name of a DER certificate's subject.
pub fn common_name(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let cn = cert
        .subject()
        .iter_common_name()
        .next()?
        .as_str()
        .ok()?
        .to_string();
    Some(cn)
}

/// The CN of the verified client certificate of the connection a gRPC
/// request came on: `None` on plain connections, on TLS connections without
/// a client certificate, and on certificates without a CN. The handshake
/// has already verified the certificate against `--trusted-ca-file` (only
/// `--client-cert-auth` listeners ask for one), so the CN can be trusted as
/// etcd trusts it: as the user name for auth.
pub fn client_cert_common_name<T>(req: &tonic::Request<T>) -> Option<String> {
    req.extensions()
        .get::<TlsConnectInfo<TcpConnectInfo>>()
        .and_then(|i| i.peer_certs())
        .and_then(|certs| certs.first().and_then(|c| common_name(c)))
}

// ------------------------------------------------------------------ dial side

/// Dials peers: plain for http URLs, TLS for https ones, presenting the
/// peer certificate (if any) as the client certificate and verifying the
/// peer's server certificate against `--peer-trusted-ca-file` (not at all
/// with `--peer-auto-tls` and no CA, as etcd).
#[derive(Clone, Default)]
pub struct PeerDialer {
    tls: Option<Arc<ClientConfig>>,
}

impl PeerDialer {
    fn new(info: &TlsInfo, cert: Option<&(PathBuf, PathBuf)>) -> Result<PeerDialer> {
        let p = provider();
        let builder = ClientConfig::builder_with_provider(p.clone())
            .with_protocol_versions(&versions(info))
            .map_err(|e| Error::Rustls {
                context: "TLS versions".into(),
                source: e,
            })?;
        let builder = match &info.trusted_ca_file {
            Some(ca) => builder.with_root_certificates(load_roots(ca)?),
            None if info.auto_tls => builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(NoServerVerification(p))),
            // https peer URLs cannot be dialed: no way to trust the peer.
            None => return Ok(PeerDialer { tls: None }),
        };
        let mut cfg = match cert {
            Some((c, k)) => builder
                .with_client_auth_cert(load_certs(c)?, load_key(k)?)
                .map_err(|e| Error::Rustls {
                    context: format!("{} / {}", c.display(), k.display()),
                    source: e,
                })?,
            None => builder.with_no_client_auth(),
        };
        cfg.alpn_protocols = vec![b"h2".to_vec()];
        Ok(PeerDialer {
            tls: Some(Arc::new(cfg)),
        })
    }

    /// An endpoint for peer URL `url` with the given connect timeout.
    pub fn endpoint(
        url: &str,
        connect_timeout: Duration,
    ) -> Result<PeerEndpoint, tonic::transport::Error> {
        // tonic refuses https URIs unless its own TLS connector is
        // configured; ours does TLS below the URI, so the URI says http.
        let tls = url.starts_with("https://");
        let plain = if tls {
            url.replacen("https://", "http://", 1)
        } else {
            url.to_string()
        };
        let endpoint = tonic::transport::Endpoint::from_shared(plain)?
            .connect_timeout(connect_timeout)
            .tcp_nodelay(true);
        Ok(PeerEndpoint { endpoint, tls })
    }

    /// Connect now.
    pub async fn connect(
        &self,
        ep: &PeerEndpoint,
    ) -> Result<tonic::transport::Channel, tonic::transport::Error> {
        if ep.tls {
            ep.endpoint.connect_with_connector(self.connector()).await
        } else {
            ep.endpoint.connect().await
        }
    }

    /// Connect on first use.
    pub fn connect_lazy(&self, ep: &PeerEndpoint) -> tonic::transport::Channel {
        if ep.tls {
            ep.endpoint.connect_with_connector_lazy(self.connector())
        } else {
            ep.endpoint.connect_lazy()
        }
    }

    fn connector(
        &self,
    ) -> impl tower::Service<
        http::Uri,
        Response = hyper_util::rt::TokioIo<tokio_rustls::client::TlsStream<TcpStream>>,
        Error = io::Error,
        Future = impl Send,
    > + Clone
           + Send
           + 'static {
        let tls = self.tls.clone();
        tower::service_fn(move |uri: http::Uri| {
            let tls = tls.clone();
            async move {
                let tls = tls.ok_or_else(|| {
                    io::Error::other(
                        "https peer URL, but no peer TLS is configured (--peer-trusted-ca-file or --peer-auto-tls)",
                    )
                })?;
                let host = uri
                    .host()
                    .ok_or_else(|| io::Error::other("peer URL without a host"))?
                    .trim_start_matches('[')
                    .trim_end_matches(']')
                    .to_string();
                let port = uri.port_u16().unwrap_or(443);
                let tcp = TcpStream::connect((host.as_str(), port)).await?;
                let _ = tcp.set_nodelay(true);
                let name = ServerName::try_from(host)
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
                let s = tokio_rustls::TlsConnector::from(tls)
                    .connect(name, tcp)
                    .await?;
                Ok(hyper_util::rt::TokioIo::new(s))
            }
        })
    }
}

/// A peer endpoint: tonic's endpoint settings, and whether the peer URL
/// is https.
#[derive(Clone, Debug)]
pub struct PeerEndpoint {
    endpoint: tonic::transport::Endpoint,
    tls: bool,
}

impl PeerEndpoint {
    /// Adjust the tonic endpoint settings.
    pub fn map(
        self,
        f: impl FnOnce(tonic::transport::Endpoint) -> tonic::transport::Endpoint,
    ) -> Self {
        PeerEndpoint {
            endpoint: f(self.endpoint),
            tls: self.tls,
        }
    }
}

/// `--peer-auto-tls` without a CA: encrypt, but accept any server
/// certificate (etcd's InsecureSkipVerify for self-signed peers). The
/// handshake signature is still checked, so the peer holds the key of the
/// certificate it showed.
#[derive(Debug)]
struct NoServerVerification(Arc<CryptoProvider>);

impl ServerCertVerifier for NoServerVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert_with_cn(cn: Option<&str>) -> Vec<u8> {
        let mut p = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()]).unwrap();
        p.distinguished_name = rcgen::DistinguishedName::new();
        p.distinguished_name
            .push(rcgen::DnType::OrganizationName, "org");
        if let Some(cn) = cn {
            p.distinguished_name.push(rcgen::DnType::CommonName, cn);
        }
        let kp = rcgen::KeyPair::generate().unwrap();
        p.self_signed(&kp).unwrap().der().to_vec()
    }

    #[test]
    fn common_name_of_generated_certs() {
        assert_eq!(
            common_name(&cert_with_cn(Some("alice"))).as_deref(),
            Some("alice")
        );
        assert_eq!(
            common_name(&cert_with_cn(Some("root"))).as_deref(),
            Some("root")
        );
        assert_eq!(common_name(&cert_with_cn(None)), None);
        assert_eq!(common_name(b"not a certificate"), None);
    }

    #[test]
    fn client_cert_rules_check_cn_and_hostname() {
        let mut p = rcgen::CertificateParams::new(vec![
            "127.0.0.1".to_string(),
            "node1.example.com".to_string(),
            "*.peers.example.com".to_string(),
        ])
        .unwrap();
        p.distinguished_name
            .push(rcgen::DnType::CommonName, "etcd-peer");
        let kp = rcgen::KeyPair::generate().unwrap();
        let der = p.self_signed(&kp).unwrap().der().clone();
        for host in [
            "127.0.0.1",
            "node1.example.com",
            "NODE1.example.com",
            "a.peers.example.com",
        ] {
            assert!(valid_for_host(&der, host), "{host}");
        }
        for host in [
            "127.0.0.2",
            "node2.example.com",
            "a.b.peers.example.com",
            "peers.example.com",
        ] {
            assert!(!valid_for_host(&der, host), "{host}");
        }
        let rule = |cn: Option<&str>, host: Option<&str>| ClientCertRule {
            cn: cn.map(str::to_string),
            hostname: host.map(str::to_string),
        };
        assert!(rule(None, None).check(None).is_ok());
        assert!(rule(Some("etcd-peer"), Some("127.0.0.1"))
            .check(Some(&der))
            .is_ok());
        assert!(rule(Some("other"), None).check(Some(&der)).is_err());
        assert!(rule(None, Some("10.0.0.1")).check(Some(&der)).is_err());
        assert!(
            rule(Some("etcd-peer"), None).check(None).is_err(),
            "no certificate"
        );
    }

    #[test]
    fn request_without_tls_has_no_common_name() {
        let req = tonic::Request::new(());
        assert_eq!(client_cert_common_name(&req), None);
    }

    #[test]
    fn self_cert_is_generated_once_and_reused() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("fixtures/client");
        let hosts = vec!["127.0.0.1".to_string(), "localhost".to_string()];
        let (c, k) = self_cert(&dir, &hosts, 1).unwrap();
        let first = std::fs::read(&c).unwrap();
        let (c2, _) = self_cert(&dir, &hosts, 1).unwrap();
        assert_eq!(
            std::fs::read(&c2).unwrap(),
            first,
            "reused, not regenerated"
        );
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&k).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        // It loads as a server certificate.
        server_config(&TlsInfo::default(), &c, &k).unwrap();
    }

    #[test]
    fn tls_versions_follow_the_flags() {
        let v = |min, max| {
            versions(&TlsInfo {
                min_version: min,
                max_version: max,
                ..Default::default()
            })
            .iter()
            .map(|v| v.version)
            .collect::<Vec<_>>()
        };
        use rustls::ProtocolVersion::{TLSv1_2, TLSv1_3};
        use TlsVersion::*;
        assert_eq!(v(Tls12, Tls13), vec![TLSv1_3, TLSv1_2]);
        assert_eq!(v(Tls13, Tls13), vec![TLSv1_3]);
        assert_eq!(v(Tls12, Tls12), vec![TLSv1_2]);
    }

    #[test]
    fn missing_and_bad_files_are_clear_errors() {
        let e = load_certs(Path::new("/nonexistent/c.pem")).unwrap_err();
        assert_eq!(
            e.to_string(),
            "open /nonexistent/c.pem: no such file or directory"
        );
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("empty.pem");
        std::fs::write(&p, "hello\n").unwrap();
        let e = load_certs(&p).unwrap_err().to_string();
        assert!(e.contains("no PEM certificate found"), "{e}");
        let e = load_key(&p).unwrap_err().to_string();
        assert!(e.contains("no usable PEM private key"), "{e}");
    }
}
