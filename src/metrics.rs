//! Prometheus metrics on a loopback `/metrics` endpoint (text exposition format).

use std::net::SocketAddr;
use std::sync::Arc;

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Method, Request, Response, StatusCode};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::fence::{FenceState, FenceStatus};

#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    /// The listen address could not be bound.
    #[error("cannot listen for metrics on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabel {
    pub state: &'static str,
}

/// Every metric the agent exports.
pub struct Metrics {
    registry: Registry,
    pub fence_state: Family<StateLabel, Gauge>,
    pub fence_transitions: Family<StateLabel, Counter>,
    pub fence_epoch: Gauge,
    pub renew_seconds: Histogram,
    pub renew_failures: Counter,
    pub holding_age: Gauge<f64, std::sync::atomic::AtomicU64>,
    pub nvme_ops: Family<OpResult, Counter>,
    pub nvme_op_seconds: Family<OpLabel, Histogram>,
    pub nvme_failures: Family<OpReason, Counter>,
    pub nvme_volumes: Family<StateLabel, Gauge>,
    pub nvme_volumes_lost: Counter,
    pub snapshot_jobs: Family<StateLabel, Gauge>,
    pub snapshot_step_seconds: Family<OpLabel, Histogram>,
    pub snapshot_cow_aborts: Counter,
    pub claim_decisions: Family<OutcomeLabel, Counter>,
    pub claim_handoff_waits: Counter,
    pub claim_migrations: Family<OutcomeLabel, Counter>,
    pub reservation_ops: Family<OpResult, Counter>,
    pub reservation_conflicts: Counter,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OpLabel {
    pub op: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OpResult {
    pub op: &'static str,
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OpReason {
    pub op: &'static str,
    pub reason: &'static str,
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("volfence");
        registry.register(
            "build",
            "Build information",
            Info::new(vec![("version", env!("CARGO_PKG_VERSION"))]),
        );
        let fence_state = Family::<StateLabel, Gauge>::default();
        registry.register(
            "fence_state",
            "1 for the fence's current state, 0 for the others",
            fence_state.clone(),
        );
        let fence_transitions = Family::<StateLabel, Counter>::default();
        registry.register(
            "fence_transitions",
            "Fence state transitions, by the state entered",
            fence_transitions.clone(),
        );
        let fence_epoch = Gauge::default();
        registry.register(
            "fence_epoch",
            "Fencing token of the current or last lease holding",
            fence_epoch.clone(),
        );
        let renew_seconds =
            Histogram::new([0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0]);
        registry.register(
            "fence_renew_duration_seconds",
            "Time from sending a lease renew to its answer (or timeout)",
            renew_seconds.clone(),
        );
        let renew_failures = Counter::default();
        registry.register(
            "fence_renew_failures",
            "Lease renews that did not extend validity",
            renew_failures.clone(),
        );
        let holding_age = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
        registry.register(
            "fence_holding_age_seconds",
            "How long the current lease holding has lasted, as of its last renew",
            holding_age.clone(),
        );
        let nvme_ops = Family::<OpResult, Counter>::default();
        registry.register(
            "nvme_operations",
            "NVMe volume connects and disconnects, by result (ok or error)",
            nvme_ops.clone(),
        );
        let nvme_op_seconds = Family::<OpLabel, Histogram>::new_with_constructor(|| {
            Histogram::new([0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0])
        });
        registry.register(
            "nvme_operation_duration_seconds",
            "Time a connect (until the device is usable) or disconnect (until it is gone) took",
            nvme_op_seconds.clone(),
        );
        let nvme_failures = Family::<OpReason, Counter>::default();
        registry.register(
            "nvme_operation_failures",
            "Failed NVMe volume operations, by reason",
            nvme_failures.clone(),
        );
        let nvme_volumes = Family::<StateLabel, Gauge>::default();
        registry.register(
            "nvme_volumes",
            "Volumes this agent holds, by state (live, degraded, reconnecting, dead, ...)",
            nvme_volumes.clone(),
        );
        let nvme_volumes_lost = Counter::default();
        registry.register(
            "nvme_volumes_lost",
            "Times a volume lost every path",
            nvme_volumes_lost.clone(),
        );
        let snapshot_jobs = Family::<StateLabel, Gauge>::default();
        registry.register(
            "snapshot_jobs",
            "Snapshot jobs known to the agent, by phase",
            snapshot_jobs.clone(),
        );
        let snapshot_step_seconds = Family::<OpLabel, Histogram>::new_with_constructor(|| {
            Histogram::new([
                0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0,
            ])
        });
        registry.register(
            "snapshot_step_duration_seconds",
            "Time per snapshot step (create, mount, executor, cleanup)",
            snapshot_step_seconds.clone(),
        );
        let snapshot_cow_aborts = Counter::default();
        registry.register(
            "snapshot_cow_aborts",
            "Snapshot jobs stopped because the COW area reached snapshots.cow_abort_percent",
            snapshot_cow_aborts.clone(),
        );
        let claim_decisions = Family::<OutcomeLabel, Counter>::default();
        registry.register(
            "claim_decisions",
            "Claim decisions of Connects and re-checks, by outcome (taken, reused, restamped, taken_over, joined, conflict, lost)",
            claim_decisions.clone(),
        );
        let claim_handoff_waits = Counter::default();
        registry.register(
            "claim_handoff_waits",
            "Connects that waited for another host's claim being released",
            claim_handoff_waits.clone(),
        );
        let claim_migrations = Family::<OutcomeLabel, Counter>::default();
        registry.register(
            "claim_migrations",
            "Live migrations of volumes by outcome (joined, refused, completed, left, expired)",
            claim_migrations.clone(),
        );
        let reservation_ops = Family::<OpResult, Counter>::default();
        registry.register(
            "reservation_ops",
            "NVMe reservation commands sent, by op (register, replace, acquire, evict, retype, preempt_abort, unregister, report) and result (ok, conflict, error)",
            reservation_ops.clone(),
        );
        let reservation_conflicts = Counter::default();
        registry.register(
            "reservation_conflicts",
            "Checks that found a volume's reservation held by a key this host does not know while its claim is this host's",
            reservation_conflicts.clone(),
        );
        Metrics {
            reservation_ops,
            reservation_conflicts,
            claim_decisions,
            claim_handoff_waits,
            claim_migrations,
            snapshot_jobs,
            snapshot_step_seconds,
            snapshot_cow_aborts,
            nvme_ops,
            nvme_op_seconds,
            nvme_failures,
            nvme_volumes,
            nvme_volumes_lost,
            registry,
            fence_state,
            fence_transitions,
            fence_epoch,
            renew_seconds,
            renew_failures,
            holding_age,
        }
    }

    /// Counts one claim decision.
    pub fn observe_claim(&self, outcome: &'static str) {
        self.claim_decisions
            .get_or_create(&OutcomeLabel { outcome })
            .inc();
    }

    /// Counts one reservation command.
    pub fn observe_reservation(&self, op: &'static str, result: &'static str) {
        self.reservation_ops
            .get_or_create(&OpResult { op, result })
            .inc();
    }

    /// Counts one migration step.
    pub fn observe_migration(&self, outcome: &'static str) {
        self.claim_migrations
            .get_or_create(&OutcomeLabel { outcome })
            .inc();
    }

    /// Records one NVMe volume operation.
    pub fn observe_nvme(
        &self,
        op: &'static str,
        took: std::time::Duration,
        failure: Option<&'static str>,
    ) {
        self.nvme_ops
            .get_or_create(&OpResult {
                op,
                result: if failure.is_some() { "error" } else { "ok" },
            })
            .inc();
        self.nvme_op_seconds
            .get_or_create(&OpLabel { op })
            .observe(took.as_secs_f64());
        if let Some(reason) = failure {
            self.nvme_failures
                .get_or_create(&OpReason { op, reason })
                .inc();
        }
    }

    /// Records a fence status; counts a transition when the state changed.
    pub fn observe_fence(&self, prev: Option<FenceState>, now: &FenceStatus) {
        for s in FenceState::ALL {
            self.fence_state
                .get_or_create(&StateLabel { state: s.as_str() })
                .set(i64::from(s == now.state));
        }
        if prev != Some(now.state) {
            self.fence_transitions
                .get_or_create(&StateLabel {
                    state: now.state.as_str(),
                })
                .inc();
        }
        self.fence_epoch.set(now.epoch as i64);
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String");
        out
    }
}

impl crate::fence::RenewRecorder for Metrics {
    fn renew(&self, latency: std::time::Duration, ok: bool, holding_age: std::time::Duration) {
        self.renew_seconds.observe(latency.as_secs_f64());
        if !ok {
            self.renew_failures.inc();
        }
        self.holding_age.set(holding_age.as_secs_f64());
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

/// Binds now (so a taken port fails startup), serves until `shutdown`.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, MetricsError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| MetricsError::Bind { addr, source })
}

/// What one client of the endpoint may hold. It listens on loopback, so every local user can
/// connect: with no bound, idle connections pile up until the agent has no file descriptor left
/// for its lease renew. At the limit the agent stops accepting and new connections wait in the
/// kernel's backlog, which costs the agent nothing.
pub const MAX_CONNECTIONS: usize = 32;
/// A request's headers must arrive within this (slowloris).
pub const HEADER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);
/// A connection is closed after this, whatever it is doing (keep-alive included): a client that
/// never reads its answer cannot hold a slot.
pub const CONNECTION_LIFETIME: std::time::Duration = std::time::Duration::from_secs(30);

/// Serves until `shutdown`, within [`MAX_CONNECTIONS`], [`HEADER_TIMEOUT`] and
/// [`CONNECTION_LIFETIME`]. Accept errors (EMFILE, ENFILE, ...) back off up to 1 s and are logged
/// at most once a minute.
pub async fn serve(listener: TcpListener, metrics: Arc<Metrics>, shutdown: CancellationToken) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let mut throttle = crate::logging::Throttle::new(std::time::Duration::from_secs(60));
    let mut backoff = std::time::Duration::ZERO;
    loop {
        let slot = tokio::select! {
            _ = shutdown.cancelled() => return,
            s = slots.clone().acquire_owned() => s.expect("the semaphore is never closed"),
        };
        let stream = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = listener.accept() => match r {
                Ok((stream, _)) => { backoff = std::time::Duration::ZERO; stream }
                Err(e) => {
                    backoff = (backoff * 2).clamp(std::time::Duration::from_millis(10), std::time::Duration::from_secs(1));
                    if let Some(swallowed) = throttle.due() {
                        tracing::warn!("metrics endpoint: cannot accept a connection: {e} (backing off; {swallowed} more since the last such line)");
                    }
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    continue;
                }
            },
        };
        let (metrics, shutdown) = (metrics.clone(), shutdown.clone());
        tokio::spawn(async move {
            let _slot = slot;
            let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                let metrics = metrics.clone();
                async move { Ok::<_, std::convert::Infallible>(respond(&req, &metrics)) }
            });
            let io = hyper_util::rt::TokioIo::new(stream);
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(io, svc);
            tokio::select! {
                _ = shutdown.cancelled() => {}
                _ = tokio::time::sleep(CONNECTION_LIFETIME) => {}
                _ = conn => {}
            }
        });
    }
}

