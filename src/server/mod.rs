//! The OCI Distribution API v1.1 on a [`layerstore::Store`], using only the library's public
//! API. Bodies stream in both directions, so memory does not grow with blob size.

mod access;
mod auth;
mod debug;
mod error;
mod handlers;
mod health;
mod logging;
mod metrics;
mod notify;
mod routes;
mod scheduled_gc;
mod tls;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, Query, Request, State};
use axum::http::{HeaderName, HeaderValue, Method, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use layerstore::Store;
use layerstore::upload::Purger;

use crate::config::{Auth, Config, TokenConfig};
use auth::Authorizer;
use error::ApiError;
use health::Health;
use routes::Route;
use scheduled_gc::ScheduledGc;

/// What every request handler shares.
#[derive(Clone)]
pub struct AppState {
    pub store: Store,
    pub delete_enabled: bool,
    /// `storage.maintenance.readonly`: every route the access table marks as a write is
    /// answered 405.
    pub read_only: bool,
    /// `None`: an open registry.
    pub authorizer: Option<Arc<dyn Authorizer>>,
    /// With notifications, the scheme clients reach the registry by (`http` or `https`): each
    /// request then carries its details for the events it causes (see [`notify`]).
    pub events_scheme: Option<&'static str>,
}

/// What the outermost layer adds to every request: `http.headers` on the response, and the
/// access log line unless `log.accesslog.disabled`.
#[derive(Clone)]
pub struct Decor {
    pub headers: Arc<Vec<(HeaderName, Vec<HeaderValue>)>>,
    pub access_log: bool,
}

/// The registry's HTTP application. With health checks, every request is answered 503 while
/// one fails (see [`health`]); with `metrics`, every request is counted.
pub fn app(state: AppState, decor: Decor, health: Health, metrics: bool) -> Router {
    let mut router = Router::new()
        .route("/v2", axum::routing::any(v2))
        .route("/v2/", axum::routing::any(v2))
        .route("/v2/{*rest}", axum::routing::any(v2))
        .fallback(|| async { ApiError::not_found() });
    if health.is_checked() {
        router = router.layer(middleware::from_fn_with_state(health, unless_unhealthy));
    }
    if metrics {
        router = router.layer(middleware::from_fn(metrics::record));
    }
    router
        .layer(middleware::from_fn_with_state(decor, log_and_version))
        .with_state(state)
}

/// 503 `UNAVAILABLE` while a health check fails, as Distribution's `health.Handler` answers.
async fn unless_unhealthy(State(health): State<Health>, request: Request, next: Next) -> Response {
    if health.failing().is_empty() {
        next.run(request).await
    } else {
        ApiError::new(
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            "UNAVAILABLE",
            "health check failed: please see /debug/health",
        )
        .into_response()
    }
}

async fn v2(
    State(state): State<AppState>,
    Query(query): Query<HashMap<String, String>>,
    request: Request,
) -> Response {
    let (parts, body) = request.into_parts();
    let rest = parts.uri.path().strip_prefix("/v2").unwrap_or("");
    let rest = rest.strip_prefix('/').unwrap_or(rest);
    let Some(route) = Route::parse(rest) else {
        return ApiError::not_found().into_response();
    };
    let user = match admit(&state, &route, &parts.method, &parts.headers, &query).await {
        Ok(user) => user,
        Err(e) => return e.into_response(),
    };
    let context = state
        .events_scheme
        .map(|scheme| request_context(&parts, user, scheme));
    let req = handlers::Request {
        meta: handlers::Meta {
            method: parts.method,
            query,
            headers: parts.headers,
        },
        body,
    };
    let handled = match context {
        Some(context) => notify::in_request(context, handlers::dispatch(&state, route, req)).await,
        None => handlers::dispatch(&state, route, req).await,
    };
    match handled {
        Ok(response) => response,
        Err(e) => e.into_response(),
    }
}

/// What the events of a request say of it, as Distribution's `RequestRecord` and URL builder
/// read a request: the client address from `X-Forwarded-For`, `X-Real-Ip` or the peer, the
/// host from `X-Forwarded-Host` or `Host`, the scheme from `X-Forwarded-Proto` or the listener.
fn request_context(
    parts: &axum::http::request::Parts,
    actor: Option<String>,
    scheme: &str,
) -> notify::RequestContext {
    let text = |name: &str| {
        parts
            .headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|v| !v.is_empty())
    };
    // The first of a proxy header's list: the client, or the host and scheme it asked for.
    let first = |name: &str| text(name).map(|v| v.split(',').next().unwrap_or(v).trim());
    let peer = parts
        .extensions
        .get::<ConnectInfo<std::net::SocketAddr>>()
        .map(|ConnectInfo(addr)| addr.to_string());
    let addr = first("x-forwarded-for")
        .or_else(|| text("x-real-ip"))
        .map(str::to_owned)
        .or(peer)
        .unwrap_or_default();
    let host = first("x-forwarded-host")
        .or_else(|| text(header::HOST.as_str()))
        .or_else(|| parts.uri.authority().map(|a| a.as_str()))
        .unwrap_or_default();
    notify::RequestContext {
        id: uuid::Uuid::new_v4().to_string(),
        addr,
        host: host.to_owned(),
        method: parts.method.to_string(),
        user_agent: text(header::USER_AGENT.as_str())
            .unwrap_or_default()
            .to_owned(),
        actor,
        scheme: first("x-forwarded-proto").unwrap_or(scheme).to_owned(),
    }
}

