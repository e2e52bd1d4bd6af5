//! Plain HTTP endpoints served on the gateway port before any upgrade: liveness, readiness,
//! Prometheus metrics, the JSON metrics object, 426 for `/` without upgrade, 404 elsewhere.

use std::time::Duration;

use serde_json::{Value, json};
use spiderweb_tests::{Client, Gateway, Metrics, assert_metrics_object, eventually, int_at_ptr};

#[tokio::test]
async fn livez_and_readyz() {
    let gw = Gateway::start();
    let r = gw.http_get("/livez").await;
    assert_eq!(r.status, 200, "{}", r.summary());
    assert_eq!(r.text(), "ok\n", "{}", r.summary());
    let r = gw.http_get("/readyz").await;
    assert_eq!(r.status, 200, "{}", r.summary());
    assert_eq!(r.text(), "ready\n", "{}", r.summary());
    // Query strings are a superset (quirk 7) and must not change the answer.
    let r = gw.http_get("/livez?probe=1").await;
    assert_eq!(r.status, 200, "{}", r.summary());
}

#[tokio::test]
async fn root_without_upgrade_is_426_and_unknown_path_is_404() {
    let gw = Gateway::start();
    let r = gw.http_get("/").await;
    assert_eq!(r.status, 426, "GET / without Upgrade: {}", r.summary());
    assert!(r.text().to_ascii_lowercase().contains("websocket"), "426 body must mention WebSocket: {}", r.summary());

    for path in ["/nope", "/metrics/extra", "/v1/agents/mother/stream-nope", "/favicon.ico"] {
        let r = gw.http_get(path).await;
        assert_eq!(r.status, 404, "GET {path}: {}", r.summary());
    }
    // The server still serves WebSockets afterwards.
    let mut c = gw.admin().await;
    c.ping().await;
}

#[tokio::test]
async fn metrics_is_prometheus_text_with_the_promised_families() {
    let gw = Gateway::start();
    let r = gw.http_get("/metrics").await;
    assert_eq!(r.status, 200, "{}", r.summary());
    let ct = r.header("content-type").unwrap_or_default().to_string();
    assert!(ct.starts_with("text/plain; version=0.0.4"), "content-type must be text/plain; version=0.0.4…, got {ct:?}");
    let m = Metrics::parse(&r.text());
    for family in ["spiderweb_connections_active", "spiderweb_projects_total"] {
        assert!(m.has(family), "/metrics lacks {family}:\n{}", m.text);
    }
    for family in [
        "spiderweb_connections_active",
        "spiderweb_frames_in_total",
        "spiderweb_frames_out_total",
        "spiderweb_errors_total",
        "spiderweb_request_duration_seconds",
        "spiderweb_projects_total",
    ] {
        assert!(m.types.contains_key(family), "/metrics has no `# TYPE {family}` line:\n{}", m.text);
    }
    assert_eq!(m.types["spiderweb_request_duration_seconds"], "histogram");
    assert_eq!(m.types["spiderweb_connections_active"], "gauge");
}

