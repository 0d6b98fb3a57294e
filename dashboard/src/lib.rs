//! The web dashboard every coordinator serves beside `/metrics`: a single page (embedded in the
//! binary, no build step) over a JSON API under `/api/v1/`. The API asks the coordinator's own
//! gRPC services, which answer from the leader where a view must be current (jobs read
//! linearizably, executors only the leader knows), so a follower serves the same views.
//!
//! | path | what |
//! |---|---|
//! | `/api/v1/cluster` | members, leader, term, log indexes and lag per member |
//! | `/api/v1/executors` | slots, lease age, draining, subtasks per executor |
//! | `/api/v1/jobs` | every job with its status |
//! | `/api/v1/jobs/{id}` | graph with throughput, subtasks, checkpoints, history |
//! | `/api/v1/timeline` | leader changes, executor deaths, job restarts, newest first |

pub mod views;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use raftstream_api::client::{ClientError, ClusterClient};
use raftstream_proto::v1 as pb;
use serde::Serialize;

pub use views::TimelineEntry;

/// What the serving coordinator saw happen (leader changes, executor deaths and drains, job
/// restarts with their reasons), oldest first.
pub type LocalEvents = Arc<dyn Fn() -> Vec<TimelineEntry> + Send + Sync>;

/// How many entries `/api/v1/timeline` returns at most.
const TIMELINE_ENTRIES: usize = 200;

/// How long one API request waits for the cluster: the page refreshes every second and must say
/// soon that the cluster does not answer, rather than hang.
const API_PATIENCE: Duration = Duration::from_secs(3);

const INDEX_HTML: &str = include_str!("../assets/index.html");
const APP_JS: &str = include_str!("../assets/app.js");
const STYLE_CSS: &str = include_str!("../assets/style.css");

#[derive(Clone)]
struct Dashboard {
    node_id: u64,
    client: Arc<ClusterClient>,
    local_events: LocalEvents,
}

/// Why the dashboard cannot start.
#[derive(Debug, thiserror::Error)]
#[error("the dashboard's client of its own coordinator: {0}")]
pub struct DashboardError(#[from] ClientError);

/// The dashboard's routes for coordinator `node_id`, whose gRPC services listen on
/// `grpc_address`.
pub fn routes(node_id: u64, grpc_address: &str, local_events: LocalEvents) -> Result<Router, DashboardError> {
    let client = ClusterClient::new(&[grpc_address.to_owned()], API_PATIENCE)?.with_attempt_timeout(API_PATIENCE);
    let dashboard = Dashboard {
        node_id,
        client: Arc::new(client),
        local_events,
    };
    Ok(Router::new()
        .route("/", get(|| async { asset("text/html; charset=utf-8", INDEX_HTML) }))
        .route(
            "/dashboard/app.js",
            get(|| async { asset("text/javascript; charset=utf-8", APP_JS) }),
        )
        .route(
            "/dashboard/style.css",
            get(|| async { asset("text/css; charset=utf-8", STYLE_CSS) }),
        )
        .route("/api/v1/cluster", get(cluster))
        .route("/api/v1/executors", get(executors))
        .route("/api/v1/jobs", get(jobs))
        .route("/api/v1/jobs/{job_id}", get(job))
        .route("/api/v1/timeline", get(timeline))
        .with_state(dashboard))
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

/// An API answer: the view, or an error body saying what failed.
type ApiResult<T> = Result<Json<T>, ApiError>;

#[derive(Debug)]
struct ApiError {
    status: StatusCode,
    message: String,
}

#[derive(Serialize)]
struct ErrorBody {
    error: String,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(ErrorBody { error: self.message })).into_response()
    }
}

impl From<ClientError> for ApiError {
    fn from(error: ClientError) -> Self {
        let status = match &error {
            ClientError::Rejected(status) if status.code() == tonic::Code::NotFound => StatusCode::NOT_FOUND,
            ClientError::Rejected(status) if status.code() == tonic::Code::InvalidArgument => StatusCode::BAD_REQUEST,
            ClientError::Invalid(_) => StatusCode::BAD_REQUEST,
            _ => StatusCode::SERVICE_UNAVAILABLE,
        };
        ApiError {
            status,
            message: error.to_string(),
        }
    }
}

async fn cluster(State(dashboard): State<Dashboard>) -> ApiResult<views::ClusterView> {
    let status = dashboard.client.cluster_status().await?;
    Ok(Json(views::cluster_view(dashboard.node_id, &status)))
}

async fn executors(State(dashboard): State<Dashboard>) -> ApiResult<views::ExecutorsView> {
    let listed = dashboard.client.list_executors().await?;
    let jobs = dashboard.client.list_jobs(pb::ReadConsistency::Linearizable).await?;
    Ok(Json(views::executors_view(&listed, &jobs)))
}

#[derive(Serialize)]
struct JobsView {
    jobs: Vec<views::JobSummary>,
}

async fn jobs(State(dashboard): State<Dashboard>) -> ApiResult<JobsView> {
    let jobs = dashboard.client.list_jobs(pb::ReadConsistency::Linearizable).await?;
    Ok(Json(JobsView {
        jobs: jobs.iter().map(views::job_summary).collect(),
    }))
}

async fn job(State(dashboard): State<Dashboard>, Path(job_id): Path<String>) -> ApiResult<views::JobView> {
    let job = dashboard
        .client
        .get_job(&job_id, pb::ReadConsistency::Linearizable)
        .await?;
    let checkpoints = dashboard.client.list_checkpoints(&job_id).await?;
    // Metrics come from the leader's memory of executor reports: a job that ended or a leader
    // that just took over may have none, which leaves the throughput blank, not the view.
    let metrics = dashboard.client.get_job_metrics(&job_id).await.ok();
    let mut view = views::job_view(&job, &checkpoints, metrics.as_ref());
    view.restarts = (dashboard.local_events)()
        .into_iter()
        .filter(|entry| entry.kind == "restart" && entry.job_id == job.job_id)
        .map(|entry| views::EventView {
            at_ms: entry.at_ms,
            what: entry.what,
        })
        .collect();
    Ok(Json(view))
}

#[derive(Serialize)]
struct TimelineView {
    /// The coordinator that saw the leader changes, deaths and restarts listed (each node
    /// keeps what it saw since it started; rescales and moves come from the replicated state).
    served_by: u64,
    entries: Vec<views::TimelineEntry>,
}

async fn timeline(State(dashboard): State<Dashboard>) -> ApiResult<TimelineView> {
    let jobs = dashboard.client.list_jobs(pb::ReadConsistency::Linearizable).await?;
    let local = (dashboard.local_events)();
    Ok(Json(TimelineView {
        served_by: dashboard.node_id,
        entries: views::timeline(&local, &jobs, TIMELINE_ENTRIES),
    }))
}