/// Whether the request may go on, by the access table: the authorizer decides on the access
/// the route needs (credentials first, as Distribution checks them), then read-only mode
/// refuses whatever pushes or deletes. `Ok` carries the authenticated user, if any.
async fn admit(
    state: &AppState,
    route: &Route<'_>,
    method: &Method,
    headers: &axum::http::HeaderMap,
    query: &HashMap<String, String>,
) -> Result<Option<String>, ApiError> {
    let needed = access::required(route, method, query)?;
    let mut user = None;
    if let Some(authorizer) = &state.authorizer {
        match authorizer.authorize(headers, &needed).await {
            auth::Decision::Allow { user: name } => user = Some(name),
            denied => return Err(denied.into_error().unwrap_or_else(ApiError::not_found)),
        }
    }
    let endpoint = route.endpoint();
    if state.read_only && access::rule(endpoint, method).is_some_and(access::Need::writes) {
        let allow = access::allowed_methods(endpoint, state.delete_enabled, true);
        return Err(ApiError::unsupported(
            "the registry is read-only (storage.maintenance.readonly): pushes and deletes are \
             refused",
        )
        .with_header(header::ALLOW, allow));
    }
    Ok(user)
}

/// Adds the API version header and the configured `http.headers` to every response (a header
/// the response sets itself keeps its value, as a Distribution handler's own header replaces
/// the configured one), and logs each request (the access log) unless it is disabled.
async fn log_and_version(
    State(decor): State<Decor>,
    request: Request<Body>,
    next: Next,
) -> Response {
    let (method, path) = (request.method().clone(), request.uri().path().to_owned());
    let started = Instant::now();
    let mut response = next.run(request).await;
    response.headers_mut().insert(
        "docker-distribution-api-version",
        HeaderValue::from_static("registry/2.0"),
    );
    for (name, values) in decor.headers.iter() {
        if !response.headers().contains_key(name) {
            for value in values {
                response.headers_mut().append(name.clone(), value.clone());
            }
        }
    }
    if !decor.access_log {
        return response;
    }
    let bytes = response
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    tracing::info!(
        target: "layerstore::access",
        %method,
        path,
        status = response.status().as_u16(),
        bytes,
        duration_ms = started.elapsed().as_secs_f64() * 1000.0,
        "request"
    );
    response
}

