//! Prometheus metrics of one node, kept in `prometheus-client` types and exposed at
//! `/metrics` in the Prometheus text format 0.0.4; the layer that times every request.

use crate::State;
use axum::extract::{MatchedPath, Request};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use prometheus_client::encoding::{prometheus_text, EncodeLabelSet};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};
use std::ops::Deref;
use std::sync::atomic::AtomicU64;
use std::time::Instant;

/// A monotonic counter. It also reads as the `AtomicU64` inside it, so `fetch_add` works
/// where `inc_by` reads less well; nothing ever stores into it or subtracts.
#[derive(Clone, Debug, Default)]
pub struct Count(Counter);

impl Count {
    pub fn inc(&self) {
        self.0.inc();
    }

    pub fn inc_by(&self, n: u64) {
        self.0.inc_by(n);
    }

    pub fn get(&self) -> u64 {
        self.0.get()
    }
}

impl Deref for Count {
    type Target = AtomicU64;

    fn deref(&self) -> &AtomicU64 {
        self.0.inner()
    }
}

/// What the engine, the trigger workers and the API count and time on this node; the
/// figures read from elsewhere (running attempts, readiness, executions by state) are
/// sampled when `/metrics` is read.
pub struct Metrics {
    pub attempts_started: Count,
    pub attempts_finished: Count,
    pub attempts_fenced: Count,
    pub executions_submitted: Count,
    pub takeovers: Count,
    pub lease_renewal_failures: Count,
    /// Store outages this node's attempts rode through (every member reported it), and the
    /// rides that ended by killing the attempts (docs/design/store-outage.md).
    pub store_outage_rides: Count,
    pub store_outage_rides_ended: Count,
    pub log_bytes_written: Count,
    /// Schedule firings this node recorded, by whether they started an execution.
    pub firings_started: Count,
    pub firings_skipped: Count,
    /// Listener events this node recorded (webhooks included).
    pub events_recorded: Count,
    /// Firings and events another node had claimed first (work both nodes looked at).
    pub claims_lost: Count,
    /// Audit rows this node wrote to the store, and dropped because its queue was full.
    pub audit_recorded: Count,
    pub audit_dropped: Count,
    /// Store reads made by log followers (`logs?follow=true`) on this node: one per wake,
    /// never a poll per follower.
    pub log_follow_reads: Count,
    /// Seconds from when an execution became runnable (its submission, or its `run_after`
    /// when held or retried) to its attempt's process start here; a job with no process
    /// starts when it is claimed. The wait up to the claim is on the store's clock, the rest
    /// on this node's monotonic clock.
    pub dispatch_latency: Histogram,
    /// Seconds from a schedule's firing time to the creation of its execution, on the
    /// store's clock; a firing claimed ahead of its time counts as 0 (its execution is held
    /// until then, which dispatch latency measures).
    pub firing_lateness: Histogram,
    /// Executions taken by each claim that took any.
    pub claim_batch_size: Histogram,
    /// Seconds from a request's arrival at the router to its response head, by route
    /// template and status: a streamed body (a followed log, a download) is not included.
    http_requests: Family<HttpLabels, Histogram>,
}

/// Dispatch latency: a few milliseconds on an idle node, minutes behind a full queue.
const DISPATCH_BUCKETS: [f64; 14] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0];
/// Firing lateness: 0 when claimed ahead, up to hours for a catch-up after an outage.
const LATENESS_BUCKETS: [f64; 13] = [0.0, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 60.0, 600.0, 3600.0];
/// Claim sizes: a claim takes at most 256 rows (and never more than the free slots).
const BATCH_BUCKETS: [f64; 9] = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0];
/// Request duration: a millisecond for a read, seconds for an upload or a slow store.
const HTTP_BUCKETS: [f64; 13] = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

fn http_histogram() -> Histogram {
    Histogram::new(HTTP_BUCKETS)
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            attempts_started: Count::default(),
            attempts_finished: Count::default(),
            attempts_fenced: Count::default(),
            executions_submitted: Count::default(),
            takeovers: Count::default(),
            lease_renewal_failures: Count::default(),
            store_outage_rides: Count::default(),
            store_outage_rides_ended: Count::default(),
            log_bytes_written: Count::default(),
            firings_started: Count::default(),
            firings_skipped: Count::default(),
            events_recorded: Count::default(),
            claims_lost: Count::default(),
            log_follow_reads: Count::default(),
            audit_recorded: Count::default(),
            audit_dropped: Count::default(),
            dispatch_latency: Histogram::new(DISPATCH_BUCKETS),
            firing_lateness: Histogram::new(LATENESS_BUCKETS),
            claim_batch_size: Histogram::new(BATCH_BUCKETS),
            http_requests: Family::new_with_constructor(http_histogram),
        }
    }
}

