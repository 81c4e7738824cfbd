//! The debug server (`http.debug.addr`): a listener of its own, never the registry's, serving
//! `/debug/health` always and the Prometheus text format at `http.debug.prometheus.path` when
//! metrics are enabled. Plain HTTP and no authentication, as in Distribution: bind it to
//! loopback or a private network.

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use metrics_exporter_prometheus::PrometheusHandle;

use super::health::Health;
use crate::config::Debug;

/// Binds the debug listener now (so a bad address stops the start) and serves it in the
/// background until the process ends.
pub async fn spawn(
    config: &Debug,
    health: Health,
    metrics: Option<PrometheusHandle>,
) -> Result<(), String> {
    let listener = tokio::net::TcpListener::bind(config.addr)
        .await
        .map_err(|e| format!("http.debug.addr: binding {}: {e}", config.addr))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let mut app = Router::new().route(
        "/debug/health",
        get(health_status).with_state(health.clone()),
    );
    if let (Some(path), Some(handle)) = (&config.prometheus, metrics) {
        app = app.route(path, get(render).with_state(handle));
    }
    tracing::info!(
        %addr,
        metrics = config.prometheus.as_deref().unwrap_or("off"),
        "debug server listening"
    );
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(%addr, error = %e, "debug server stopped");
        }
    });
    Ok(())
}

/// 200 `{}` when every check passes; 503 with each failing check and its error.
async fn health_status(State(health): State<Health>) -> Response {
    let failing = health.failing();
    let status = if failing.is_empty() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = serde_json::to_string(&failing).unwrap_or_else(|_| "{}".to_owned());
    (
        status,
        [(header::CONTENT_TYPE, "application/json; charset=utf-8")],
        body,
    )
        .into_response()
}

async fn render(State(handle): State<PrometheusHandle>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        handle.render(),
    )
        .into_response()
}