/// Serves until SIGINT or SIGTERM; in-flight requests finish first (or, if a client's body
/// stops midway, leave their upload session resumable at its last persisted offset).
pub async fn serve(config: Config) -> Result<(), String> {
    logging::init(&config.log);
    raise_open_files_limit();
    for warning in &config.warnings {
        tracing::warn!("configuration: {warning}");
    }
    let authorizer = authorizer(&config).await?;
    let exporter = match config
        .http
        .debug
        .as_ref()
        .and_then(|d| d.prometheus.as_ref())
    {
        Some(_) => Some(metrics::install()?),
        None => None,
    };
    if exporter.is_some() {
        notify::describe_metrics();
    }
    let mut store = config.open_store()?;
    let notifier = notify::Notifier::spawn(&config.notifications, event_source(&config))?;
    let events_scheme = notifier.is_some().then_some(if config.http.tls.is_some() {
        "https"
    } else {
        "http"
    });
    if let Some(notifier) = notifier {
        store = store.with_events(notifier);
    }
    let health = Health::spawn(
        &store,
        &config.storage.backend,
        config.health.storage_driver,
    );
    if let Some(debug) = &config.http.debug {
        debug::spawn(debug, health.clone(), exporter.clone()).await?;
    }
    let read_only = config.storage.read_only;
    let (purger, gc) = if read_only {
        tracing::info!(
            "read-only mode: pushes and deletes are refused; upload purging and scheduled \
             garbage collection do not run"
        );
        (None, None)
    } else {
        (
            Purger::spawn(store.clone(), config.storage.purging),
            ScheduledGc::spawn(store.clone(), config.storage.gc),
        )
    };
    let app = app(
        AppState {
            store,
            delete_enabled: config.storage.delete_enabled,
            read_only,
            authorizer,
            events_scheme,
        },
        Decor {
            headers: Arc::new(config.http.headers.clone()),
            access_log: config.log.access_log,
        },
        health,
        exporter.is_some(),
    );
    let addr = config.http.addr;
    let result = match &config.http.tls {
        Some(tls) => {
            let rustls = tls::rustls_config(tls)
                .await
                .map_err(|e| format!("http.tls: {e}"))?;
            let handle = axum_server::Handle::new();
            let shutdown = handle.clone();
            tokio::spawn(async move {
                shutdown_signal().await;
                shutdown.graceful_shutdown(Some(Duration::from_secs(30)));
            });
            let listening = handle.clone();
            tokio::spawn(async move {
                if let Some(addr) = listening.listening().await {
                    announce(addr, "https");
                }
            });
            // TCP_NODELAY on every connection, as on the plain listener below.
            let acceptor = axum_server::tls_rustls::RustlsAcceptor::new(rustls)
                .acceptor(axum_server::accept::NoDelayAcceptor::new());
            axum_server::bind(addr)
                .acceptor(acceptor)
                .handle(handle)
                .serve(app.into_make_service_with_connect_info::<std::net::SocketAddr>())
                .await
                .map_err(|e| format!("serving on {addr}: {e}"))
        }
        None => {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|e| format!("binding {addr}: {e}"))?;
            let local = listener.local_addr().map_err(|e| e.to_string())?;
            announce(local, "http");
            let app = app.into_make_service_with_connect_info::<std::net::SocketAddr>();
            axum::serve(without_nagle(listener), app)
                .with_graceful_shutdown(shutdown_signal())
                .await
                .map_err(|e| format!("serving on {addr}: {e}"))
        }
    };
    if let Some(purger) = purger {
        purger.stop().await;
    }
    if let Some(gc) = gc {
        gc.stop().await;
    }
    tracing::info!("stopped");
    result
}

/// The `source` of every event: this host's name with the registry's port, as Distribution
/// gives it, and an id made at start.
fn event_source(config: &Config) -> notify::Source {
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty());
    let addr = match hostname {
        Some(host) => format!("{host}:{}", config.http.addr.port()),
        None => config.http.addr.to_string(),
    };
    notify::Source {
        addr,
        instance_id: uuid::Uuid::new_v4().to_string(),
    }
}

/// The authorizer `auth` configures; `None` for an open registry.
async fn authorizer(config: &Config) -> Result<Option<Arc<dyn Authorizer>>, String> {
    match &config.auth {
        Auth::None => Ok(None),
        Auth::Htpasswd(h) => {
            if config.http.tls.is_none() {
                tracing::warn!(
                    "auth.htpasswd without http.tls: Basic credentials cross the network in \
                     clear text unless TLS ends at a proxy in front of this server"
                );
            }
            let htpasswd = auth::htpasswd::Htpasswd::open(&h.realm, &h.path)
                .await
                .map_err(|e| format!("auth.htpasswd: {e}"))?;
            Ok(Some(htpasswd))
        }
        Auth::Token(token) => token_authorizer(token),
    }
}

/// The `auth.token` authorizer: bearer tokens of the Docker token specification, checked
/// against the keys of `rootcertbundle` and/or `jwks` (read once, at start).
fn token_authorizer(token: &TokenConfig) -> Result<Option<Arc<dyn Authorizer>>, String> {
    let authorizer = auth::bearer::TokenAuthorizer::new(token_settings(token))?;
    tracing::info!(
        realm = token.realm,
        service = token.service,
        issuer = token.issuer,
        "token auth: every request needs a bearer token from the realm"
    );
    Ok(Some(Arc::new(authorizer)))
}