fn respond<B>(req: &Request<B>, metrics: &Metrics) -> Response<Full<Bytes>> {
    let reply = |status, ctype: &str, body: String| {
        Response::builder()
            .status(status)
            .header("content-type", ctype)
            .body(Full::new(Bytes::from(body)))
            .expect("static response parts")
    };
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/metrics") => reply(
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            metrics.encode(),
        ),
        (_, "/metrics") => reply(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "only GET\n".into(),
        ),
        _ => reply(StatusCode::NOT_FOUND, "text/plain", "see /metrics\n".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fence_metrics_follow_the_state() {
        let m = Metrics::new();
        let s = FenceStatus {
            state: FenceState::Held,
            epoch: 4,
            valid_until: None,
            message: String::new(),
        };
        m.observe_fence(Some(FenceState::Acquiring), &s);
        m.observe_fence(Some(FenceState::Held), &s);
        let text = m.encode();
        assert!(
            text.contains("volfence_fence_state{state=\"held\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("volfence_fence_state{state=\"fenced\"} 0"),
            "{text}"
        );
        assert!(
            text.contains("volfence_fence_transitions_total{state=\"held\"} 1"),
            "{text}"
        );
        assert!(text.contains("volfence_fence_epoch 4"), "{text}");
        assert!(text.contains("volfence_build_info{version=\""), "{text}");
        use crate::fence::RenewRecorder;
        m.renew(
            std::time::Duration::from_millis(30),
            true,
            std::time::Duration::from_secs(12),
        );
        m.renew(
            std::time::Duration::from_millis(2500),
            false,
            std::time::Duration::from_secs(14),
        );
        let text = m.encode();
        assert!(
            text.contains("volfence_fence_renew_duration_seconds_count 2"),
            "{text}"
        );
        assert!(
            text.contains("volfence_fence_renew_duration_seconds_bucket{le=\"0.05\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("volfence_fence_renew_failures_total 1"),
            "{text}"
        );
        assert!(
            text.contains("volfence_fence_holding_age_seconds 14"),
            "{text}"
        );
    }
}
