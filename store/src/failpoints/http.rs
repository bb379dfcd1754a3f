//! failpoints::http: the `/debug/failpoints`, `/debug/clock` and
//! `/debug/powerfail` routes (test builds; see the [parent module](super)
//! for what each does). Merged into the client port's HTTP routes.

use axum::extract::Path;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use http::StatusCode;

/// The debug routes.
pub fn router() -> axum::Router {
    axum::Router::new()
        .route("/debug/failpoints", get(list))
        .route(
            "/debug/failpoints/{name}",
            get(get_one).put(put_one).delete(delete_one),
        )
        .route("/debug/clock", get(get_clock).put(put_clock))
        .route("/debug/powerfail", post(powerfail))
}

async fn list() -> String {
    super::list()
        .into_iter()
        .map(|(name, actions)| format!("{name}={actions}\n"))
        .collect()
}

async fn get_one(Path(name): Path<String>) -> Response {
    match super::list().into_iter().find(|(n, _)| *n == name) {
        Some((_, actions)) => format!("{actions}\n").into_response(),
        None => (
            StatusCode::NOT_FOUND,
            format!("failpoint {name} is not set\n"),
        )
            .into_response(),
    }
}

async fn put_one(Path(name): Path<String>, body: String) -> Response {
    let actions = body.trim();
    if actions.is_empty() {
        return (StatusCode::BAD_REQUEST, "empty actions\n").into_response();
    }
    // Replacing a `pause` wakes the paused threads, which `fail` waits for.
    let (n, a) = (name.clone(), actions.to_string());
    let r = tokio::task::spawn_blocking(move || super::set(&n, &a))
        .await
        .unwrap_or_else(|e| Err(e.to_string()));
    match r {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => (
            StatusCode::BAD_REQUEST,
            format!("failpoint {name}: bad actions {actions:?}: {e}\n"),
        )
            .into_response(),
    }
}

async fn delete_one(Path(name): Path<String>) -> StatusCode {
    // Removing wakes threads paused on it; do not hold a runtime worker
    // while `fail` takes its locks.
    let _ = tokio::task::spawn_blocking(move || super::remove(&name)).await;
    StatusCode::NO_CONTENT
}

fn clock_json(offset_ms: f64, rate: f64) -> Response {
    (
        [(http::header::CONTENT_TYPE, "application/json")],
        serde_json::json!({ "offset_ms": offset_ms, "rate": rate }).to_string(),
    )
        .into_response()
}

async fn get_clock() -> Response {
    let (o, r) = super::clock::global().get();
    clock_json(o, r)
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ClockBody {
    offset_ms: Option<f64>,
    rate: Option<f64>,
}

async fn put_clock(body: String) -> Response {
    let b: ClockBody = match serde_json::from_str(&body) {
        Ok(b) => b,
        Err(e) => {
            return (
                StatusCode::BAD_REQUEST,
                format!("want {{\"offset_ms\": N}} and/or {{\"rate\": R}}: {e}\n"),
            )
                .into_response()
        }
    };
    if b.offset_ms.is_none() && b.rate.is_none() {
        return (StatusCode::BAD_REQUEST, "give offset_ms and/or rate\n").into_response();
    }
    match super::clock::global().set(b.offset_ms, b.rate) {
        Ok((o, r)) => clock_json(o, r),
        Err(e) => (StatusCode::BAD_REQUEST, format!("{e}\n")).into_response(),
    }
}

async fn powerfail() -> StatusCode {
    // Blocks (for in-flight writes) and aborts: never answers.
    let _ = tokio::task::spawn_blocking(|| super::powerfail::powerfail()).await;
    StatusCode::INTERNAL_SERVER_ERROR
}