/// The labels of a request's duration: the route's template (`/api/v1/executions/{id}`),
/// never the raw path, so ids cannot grow the series without bound.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HttpLabels {
    route: String,
    status: u16,
}

/// The Prometheus text format 0.0.4, spelled as `/metrics` always answered (and as the
/// OpenAPI document states it).
const CONTENT_TYPE: &str = "text/plain; version=0.0.4";

/// Requests that matched no route share one label value.
const UNMATCHED: &str = "unmatched";

impl Metrics {
    /// Every counter with its name (without `_total`, which the encoder adds) and help
    /// (without the full stop, which it adds too): the one place a counter is named.
    fn counters(&self) -> [(&'static str, &'static str, &Count); 16] {
        [
            ("shoal_attempts_started", "Attempts this node started", &self.attempts_started),
            ("shoal_attempts_finished", "Attempts this node recorded an end for", &self.attempts_finished),
            (
                "shoal_attempts_fenced",
                "Writes refused because the attempt's fencing token was stale",
                &self.attempts_fenced,
            ),
            ("shoal_executions_submitted", "Executions accepted through this node", &self.executions_submitted),
            ("shoal_takeovers", "Attempts of lost nodes this node took over", &self.takeovers),
            (
                "shoal_log_follow_reads",
                "Store reads made by log followers on this node (each woken by a write, not a timer)",
                &self.log_follow_reads,
            ),
            ("shoal_lease_renewal_failures", "Failed renewals of this node's lease", &self.lease_renewal_failures),
            (
                "shoal_store_outage_rides",
                "Store outages every member reported, through which this node kept its attempts running",
                &self.store_outage_rides,
            ),
            (
                "shoal_store_outage_rides_ended",
                "Rides through a store outage that ended by killing the attempts (a member reached the store or went silent, or the grace ran out)",
                &self.store_outage_rides_ended,
            ),
            ("shoal_log_bytes_written", "Bytes of job output written to the store", &self.log_bytes_written),
            (
                "shoal_schedule_firings_started",
                "Schedule firings this node recorded that started an execution",
                &self.firings_started,
            ),
            (
                "shoal_schedule_firings_skipped",
                "Schedule firings this node recorded as skipped or queued (misfire, overlap, disabled, job error)",
                &self.firings_skipped,
            ),
            ("shoal_listener_events", "Listener events this node recorded", &self.events_recorded),
            (
                "shoal_trigger_claims_lost",
                "Firings and events this node found already claimed by another node",
                &self.claims_lost,
            ),
            ("shoal_audit_recorded", "Audit trail rows this node wrote to the store", &self.audit_recorded),
            (
                "shoal_audit_dropped",
                "Audit trail rows this node dropped because its queue was full (the store away for long)",
                &self.audit_dropped,
            ),
        ]
    }

    /// Records one request's duration under its route template and status.
    fn observe_request(&self, route: Option<&str>, status: u16, seconds: f64) {
        let labels = HttpLabels { route: route.unwrap_or(UNMATCHED).to_owned(), status };
        self.http_requests.get_or_create(&labels).observe(seconds);
    }

