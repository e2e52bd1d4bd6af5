//! Operational metrics, exported as Prometheus text on `GET /metrics`.
//!
//! Label values come only from closed sets (known frame types, known error codes), so a client
//! cannot grow the registry by sending new names. Counters for the frame types are created at
//! start-up and looked up by `&str`, which keeps the per-frame cost to a hash lookup and two
//! atomic adds.

use std::collections::HashMap;
use std::time::Duration;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use spiderweb_proto::names;

type Labels = Vec<(String, String)>;

pub struct Metrics {
    registry: Registry,
    pub connections_active: Gauge,
    pub connections_total: Counter,
    pub connections_refused: Family<Labels, Counter>,
    pub slow_consumer_disconnects: Counter,
    frames_in: HashMap<String, Counter>,
    frames_out: HashMap<String, Counter>,
    frames_in_other: Counter,
    errors: Family<Labels, Counter>,
    request_duration: Histogram,
    pub projects: Gauge,
    pub agents: Gauge,
    pub turns_running: Gauge,
    pub turns_queued: Gauge,
    pub nodes: NodeGauges,
}

/// Node gauges, set from the control plane when `/metrics` is rendered (spec §9.3).
#[derive(Default)]
pub struct NodeGauges {
    pub invites_active: Gauge,
    pub nodes_online: Gauge,
    pub nodes_total: Gauge,
    pub tunnels_connected: Gauge,
    pub watch_subscribers: Gauge,
    pub watch_subscribers_peak: Gauge,
    pub watch_retained_events: Gauge,
    pub watch_retained_capacity: Gauge,
    pub watch_retained_window_ms: Gauge,
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::default();
        let connections_active = Gauge::default();
        registry.register("spiderweb_connections_active", "Open WebSocket connections", connections_active.clone());
        let connections_total = Counter::default();
        registry.register("spiderweb_connections", "WebSocket connections accepted", connections_total.clone());
        let connections_refused = Family::<Labels, Counter>::default();
        registry.register(
            "spiderweb_connections_refused",
            "Upgrades refused before the 101, by reason",
            connections_refused.clone(),
        );
        let slow_consumer_disconnects = Counter::default();
        registry.register(
            "spiderweb_slow_consumer_disconnects",
            "Connections closed because the client did not read its replies",
            slow_consumer_disconnects.clone(),
        );
        let frames_in_family = Family::<Labels, Counter>::default();
        let frames_out_family = Family::<Labels, Counter>::default();
        registry.register("spiderweb_frames_in", "Frames received, by type", frames_in_family.clone());
        registry.register("spiderweb_frames_out", "Frames sent, by type", frames_out_family.clone());
        let label = |t: &str| vec![("type".to_owned(), t.to_owned())];
        let mut frames_in = HashMap::new();
        let mut frames_out = HashMap::new();
        for t in all_type_names() {
            frames_in.insert(t.clone(), frames_in_family.get_or_create(&label(&t)).clone());
            frames_out.insert(t.clone(), frames_out_family.get_or_create(&label(&t)).clone());
        }
        let frames_in_other = frames_in_family.get_or_create(&label("invalid")).clone();
        let errors = Family::<Labels, Counter>::default();
        registry.register("spiderweb_errors", "Error frames sent, by code", errors.clone());
        // Present from the start, so that a dashboard's rate() has a zero to start from.
        for code in spiderweb_proto::codes::control::ALL.iter().chain(spiderweb_proto::codes::acheron::ALL) {
            let _ = errors.get_or_create(&vec![("code".to_owned(), (*code).to_owned())]);
        }
        // 10 µs … ~5 s: pings sit at the bottom, blocking reads at the top.
        let request_duration = Histogram::new(exponential_buckets(0.000_01, 3.0, 13));
        registry.register(
            "spiderweb_request_duration_seconds",
            "Time from a frame's arrival to its reply being queued",
            request_duration.clone(),
        );
        let projects = Gauge::default();
        registry.register("spiderweb_projects_total", "Projects that exist", projects.clone());
        let agents = Gauge::default();
        registry.register("spiderweb_agents_total", "Agents that exist", agents.clone());
        let turns_running = Gauge::default();
        registry.register("spiderweb_turns_running", "Chat turns running now", turns_running.clone());
        let turns_queued = Gauge::default();
        registry.register(
            "spiderweb_turns_queued",
            "Chat turns waiting for a slot (runtime_worker_threads)",
            turns_queued.clone(),
        );
        Metrics {
            registry,
            connections_active,
            connections_total,
            connections_refused,
            slow_consumer_disconnects,
            frames_in,
            frames_out,
            frames_in_other,
            errors,
            request_duration,
            projects,
            agents,
            turns_running,
            turns_queued,
            nodes: NodeGauges::default(),
        }
    }

    /// Registers the control plane's node counters (they live in the plane, which counts) and
    /// the node gauges.
    pub fn register_nodes(&mut self, plane: &crate::plane::ControlPlane) {
        let c = &plane.node_counters;
        let r = &mut self.registry;
        r.register("spiderweb_invites_created", "Node invites created", c.invites_created.clone());
        r.register("spiderweb_invites_redeemed", "Node invites redeemed", c.invites_redeemed.clone());
        r.register("spiderweb_node_joins", "Nodes paired (invite or approved request)", c.joins.clone());
        r.register("spiderweb_node_lease_refresh", "Node lease refreshes", c.lease_refreshes.clone());
        r.register("spiderweb_nodes_ensured", "Renewals of the embedded local node", c.ensured.clone());
        r.register("spiderweb_node_deletes", "Nodes deleted", c.deletes.clone());
        r.register("spiderweb_lease_reap_nodes", "Nodes removed because their lease expired", c.reaped.clone());
        let g = &self.nodes;
        r.register("spiderweb_invites_active", "Invites neither redeemed nor expired", g.invites_active.clone());
        r.register("spiderweb_nodes_online", "Paired nodes with a live lease", g.nodes_online.clone());
        r.register("spiderweb_nodes_total", "Paired nodes", g.nodes_total.clone());
        r.register("spiderweb_node_tunnels_connected", "Nodes with a connected tunnel", g.tunnels_connected.clone());
        r.register(
            "spiderweb_node_service_watch_subscribers",
            "Connections watching node service events",
            g.watch_subscribers.clone(),
        );
        r.register(
            "spiderweb_node_service_watch_subscribers_peak",
            "Most connections watching at once",
            g.watch_subscribers_peak.clone(),
        );
        r.register(
            "spiderweb_node_service_watch_retained_events",
            "Node service events retained for replay",
            g.watch_retained_events.clone(),
        );
        r.register(
            "spiderweb_node_service_watch_retained_capacity",
            "Node service events that can be retained",
            g.watch_retained_capacity.clone(),
        );
        r.register(
            "spiderweb_node_service_watch_retained_window_ms",
            "Time between the oldest and newest retained event",
            g.watch_retained_window_ms.clone(),
        );
        let w = &plane.watch.counters;
        for (name, help, counter) in [
            ("replay_requests", "Watch requests that asked for a replay", &w.replay_requests),
            ("replay_attempted", "Retained events examined for replays", &w.replay_attempted),
            ("replay_sent", "Events sent as replays", &w.replay_sent),
            ("replay_bytes", "Bytes sent as replays", &w.replay_bytes),
            ("fanout_events", "Node service events published", &w.fanout_events),
            ("fanout_attempted", "Events offered to a matching watcher", &w.fanout_attempted),
            ("fanout_sent", "Events pushed to a watcher that may see them", &w.fanout_sent),
            ("fanout_dropped", "Events lost by watchers that fell behind (and were dropped)", &w.fanout_dropped),
        ] {
            r.register(format!("spiderweb_node_service_watch_{name}"), help, counter.clone());
        }
    }

    /// Counts a received frame; `kind` is its full type, or `None` when it did not parse.
    pub fn frame_in(&self, kind: Option<&str>) {
        match kind.and_then(|k| self.frames_in.get(k)) {
            Some(c) => c.inc(),
            None => self.frames_in_other.inc(),
        };
    }

    pub fn frame_out(&self, kind: &str) {
        if let Some(c) = self.frames_out.get(kind) {
            c.inc();
        }
    }

    pub fn error(&self, code: &str) {
        self.errors.get_or_create(&vec![("code".to_owned(), code.to_owned())]).inc();
    }

    pub fn refused(&self, reason: &'static str) {
        self.connections_refused.get_or_create(&vec![("reason".to_owned(), reason.to_owned())]).inc();
    }

    pub fn observe_request(&self, elapsed: Duration) {
        self.request_duration.observe(elapsed.as_secs_f64());
    }

    /// The OpenMetrics text exposition (what `prometheus-client` writes).
    pub fn render_openmetrics(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }

    /// The classic Prometheus text format (`text/plain; version=0.0.4`): OpenMetrics names a
    /// counter family without `_total` and ends with `# EOF`; the classic format names the
    /// sample. Everything else is identical.
    pub fn render_prometheus(&self) -> String {
        let open = self.render_openmetrics();
        let counters: std::collections::HashSet<&str> =
            open.lines().filter_map(|l| l.strip_prefix("# TYPE ")?.strip_suffix(" counter")).collect();
        let mut out = String::with_capacity(open.len() + 256);
        for line in open.lines() {
            if line == "# EOF" {
                continue;
            }
            let renamed = ["# TYPE ", "# HELP "].iter().find_map(|prefix| {
                let rest = line.strip_prefix(prefix)?;
                let (name, tail) = rest.split_once(' ')?;
                counters.contains(name).then(|| format!("{prefix}{name}_total {tail}"))
            });
            out.push_str(renamed.as_deref().unwrap_or(line));
            out.push('\n');
        }
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

fn all_type_names() -> Vec<String> {
    let mut all: Vec<String> = names::CONTROL_OPS.iter().map(|op| format!("control.{op}")).collect();
    for op in names::ACHERON_RUNTIME_OPS {
        all.push(format!("acheron.t_{op}"));
        all.push(format!("acheron.r_{op}"));
    }
    for op in names::ACHERON_FS_OPS {
        all.push(format!("acheron.t_fs_{op}"));
        all.push(format!("acheron.r_fs_{op}"));
    }
    all.extend(["acheron.error", "acheron.err_fs", "acheron.e_fs_inval", "acheron.e_fs_inval_dir"].map(String::from));
    all.push("debug.event".into());
    all
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_has_labelled_counters_and_histogram() {
        let m = Metrics::new();
        m.frame_in(Some("control.ping"));
        m.frame_in(Some("bogus.type"));
        m.frame_out("control.pong");
        m.error("missing_field");
        m.observe_request(Duration::from_micros(30));
        let text = m.render_prometheus();
        assert!(text.contains("# TYPE spiderweb_frames_in_total counter"), "{text}");
        assert!(!text.contains("# EOF"));
        assert!(text.contains(r#"spiderweb_frames_in_total{type="control.ping"} 1"#), "{text}");
        assert!(text.contains(r#"spiderweb_frames_in_total{type="invalid"} 1"#));
        assert!(text.contains(r#"spiderweb_frames_out_total{type="control.pong"} 1"#));
        assert!(text.contains(r#"spiderweb_errors_total{code="missing_field"} 1"#));
        assert!(text.contains("spiderweb_request_duration_seconds_count 1"));
    }
}