#[tokio::test]
async fn frame_counters_errors_and_histogram_move_with_traffic() {
    let gw = Gateway::start();
    let before = gw.metrics().await;
    let pings_in_before = before.value_or_zero("spiderweb_frames_in_total", &[("type", "control.ping")]);
    let pongs_out_before = before.value_or_zero("spiderweb_frames_out_total", &[("type", "control.pong")]);

    let mut c = gw.admin().await;
    for _ in 0..25 {
        c.ping().await;
    }
    // One parse failure (unsupported_legacy_api) and one control-plane error.
    c.send_raw_text("{not json").await;
    let e = c.recv_json().await;
    assert_eq!(e["error"]["code"], json!("unsupported_legacy_api"), "{e}");
    c.control_err_code("project_get", json!({"project_id": "proj-does-not-exist"}), "project_not_found").await;

    let after = gw.metrics().await;
    let pings_in = after.get("spiderweb_frames_in_total", &[("type", "control.ping")]).unwrap_or_else(|| {
        panic!("no spiderweb_frames_in_total{{type=\"control.ping\"}} sample after 25 pings:\n{}", after.text)
    });
    assert!(pings_in - pings_in_before >= 25.0, "frames_in control.ping grew by {} (< 25)", pings_in - pings_in_before);
    let pongs_out = after.get("spiderweb_frames_out_total", &[("type", "control.pong")]).unwrap_or_else(|| {
        panic!("no spiderweb_frames_out_total{{type=\"control.pong\"}} after 25 pings:\n{}", after.text)
    });
    assert!(pongs_out - pongs_out_before >= 25.0, "frames_out control.pong grew by {}", pongs_out - pongs_out_before);

    for code in ["unsupported_legacy_api", "project_not_found"] {
        let v = after.get("spiderweb_errors_total", &[("code", code)]).unwrap_or_else(|| {
            panic!("no spiderweb_errors_total{{code=\"{code}\"}} after provoking it:\n{}", after.text)
        });
        assert!(v >= 1.0, "errors_total{{code={code}}} = {v}");
    }

    // Histogram: cumulative buckets, +Inf bucket == _count, _count grew with the requests.
    let buckets = after.family("spiderweb_request_duration_seconds_bucket");
    assert!(!buckets.is_empty(), "no spiderweb_request_duration_seconds_bucket samples:\n{}", after.text);
    let mut by_series: std::collections::BTreeMap<String, Vec<(f64, f64)>> = Default::default();
    for b in &buckets {
        let mut labels = b.labels.clone();
        let le = labels.remove("le").unwrap_or_else(|| panic!("bucket without le label: {b:?}"));
        let le: f64 = if le == "+Inf" { f64::INFINITY } else { le.parse().unwrap_or_else(|_| panic!("bad le {le:?}")) };
        by_series.entry(format!("{labels:?}")).or_default().push((le, b.value));
    }
    let mut total_count = 0.0;
    for (series, mut bs) in by_series {
        bs.sort_by(|a, b| a.0.partial_cmp(&b.0).unwrap());
        assert!(bs.last().unwrap().0.is_infinite(), "series {series} has no le=\"+Inf\" bucket");
        for w in bs.windows(2) {
            assert!(w[1].1 >= w[0].1, "buckets of {series} are not cumulative: {bs:?}");
        }
        total_count += bs.last().unwrap().1;
    }
    let count: f64 = after.family("spiderweb_request_duration_seconds_count").iter().map(|s| s.value).sum();
    let sum: f64 = after.family("spiderweb_request_duration_seconds_sum").iter().map(|s| s.value).sum();
    assert!(after.has("spiderweb_request_duration_seconds_sum"), "no _sum:\n{}", after.text);
    assert_eq!(count, total_count, "_count must equal the +Inf buckets");
    assert!(count >= 27.0, "request_duration_seconds_count = {count} after 27+ requests");
    assert!(sum >= 0.0 && sum.is_finite(), "_sum = {sum}");
}

#[tokio::test]
async fn connections_active_tracks_open_websockets() {
    let gw = Gateway::start();
    let idle = gw.metrics().await.value_or_zero("spiderweb_connections_active", &[]);
    let mut a = gw.admin().await;
    let mut b = gw.user().await;
    a.ping().await;
    let _ = b.control("agent_list", Value::Null).await;
    let with_two = gw.metrics().await.get("spiderweb_connections_active", &[]).expect("connections_active sample");
    assert!(with_two >= idle + 2.0, "connections_active: {idle} idle, {with_two} with two WebSockets open");
    a.close(1000).await;
    b.close(1000).await;
    let _ = a.drain_until_end(Duration::from_secs(5)).await;
    let _ = b.drain_until_end(Duration::from_secs(5)).await;
    let gw_ref = &gw;
    let dropped = eventually(Duration::from_secs(10), || async move {
        gw_ref.metrics().await.value_or_zero("spiderweb_connections_active", &[]) <= with_two - 2.0
    })
    .await;
    assert!(dropped, "connections_active did not go back down after both WebSockets closed");
}