    /// This node's metrics, labelled `node`, beside the store-wide `shoal_executions`.
    fn registry(&self, node: &str, sampled: Sampled) -> Registry {
        let mut root = Registry::default();
        if let Some(counts) = sampled.executions {
            let by_state = Family::<[(&'static str, String); 1], Gauge>::default();
            for s in shoal_core::ExecState::ALL {
                let n = counts.iter().find(|(st, _)| *st == s).map_or(0, |(_, n)| *n);
                by_state.get_or_create(&[("state", s.to_string())]).set(n);
            }
            root.register("shoal_executions", "Executions in the store by state", by_state);
        }
        let reg = root.sub_registry_with_label(("node".into(), node.to_owned().into()));
        for (name, help, count) in self.counters() {
            reg.register(name, help, count.0.clone());
        }
        reg.register(
            "shoal_gossip_rejected_packets",
            "Gossip packets dropped because they were not sealed with this cluster's secret (another cluster, or not shoal)",
            ConstCounter::new(sampled.rejected_gossip_packets),
        );
        reg.register("shoal_running_attempts", "Attempts running on this node", ConstGauge::new(sampled.running));
        reg.register("shoal_slots", "Concurrent attempts this node allows", ConstGauge::new(sampled.slots));
        reg.register("shoal_ready", "1 when the node is ready", ConstGauge::new(i64::from(sampled.ready)));
        reg.register(
            "shoal_audit_queued",
            "Audit trail rows waiting in this node's memory for the store",
            ConstGauge::new(sampled.audit_queued),
        );
        reg.register(
            "shoal_changes_in_flight",
            "Changes (API requests that change something) running on their own task, at most 1024 at once",
            ConstGauge::new(sampled.changes.0),
        );
        reg.register(
            "shoal_changes_waiting",
            "Changes waiting for one of the 1024 turns; one whose client hangs up meanwhile never starts",
            ConstGauge::new(sampled.changes.1),
        );
        if !sampled.replicas.is_empty() {
            let up = Family::<[(&'static str, String); 2], Gauge>::default();
            let lag_seconds =
                Family::<[(&'static str, String); 1], Gauge<f64, std::sync::atomic::AtomicU64>>::default();
            let lag_bytes = Family::<[(&'static str, String); 1], Gauge>::default();
            let reads = Family::<[(&'static str, String); 1], Counter>::default();
            for r in &sampled.replicas {
                for s in shoal_store::ReplicaState::ALL {
                    let set = i64::from(r.state == s);
                    up.get_or_create(&[("replica", r.address.clone()), ("state", s.to_string())]).set(set);
                }
                let label = [("replica", r.address.clone())];
                if let Some(ms) = r.lag_ms {
                    lag_seconds.get_or_create(&label).set(ms as f64 / 1000.0);
                }
                if let Some(b) = r.lag_bytes {
                    lag_bytes.get_or_create(&label).set(i64::try_from(b).unwrap_or(i64::MAX));
                }
                reads.get_or_create(&label).inc_by(r.reads);
            }
            reg.register(
                "shoal_replica_state",
                "1 for each read replica's state as last checked (unknown, ok, lagging, down)",
                up,
            );
            reg.register_with_unit(
                "shoal_replica_lag",
                "Replay lag of each read replica behind the primary, as last checked",
                Unit::Seconds,
                lag_seconds,
            );
            reg.register_with_unit(
                "shoal_replica_lag",
                "Replay lag of each read replica behind the primary in WAL, as last checked",
                Unit::Bytes,
                lag_bytes,
            );
            reg.register("shoal_replica_reads", "Reads each read replica served for this node", reads);
            reg.register(
                "shoal_primary_routed_reads",
                "Reads of requests that could go to a replica but went to the primary (none fit, or one failed)",
                ConstCounter::new(sampled.primary_reads),
            );
        }
        reg.register_with_unit(
            "shoal_dispatch_latency",
            "Time from an execution becoming runnable (submitted, or its run_after when held or retried) to its attempt's process start on this node",
            Unit::Seconds,
            self.dispatch_latency.clone(),
        );
        reg.register_with_unit(
            "shoal_firing_lateness",
            "Time from a schedule's firing time to the creation of its execution (0 when claimed ahead of it)",
            Unit::Seconds,
            self.firing_lateness.clone(),
        );
        reg.register(
            "shoal_claim_batch_size",
            "Executions taken by each claim of this node that took any",
            self.claim_batch_size.clone(),
        );
        reg.register_with_unit(
            "shoal_http_request_duration",
            "Time from a request's arrival to its response head, by route template and status",
            Unit::Seconds,
            self.http_requests.clone(),
        );
        root
    }
}

/// The figures read from the engine and the store at each scrape.
struct Sampled {
    running: i64,
    slots: i64,
    ready: bool,
    rejected_gossip_packets: u64,
    audit_queued: i64,
    /// Changes running on their own task, and waiting for a turn to (`audit::record`).
    changes: (i64, i64),
    /// Read replicas as last checked, and the reads routes sent to the primary.
    replicas: Vec<shoal_store::ReplicaView>,
    primary_reads: u64,
    /// None when the store could not be read: the gauge is then left out, not zeroed.
    executions: Option<Vec<(shoal_core::ExecState, i64)>>,
}

pub async fn render(state: State) -> Response {
    let sampled = Sampled {
        running: i64::try_from(state.engine.running()).unwrap_or(i64::MAX),
        slots: i64::from(state.node.slots),
        ready: state.engine.readiness().is_ok(),
        rejected_gossip_packets: state.engine.rejected_gossip_packets(),
        audit_queued: i64::try_from(state.audit.queued()).unwrap_or(i64::MAX),
        changes: {
            let (running, waiting) = state.audit.changes();
            (i64::try_from(running).unwrap_or(i64::MAX), i64::try_from(waiting).unwrap_or(i64::MAX))
        },
        replicas: state.store.replica_views(),
        primary_reads: state.store.routed_primary_reads(),
        executions: state.store.count_by_state().await.ok(),
    };
    let registry = state.metrics.registry(&state.node.id, sampled);
    let mut out = String::new();
    // Writing into a String cannot fail, and the encoder fails only when its writer does.
    prometheus_text::encode(&mut out, &registry).expect("encoding metrics into a String");
    ([(header::CONTENT_TYPE, CONTENT_TYPE)], out).into_response()
}

/// Times every request from its arrival at the router to its response head (a layer over
/// the whole router: by then the route is matched, and the status is the one sent).
pub async fn time_requests(state: State, req: Request, next: Next) -> Response {
    let route = req.extensions().get::<MatchedPath>().cloned();
    let start = Instant::now();
    let resp = next.run(req).await;
    state.metrics.observe_request(
        route.as_ref().map(MatchedPath::as_str),
        resp.status().as_u16(),
        start.elapsed().as_secs_f64(),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sampled() -> Sampled {
        Sampled {
            running: 2,
            slots: 4,
            ready: true,
            rejected_gossip_packets: 3,
            audit_queued: 0,
            changes: (0, 0),
            replicas: vec![],
            primary_reads: 0,
            executions: Some(vec![]),
        }
    }

    /// The names, help texts and `node` label that scrapers and the tests read are those of
    /// the hand-written text this replaced.
    #[test]
    fn text_keeps_names_help_and_node_label() {
        let m = Metrics::default();
        m.attempts_started.inc_by(5);
        m.log_bytes_written.inc_by(12);
        let mut out = String::new();
        prometheus_text::encode(&mut out, &m.registry("n1", sampled())).unwrap();
        for want in [
            "# HELP shoal_attempts_started_total Attempts this node started.\n# TYPE shoal_attempts_started_total counter\nshoal_attempts_started_total{node=\"n1\"} 5\n",
            "shoal_log_bytes_written_total{node=\"n1\"} 12\n",
            "shoal_gossip_rejected_packets_total{node=\"n1\"} 3\n",
            "# TYPE shoal_running_attempts gauge\nshoal_running_attempts{node=\"n1\"} 2\n",
            "shoal_slots{node=\"n1\"} 4\n",
            "shoal_ready{node=\"n1\"} 1\n",
            "shoal_executions{state=\"succeeded\"} 0\n",
            "# TYPE shoal_dispatch_latency_seconds histogram\n",
            "shoal_dispatch_latency_seconds_count{node=\"n1\"} 0\n",
            "shoal_claim_batch_size_bucket{node=\"n1\",le=\"256\"} 0\n",
        ] {
            assert!(out.contains(want), "no {want:?} in:\n{out}");
        }
    }

    #[test]
    fn requests_are_labelled_by_route_template_or_unmatched() {
        let m = Metrics::default();
        m.observe_request(Some("/api/v1/executions/{id}"), 200, 0.002);
        m.observe_request(None, 404, 0.001);
        let mut out = String::new();
        prometheus_text::encode(&mut out, &m.registry("n1", sampled())).unwrap();
        assert!(
            out.contains("shoal_http_request_duration_seconds_count{node=\"n1\",route=\"/api/v1/executions/{id}\",status=\"200\"} 1\n"),
            "{out}"
        );
        assert!(
            out.contains(
                "shoal_http_request_duration_seconds_count{node=\"n1\",route=\"unmatched\",status=\"404\"} 1\n"
            ),
            "{out}"
        );
    }
}
