//! `/metrics` (Prometheus text format) and `/health` on `metrics_listen`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use tokio_util::sync::CancellationToken;

use crate::fanout::Gauges;
use crate::metrics::Metrics;

#[derive(Clone)]
struct St {
    metrics: Arc<Metrics>,
    gauges: Gauges,
    ready: Arc<AtomicBool>,
}

/// Binds the endpoint (errors name the key) and serves it until shutdown. `/health`
/// answers 503 until `ready` is set (every input listening, so a DNS server can connect
/// and a unit's start-up wait is over), 200 after.
pub async fn start(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    gauges: Gauges,
    ready: Arc<AtomicBool>,
    shutdown: CancellationToken,
) -> Result<tokio::task::JoinHandle<()>, String> {
    let l = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| format!("metrics_listen: cannot listen on {addr}: {e}"))?;
    tracing::info!(
        "metrics on http://{}/metrics",
        l.local_addr().map_err(|e| e.to_string())?
    );
    let app = Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/health", get(health))
        .with_state(St {
            metrics,
            gauges,
            ready,
        });
    Ok(tokio::spawn(async move {
        let _ = axum::serve(l, app)
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await;
    }))
}

async fn metrics_handler(axum::extract::State(st): axum::extract::State<St>) -> impl IntoResponse {
    st.gauges.refresh();
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        st.metrics.encode(),
    )
}

async fn health(axum::extract::State(st): axum::extract::State<St>) -> impl IntoResponse {
    let (status, body) = if st.ready.load(Ordering::Acquire) {
        (StatusCode::OK, "{\"status\":\"ok\"}\n")
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "{\"status\":\"starting\"}\n",
        )
    };
    (status, [(header::CONTENT_TYPE, "application/json")], body)
}