#[tokio::test]
async fn projects_total_counts_projects() {
    let gw = Gateway::start();
    let before = gw.metrics().await.get("spiderweb_projects_total", &[]).expect("spiderweb_projects_total");
    let mut c = gw.admin().await;
    c.control_ok("project_create", json!({"name": "One", "vision": "first"})).await;
    c.control_ok("project_create", json!({"name": "Two", "vision": "second"})).await;
    let after = gw.metrics().await.get("spiderweb_projects_total", &[]).unwrap();
    assert_eq!(after, before + 2.0, "projects_total must grow by 2 after two project_create");
}

#[tokio::test]
async fn metrics_json_is_valid_json_with_the_control_metrics_shape() {
    let gw = Gateway::start();
    let r = gw.http_get("/metrics.json").await;
    assert_eq!(r.status, 200, "{}", r.summary());
    let v: Value = serde_json::from_slice(&r.body)
        .unwrap_or_else(|e| panic!("/metrics.json is not valid JSON ({e}): {:?}", r.text()));
    assert_metrics_object(&v);
    assert_eq!(v["nodes"]["total"], json!(0), "no nodes are configured: {v}");

    let mut c = gw.admin().await;
    c.control_ok("project_create", json!({"name": "Counted", "vision": "count me"})).await;
    let r = gw.http_get("/metrics.json").await;
    let v2: Value = serde_json::from_slice(&r.body).expect("metrics.json JSON");
    assert_eq!(
        int_at_ptr(&v2, "/projects/creates_total"),
        int_at_ptr(&v, "/projects/creates_total") + 1,
        "creates_total must count project_create: before {v} after {v2}"
    );
    assert_eq!(int_at_ptr(&v2, "/projects/total"), int_at_ptr(&v, "/projects/total") + 1);
}

#[tokio::test]
async fn http_requests_do_not_disturb_open_websockets() {
    let gw = Gateway::start();
    let mut c = Client::connect(&gw, &gw.admin_token()).await;
    c.handshake().await;
    for path in ["/livez", "/readyz", "/metrics", "/metrics.json", "/", "/nope"] {
        let _ = gw.http_get(path).await;
        c.ping().await;
    }
}

/// `SPIDERWEB_METRICS_PORT` opens a second, plain-HTTP listener with the operator endpoints
/// (spec unified-v2 §9.3): GET only (others 400), unknown paths 404, `Connection: close`.
#[tokio::test]
async fn metrics_port_serves_the_operator_endpoints_only() {
    let port = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap().port()
    };
    let mut gw = Gateway::new(spiderweb_tests::base_config());
    gw.env("SPIDERWEB_METRICS_PORT", &port.to_string());
    gw.launch();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let get = |path: &str| format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").into_bytes();
    for (path, status, body) in
        [("/livez", 200, Some("ok\n")), ("/readyz", 200, Some("ready\n")), ("/metrics", 200, None), ("/", 404, None)]
    {
        let r = spiderweb_tests::http_exchange(addr, &get(path)).await.unwrap();
        assert_eq!(r.status, status, "GET {path}: {}", r.summary());
        assert_eq!(r.header("connection"), Some("close"), "GET {path}: {}", r.summary());
        if let Some(body) = body {
            assert_eq!(r.text(), body, "GET {path}");
        }
    }
    let r = spiderweb_tests::http_exchange(addr, &get("/metrics.json")).await.unwrap();
    assert_metrics_object(&serde_json::from_slice(&r.body).unwrap());
    let post = b"POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n";
    let r = spiderweb_tests::http_exchange(addr, post).await.unwrap();
    assert_eq!(r.status, 400, "{}", r.summary());
}

/// A metrics port that is not a number stops the gateway with a message naming the variable.
#[tokio::test]
async fn invalid_metrics_port_is_refused_at_start() {
    let mut gw = Gateway::new(spiderweb_tests::base_config());
    gw.env("SPIDERWEB_METRICS_PORT", "ninety");
    let (status, stderr) = gw.run_expect_exit();
    assert!(!status.success(), "{status:?}");
    assert!(stderr.contains("SPIDERWEB_METRICS_PORT"), "{stderr}");
}