/// The verifier's settings for `auth.token`.
fn token_settings(token: &TokenConfig) -> auth::token::Settings {
    auth::token::Settings {
        realm: token.realm.clone(),
        service: token.service.clone(),
        issuer: token.issuer.clone(),
        root_cert_bundle: token.root_cert_bundle.clone(),
        jwks: token.jwks.clone(),
        autoredirect: token.auto_redirect,
        autoredirect_path: None,
    }
}

/// What `check-config` checks beyond the configuration's text: that the auth kind can start
/// (the token keys load, the htpasswd file holds only bcrypt entries). A description of what was loaded, or why it cannot start.
pub fn check_auth(config: &Config) -> Result<Option<String>, String> {
    match &config.auth {
        Auth::Token(token) => {
            auth::bearer::TokenAuthorizer::new(token_settings(token))?;
            Ok(Some("auth.token: the signing keys load".to_owned()))
        }
        Auth::Htpasswd(h) => {
            let table =
                auth::htpasswd::Table::load(&h.path).map_err(|e| format!("auth.htpasswd: {e}"))?;
            Ok(Some(format!(
                "auth.htpasswd: {} users with bcrypt entries",
                table.users()
            )))
        }
        Auth::None => Ok(None),
    }
}

/// Sets `TCP_NODELAY` on every connection `listener` accepts. A response's head and body
/// leave in separate writes, and with Nagle's algorithm the body of a small one (a 4 KiB blob,
/// a manifest) waits for the client's delayed ACK: 40 ms on Linux, per request.
/// (A named type rather than `impl Listener`: axum gives each request its peer's address,
/// for the notifications' `request.addr`, only for a `TapIo` over its `TcpListener`.)
fn without_nagle(
    listener: tokio::net::TcpListener,
) -> axum::serve::TapIo<tokio::net::TcpListener, fn(&mut tokio::net::TcpStream)> {
    use axum::serve::ListenerExt as _;
    fn nodelay(stream: &mut tokio::net::TcpStream) {
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(error = %e, "TCP_NODELAY not set on a connection");
        }
    }
    listener.tap_io(nodelay as fn(&mut tokio::net::TcpStream))
}

/// Prints the bound address on stdout (tests and scripts read it, e.g. with `--addr :0`).
fn announce(addr: std::net::SocketAddr, scheme: &str) {
    println!("layerstore listening on {scheme}://{addr}");
    tracing::info!(%addr, "listening");
}

/// Raises the soft limit on open files to the hard limit, as Go servers (CNCF Distribution's
/// among them) do at start. Each client the server holds costs file descriptors (a stalled
/// upload: its connection and its session's lock, state and data files), so this limit bounds
/// how many stalled or slow clients it can hold while serving the others; a soft limit of
/// 1024 would make that a few hundred. Logs the limit in force.
#[cfg(target_os = "linux")]
fn raise_open_files_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read or write the struct they are given.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &raw mut limit) } != 0 {
        let error = std::io::Error::last_os_error();
        tracing::warn!(%error, "cannot read the limit on open files");
        return;
    }
    let before = limit.rlim_cur;
    if limit.rlim_cur < limit.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: limit.rlim_max,
            rlim_max: limit.rlim_max,
        };
        // SAFETY: as above.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raw const raised) } == 0 {
            limit = raised;
        } else {
            let error = std::io::Error::last_os_error();
            let hard = limit.rlim_max;
            tracing::warn!(%error, soft = before, hard, "cannot raise the limit on open files");
        }
    }
    tracing::info!(
        limit = limit.rlim_cur,
        was = before,
        "limit on open files (it bounds the clients served at once)"
    );
}

#[cfg(not(target_os = "linux"))]
fn raise_open_files_limit() {}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
    tracing::info!("shutting down: finishing in-flight requests");
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::serve::Listener as _;

    #[tokio::test]
    async fn accepted_connections_send_without_waiting_for_acks() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut listener = without_nagle(listener);
        let _client = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (accepted, _) = listener.accept().await;
        assert!(accepted.nodelay().unwrap());
    }
}
