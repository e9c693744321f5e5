//! Prometheus metrics of one node, rendered in the text exposition format.

use crate::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

/// Counters the engine and the API bump; gauges are read when rendering.
#[derive(Default)]
pub struct Metrics {
    pub attempts_started: AtomicU64,
    pub attempts_finished: AtomicU64,
    pub attempts_fenced: AtomicU64,
    pub executions_submitted: AtomicU64,
    pub takeovers: AtomicU64,
    pub lease_renewal_failures: AtomicU64,
    pub log_bytes_written: AtomicU64,
    /// Schedule firings this node recorded, by whether they started an execution.
    pub firings_started: AtomicU64,
    pub firings_skipped: AtomicU64,
    /// Listener events this node recorded (webhooks included).
    pub events_recorded: AtomicU64,
    /// Firings and events another node had claimed first (work both nodes looked at).
    pub claims_lost: AtomicU64,
    /// Store reads made by log followers (`logs?follow=true`) on this node: one per wake,
    /// never a poll per follower.
    pub log_follow_reads: AtomicU64,
}

pub async fn render(state: State) -> Response {
    let m = &state.metrics;
    let mut out = String::new();
    let node = &state.node.id;
    let mut counter = |name: &str, help: &str, v: u64| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter\n{name}{{node=\"{node}\"}} {v}");
    };
    counter("shoal_attempts_started_total", "Attempts this node started.", m.attempts_started.load(Ordering::Relaxed));
    counter(
        "shoal_attempts_finished_total",
        "Attempts this node recorded an end for.",
        m.attempts_finished.load(Ordering::Relaxed),
    );
    counter(
        "shoal_attempts_fenced_total",
        "Writes refused because the attempt's fencing token was stale.",
        m.attempts_fenced.load(Ordering::Relaxed),
    );
    counter(
        "shoal_executions_submitted_total",
        "Executions accepted through this node.",
        m.executions_submitted.load(Ordering::Relaxed),
    );
    counter(
        "shoal_takeovers_total",
        "Attempts of lost nodes this node took over.",
        m.takeovers.load(Ordering::Relaxed),
    );
    counter(
        "shoal_log_follow_reads_total",
        "Store reads made by log followers on this node (each woken by a write, not a timer).",
        m.log_follow_reads.load(Ordering::Relaxed),
    );
    counter(
        "shoal_lease_renewal_failures_total",
        "Failed renewals of this node's lease.",
        m.lease_renewal_failures.load(Ordering::Relaxed),
    );
    counter(
        "shoal_log_bytes_written_total",
        "Bytes of job output written to the store.",
        m.log_bytes_written.load(Ordering::Relaxed),
    );
    counter(
        "shoal_schedule_firings_started_total",
        "Schedule firings this node recorded that started an execution.",
        m.firings_started.load(Ordering::Relaxed),
    );
    counter(
        "shoal_schedule_firings_skipped_total",
        "Schedule firings this node recorded as skipped or queued (misfire, overlap, disabled, job error).",
        m.firings_skipped.load(Ordering::Relaxed),
    );
    counter(
        "shoal_listener_events_total",
        "Listener events this node recorded.",
        m.events_recorded.load(Ordering::Relaxed),
    );
    counter(
        "shoal_trigger_claims_lost_total",
        "Firings and events this node found already claimed by another node.",
        m.claims_lost.load(Ordering::Relaxed),
    );
    counter(
        "shoal_gossip_rejected_packets_total",
        "Gossip packets dropped because they were not sealed with this cluster's secret (another cluster, or not shoal).",
        state.engine.rejected_gossip_packets(),
    );
    let _ = writeln!(
        out,
        "# HELP shoal_running_attempts Attempts running on this node.\n# TYPE shoal_running_attempts gauge\nshoal_running_attempts{{node=\"{node}\"}} {}",
        state.engine.running()
    );
    let _ = writeln!(
        out,
        "# HELP shoal_slots Concurrent attempts this node allows.\n# TYPE shoal_slots gauge\nshoal_slots{{node=\"{node}\"}} {}",
        state.node.slots
    );
    let ready = i32::from(state.engine.readiness().is_ok());
    let _ = writeln!(out, "# HELP shoal_ready 1 when the node is ready.\n# TYPE shoal_ready gauge\nshoal_ready{{node=\"{node}\"}} {ready}");
    if let Ok(counts) = state.store.count_by_state().await {
        let _ =
            writeln!(out, "# HELP shoal_executions Executions in the store by state.\n# TYPE shoal_executions gauge");
        for s in shoal_core::ExecState::ALL {
            let n = counts.iter().find(|(st, _)| *st == s).map_or(0, |(_, n)| *n);
            let _ = writeln!(out, "shoal_executions{{state=\"{s}\"}} {n}");
        }
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out).into_response()
}
