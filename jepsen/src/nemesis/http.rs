//! Plain HTTP/1.1 requests to a node's client URL, for the debug endpoints
//! (failpoints, clock offset) that Strata serves when built with
//! `--features failpoints`.

use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;

/// Sends `method path` with `body` to `base` (`http://host:port`); returns
/// the status code (404 for a gRPC answer: no such debug route) and the
/// response body.
pub async fn request(
    base: &str,
    method: &str,
    path: &str,
    body: &str,
) -> anyhow::Result<(u16, String)> {
    let url: http::Uri = format!("{base}{path}").parse()?;
    let host = url.host().context("URL without host")?.to_string();
    let port = url.port_u16().unwrap_or(80);
    let fut = async {
        let stream = tokio::net::TcpStream::connect((host.as_str(), port)).await?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(conn);
        let req = http::Request::builder()
            .method(method)
            .uri(path)
            .header("host", format!("{host}:{port}"))
            .body(Full::new(Bytes::from(body.to_string())))?;
        let resp = sender.send_request(req).await?;
        // A server without the route may still answer 200 at the HTTP
        // level: the gRPC server's "unimplemented" (grpc-status 12) for any
        // path it does not know. That is a 404 here.
        let grpc = resp.headers().contains_key("grpc-status")
            || resp
                .headers()
                .get("content-type")
                .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
        let status = if grpc { 404 } else { resp.status().as_u16() };
        let body = resp.into_body().collect().await?.to_bytes();
        anyhow::Ok((status, String::from_utf8_lossy(&body).into_owned()))
    };
    tokio::time::timeout(Duration::from_secs(5), fut)
        .await
        .context("HTTP request timed out")?
}
