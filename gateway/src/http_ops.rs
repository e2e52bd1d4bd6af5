//! Plain HTTP endpoints for operators: liveness, readiness and metrics.
//!
//! `/livez` answers while the process runs; `/readyz` only while it accepts connections (it
//! turns 503 when shutdown begins, so a load balancer drains us first). `/metrics` is the
//! Prometheus text format; `/metrics.json` the `control.metrics` payload. None of them reveal
//! tokens or state beyond counts.

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};

use crate::server::Shared;

fn reply(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

/// The main port: the operator endpoints, and a 426 on `/` for plain HTTP clients.
pub fn respond<B>(req: &Request<B>, shared: &Shared) -> Response<Full<Bytes>> {
    let path = req.uri().path();
    let known = matches!(path, "/livez" | "/readyz" | "/metrics" | "/metrics.json" | "/");
    if !known {
        return reply(StatusCode::NOT_FOUND, TEXT, "not found\n".into());
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return reply(StatusCode::METHOD_NOT_ALLOWED, TEXT, "only GET is supported\n".into());
    }
    endpoint(req, shared).unwrap_or_else(|| {
        let mut r = reply(
            StatusCode::UPGRADE_REQUIRED,
            TEXT,
            "this endpoint speaks WebSocket (unified-v2); connect with a WebSocket client\n".into(),
        );
        r.headers_mut().insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        r
    })
}

/// The optional metrics port (`SPIDERWEB_METRICS_PORT`, spec unified-v2 §9.3): the same
/// endpoints without WebSocket, non-GET → 400, and every reply closes its connection.
pub fn respond_metrics_port<B>(req: &Request<B>, shared: &Shared) -> Response<Full<Bytes>> {
    let mut r = if req.method() != Method::GET {
        reply(StatusCode::BAD_REQUEST, TEXT, "only GET is supported\n".into())
    } else {
        endpoint(req, shared).unwrap_or_else(|| reply(StatusCode::NOT_FOUND, TEXT, "not found\n".into()))
    };
    r.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
    r
}

const TEXT: &str = "text/plain; charset=utf-8";

fn endpoint<B>(req: &Request<B>, shared: &Shared) -> Option<Response<Full<Bytes>>> {
    Some(match req.uri().path() {
        "/livez" => reply(StatusCode::OK, TEXT, "ok\n".into()),
        "/readyz" if shared.shutdown.is_cancelled() => {
            reply(StatusCode::SERVICE_UNAVAILABLE, TEXT, "not ready\n".into())
        }
        "/readyz" => reply(StatusCode::OK, TEXT, "ready\n".into()),
        "/metrics" => {
            let state = shared.plane.lock();
            shared.metrics.projects.set(state.projects.len() as i64);
            shared.metrics.agents.set(state.agents.len() as i64);
            let now = crate::plane::now_ms();
            let g = &shared.metrics.nodes;
            g.invites_active.set(state.nodes.active_invites(now) as i64);
            g.nodes_online.set(state.nodes.online_count(now) as i64);
            g.nodes_total.set(state.nodes.nodes.len() as i64);
            drop(state);
            g.tunnels_connected.set(shared.tunnels.connected() as i64);
            g.watch_subscribers.set(shared.plane.watch.subscribers() as i64);
            g.watch_subscribers_peak.set(shared.plane.watch.subscribers_peak() as i64);
            g.watch_retained_events.set(shared.plane.watch.retained_len() as i64);
            g.watch_retained_capacity.set(shared.plane.watch.settings.capacity as i64);
            g.watch_retained_window_ms.set(shared.plane.watch.retained_window_ms());
            let (running, queued) = shared.runtime.load();
            shared.metrics.turns_running.set(running as i64);
            shared.metrics.turns_queued.set(queued as i64);
            let wants_openmetrics = req
                .headers()
                .get(header::ACCEPT)
                .and_then(|a| a.to_str().ok())
                .is_some_and(|a| a.contains("application/openmetrics-text"));
            if wants_openmetrics {
                reply(
                    StatusCode::OK,
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    shared.metrics.render_openmetrics(),
                )
            } else {
                reply(StatusCode::OK, "text/plain; version=0.0.4; charset=utf-8", shared.metrics.render_prometheus())
            }
        }
        "/metrics.json" => reply(StatusCode::OK, "application/json", shared.plane.metrics_json().to_string()),
        _ => return None,
    })
}
