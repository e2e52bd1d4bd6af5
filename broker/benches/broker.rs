//! Broker benchmark: added time-to-first-byte on a streamed reply, and small requests/s.
//!
//! Starts a local provider server (SSE, answers at once) in this process and the release
//! `spiderweb-broker` as its own process with an `openai` provider pointed at that server and
//! an API key in its environment (so the credential path is exercised). Then:
//! 1. TTFB direct: reqwest (keep-alive) → server, time from sending to the first body chunk;
//! 2. TTFB through the broker: `ProviderRequest` → first `BodyChunk`, one request at a time;
//! 3. throughput: many small requests in flight over several broker connections for 5 s.
//!
//! `cargo bench -p spiderweb-broker --bench broker` prints a table and a JSON line.

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{Broker, BrokerSpec, LocalServer, Reply};
use serde_json::json;
use spiderweb_client::broker::BrokerClient;
use spiderweb_proto::broker::{BrokerReply, BrokerRequest, ProviderRequest};

const WARMUP: usize = 500;
const SAMPLES: usize = 5000;
const THROUGHPUT_SECS: u64 = 5;
const CONNECTIONS: usize = 8;
const IN_FLIGHT_PER_CONNECTION: u64 = 16;

fn sse_reply() -> Reply {
    Reply::Full {
        status: 200,
        headers: vec![("content-type", "text/event-stream".into())],
        body: Bytes::from_static(b"data: {\"choices\":[{\"delta\":{\"content\":\"hi\"}}]}\n\ndata: [DONE]\n\n"),
    }
}

fn request(id: u64) -> BrokerRequest {
    BrokerRequest::ProviderRequest(ProviderRequest {
        id,
        provider: "openai".into(),
        method: "POST".into(),
        path: "/chat/completions".into(),
        headers: vec![("content-type".into(), "application/json".into())],
        body: Bytes::from_static(br#"{"model":"m","stream":true,"messages":[{"role":"user","content":"hi"}]}"#).into(),
    })
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

async fn ttfb_direct(url: &str) -> Vec<Duration> {
    let http = reqwest::Client::builder().tcp_nodelay(true).build().unwrap();
    let mut samples = Vec::with_capacity(SAMPLES);
    for i in 0..WARMUP + SAMPLES {
        let start = Instant::now();
        let mut response = http
            .post(url)
            .header("authorization", "Bearer sk-bench")
            .header("content-type", "application/json")
            .body(r#"{"model":"m","stream":true,"messages":[{"role":"user","content":"hi"}]}"#)
            .send()
            .await
            .unwrap();
        let _first = response.chunk().await.unwrap().unwrap();
        if i >= WARMUP {
            samples.push(start.elapsed());
        }
        while response.chunk().await.unwrap().is_some() {}
    }
    samples.sort();
    samples
}

async fn ttfb_broker(client: &mut BrokerClient) -> Vec<Duration> {
    let mut samples = Vec::with_capacity(SAMPLES);
    for i in 0..(WARMUP + SAMPLES) as u64 {
        let start = Instant::now();
        client.send(request(i)).await.unwrap();
        loop {
            match client.next().await.unwrap() {
                BrokerReply::ResponseHead { .. } => {}
                BrokerReply::BodyChunk { .. } => break,
                other => panic!("{other:?}"),
            }
        }
        if i >= WARMUP as u64 {
            samples.push(start.elapsed());
        }
        loop {
            match client.next().await.unwrap() {
                BrokerReply::End { .. } => break,
                BrokerReply::BodyChunk { .. } => {}
                other => panic!("{other:?}"),
            }
        }
    }
    samples.sort();
    samples
}

/// Keeps `IN_FLIGHT_PER_CONNECTION` requests outstanding on one connection until `until`.
async fn pump(mut client: BrokerClient, until: Instant) -> u64 {
    let mut next_id = 0u64;
    for _ in 0..IN_FLIGHT_PER_CONNECTION {
        client.send(request(next_id)).await.unwrap();
        next_id += 1;
    }
    let mut completed = 0u64;
    let mut outstanding = IN_FLIGHT_PER_CONNECTION;
    while outstanding > 0 {
        match client.next().await.unwrap() {
            BrokerReply::End { .. } => {
                completed += 1;
                outstanding -= 1;
                if Instant::now() < until {
                    client.send(request(next_id)).await.unwrap();
                    next_id += 1;
                    outstanding += 1;
                }
            }
            BrokerReply::ResponseHead { status: 200, .. } | BrokerReply::BodyChunk { .. } => {}
            other => panic!("{other:?}"),
        }
    }
    completed
}

fn main() {
    // Client and provider share one thread, leaving the other core to the broker.
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let server = LocalServer::start(|_| sse_reply()).await;
        let broker = Broker::start(BrokerSpec {
            config: json!({
                "providers": {"openai": {"base_url": server.url("/v1")}},
                "limits": {"max_concurrent_upstream": 256}
            }),
            env: vec![("OPENAI_API_KEY".into(), "sk-bench-key".into())],
            log: "warn",
            ..Default::default()
        });

        let direct = ttfb_direct(&server.url("/v1/chat/completions")).await;
        let mut client = broker.client().await;
        let via = ttfb_broker(&mut client).await;
        drop(client);

        let until = Instant::now() + Duration::from_secs(THROUGHPUT_SECS);
        let mut pumps = Vec::new();
        for _ in 0..CONNECTIONS {
            pumps.push(tokio::spawn(pump(broker.client().await, until)));
        }
        let start = Instant::now();
        let mut completed = 0;
        for p in pumps {
            completed += p.await.unwrap();
        }
        let rps = completed as f64 / start.elapsed().as_secs_f64();

        let (d50, d99) = (percentile(&direct, 0.5), percentile(&direct, 0.99));
        let (b50, b99) = (percentile(&via, 0.5), percentile(&via, 0.99));
        println!("| figure | result |");
        println!("|---|---|");
        println!("| TTFB direct p50 / p99 | {:.0} µs / {:.0} µs |", micros(d50), micros(d99));
        println!("| TTFB via broker p50 / p99 | {:.0} µs / {:.0} µs |", micros(b50), micros(b99));
        println!("| broker-added TTFB p50 | {:.0} µs |", micros(b50) - micros(d50));
        println!("| requests/s ({CONNECTIONS} connections × {IN_FLIGHT_PER_CONNECTION} in flight) | {rps:.0} |");
        println!(
            "{}",
            json!({
                "ttfb_direct_p50_us": micros(d50), "ttfb_direct_p99_us": micros(d99),
                "ttfb_broker_p50_us": micros(b50), "ttfb_broker_p99_us": micros(b99),
                "broker_added_p50_us": micros(b50) - micros(d50), "requests_per_s": rps,
            })
        );
    });
}
