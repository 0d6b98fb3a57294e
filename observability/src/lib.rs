//! The HTTP side of every Raftstream process, beside its gRPC port: `/metrics` (Prometheus),
//! `/healthz` (the process is up) and `/readyz` (it can do its job: a coordinator in a cluster
//! with a known leader, an executor with a session), plus whatever routes the process adds (the
//! coordinators' dashboard), and the cause chain errors are logged with.
//!
//! Metrics are kept in a `prometheus-client` registry, which encodes OpenMetrics. Prometheus asks
//! for OpenMetrics in its `Accept` header and gets it; any other client (curl, `promtool check
//! metrics`, older scrapers) gets the classic text format 0.0.4, where a counter's family carries
//! its `_total` suffix and there are no `# UNIT`/`# EOF` lines.

mod error_chain;
mod exposition;
mod families;
pub mod promtool;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;

pub use error_chain::{chain, ErrorChain};
pub use exposition::{encode, negotiate, ExpositionFormat};
pub use families::{single, Families, Labels};
pub use prometheus_client;

/// Whether a process can do its job now, and if not, why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Readiness {
    Ready,
    NotReady(String),
}

/// Answers `/readyz`; called on every request, so it must be cheap and must not block.
pub type ReadinessCheck = Arc<dyn Fn() -> Readiness + Send + Sync>;

/// Why the HTTP listener could not start.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("binding the HTTP listener on {address}: {source}")]
    Bind {
        address: SocketAddr,
        source: std::io::Error,
    },
    #[error("serving HTTP: {0}")]
    Serve(std::io::Error),
}

/// What one process serves over HTTP.
pub struct HttpService {
    registry: Arc<Registry>,
    readiness: ReadinessCheck,
    routes: Router,
}

#[derive(Clone)]
struct Shared {
    registry: Arc<Registry>,
    readiness: ReadinessCheck,
}

impl HttpService {
    /// Metrics from `registry`, readiness from `readiness`.
    pub fn new(registry: Registry, readiness: ReadinessCheck) -> Self {
        HttpService {
            registry: Arc::new(registry),
            readiness,
            routes: Router::new(),
        }
    }

    /// Serves `routes` too (their paths must not be the three above).
    pub fn with_routes(mut self, routes: Router) -> Self {
        self.routes = self.routes.merge(routes);
        self
    }

    /// The routes, for a server or a test.
    pub fn router(self) -> Router {
        let shared = Shared {
            registry: self.registry,
            readiness: self.readiness,
        };
        Router::new()
            .route("/metrics", get(metrics))
            .route("/healthz", get(|| async { "ok\n" }))
            .route("/readyz", get(ready))
            .with_state(shared)
            .merge(self.routes)
    }
}

async fn metrics(State(shared): State<Shared>, headers: HeaderMap) -> Response {
    let accept = headers.get(header::ACCEPT).and_then(|value| value.to_str().ok());
    let format = negotiate(accept);
    match encode(&shared.registry, format) {
        Ok(body) => ([(header::CONTENT_TYPE, format.content_type())], body).into_response(),
        Err(error) => {
            tracing::warn!(%error, "encoding the metrics failed");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("encoding the metrics failed: {error}\n"),
            )
                .into_response()
        }
    }
}

async fn ready(State(shared): State<Shared>) -> Response {
    match (shared.readiness)() {
        Readiness::Ready => (StatusCode::OK, "ready\n").into_response(),
        Readiness::NotReady(reason) => {
            (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {reason}\n")).into_response()
        }
    }
}

/// Binds the HTTP listener (before serving, so a bad address fails the process at start).
pub async fn bind(address: SocketAddr) -> Result<tokio::net::TcpListener, HttpError> {
    tokio::net::TcpListener::bind(address)
        .await
        .map_err(|source| HttpError::Bind { address, source })
}

/// Serves `service` on `listener` until `shutdown` is cancelled.
pub async fn serve(
    listener: tokio::net::TcpListener,
    service: HttpService,
    shutdown: CancellationToken,
) -> Result<(), HttpError> {
    if let Ok(address) = listener.local_addr() {
        tracing::info!(%address, "serving HTTP: /metrics /healthz /readyz");
    }
    axum::serve(listener, service.router())
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
        .map_err(HttpError::Serve)
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};

    use prometheus_client::metrics::counter::Counter;

    use super::*;

    #[tokio::test]
    async fn serves_metrics_in_the_asked_format_health_and_readiness_with_its_reason() {
        let mut registry = Registry::with_prefix("raftstream");
        let requests: Counter = Counter::default();
        registry.register("test_requests", "Requests seen by the test", requests.clone());
        requests.inc_by(3);
        let ready = Arc::new(AtomicBool::new(false));
        let readiness: ReadinessCheck = {
            let ready = ready.clone();
            Arc::new(move || {
                if ready.load(Ordering::Relaxed) {
                    Readiness::Ready
                } else {
                    Readiness::NotReady("no leader known".to_owned())
                }
            })
        };
        let listener = bind("127.0.0.1:0".parse().expect("address")).await.expect("bind");
        let address = listener.local_addr().expect("address");
        let shutdown = CancellationToken::new();
        let server = tokio::spawn(serve(listener, HttpService::new(registry, readiness), shutdown.clone()));
        let client = reqwest::Client::new();
        let base = format!("http://{address}");

        let text = client.get(format!("{base}/metrics")).send().await.expect("scrape");
        assert_eq!(text.status(), 200);
        assert!(text.headers()[header::CONTENT_TYPE]
            .to_str()
            .expect("ascii")
            .starts_with("text/plain; version=0.0.4"));
        let body = text.text().await.expect("body");
        assert!(
            body.contains("# TYPE raftstream_test_requests_total counter\n"),
            "{body}"
        );
        assert!(body.contains("raftstream_test_requests_total 3\n"), "{body}");
        assert!(!body.contains("# EOF"), "{body}");

        let open_metrics = client
            .get(format!("{base}/metrics"))
            .header(
                header::ACCEPT,
                "application/openmetrics-text;version=1.0.0,text/plain;q=0.5",
            )
            .send()
            .await
            .expect("scrape");
        assert!(open_metrics.headers()[header::CONTENT_TYPE]
            .to_str()
            .expect("ascii")
            .starts_with("application/openmetrics-text"));
        let body = open_metrics.text().await.expect("body");
        assert!(body.contains("# TYPE raftstream_test_requests counter\n"), "{body}");
        assert!(body.ends_with("# EOF\n"), "{body}");

        let health = client.get(format!("{base}/healthz")).send().await.expect("healthz");
        assert_eq!(health.status(), 200);
        let not_ready = client.get(format!("{base}/readyz")).send().await.expect("readyz");
        assert_eq!(not_ready.status(), 503);
        assert!(not_ready.text().await.expect("body").contains("no leader known"));
        ready.store(true, Ordering::Relaxed);
        let now_ready = client.get(format!("{base}/readyz")).send().await.expect("readyz");
        assert_eq!(now_ready.status(), 200);
        let missing = client.get(format!("{base}/nothing")).send().await.expect("404");
        assert_eq!(missing.status(), 404);

        shutdown.cancel();
        server.await.expect("joined").expect("served until shutdown");
    }

    #[tokio::test]
    async fn an_address_in_use_is_an_error_naming_it() {
        let taken = bind("127.0.0.1:0".parse().expect("address")).await.expect("bind");
        let address = taken.local_addr().expect("address");
        let error = bind(address).await.expect_err("in use");
        assert!(error.to_string().contains(&address.to_string()), "{error}");
    }
}
