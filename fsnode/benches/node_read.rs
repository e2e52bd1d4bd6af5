//! Node-alone benchmark: a real `spiderweb-fs-node` on loopback, driven by the library client.
//!
//! `cargo bench -p spiderweb-fsnode --bench node_read` prints
//! - the 64 KiB read round trip (p50/p90/p99 over 5,000 reads; target p50 ≤ 0.15 ms, the
//!   original Zig node measured 0.68 ms on this machine),
//! - sequential read throughput with 1 MiB reads over a 256 MiB file,
//! - getattr round trips per second.
//!
//! Figures go to `docs/benchmarks.md`.

mod common;

use std::time::{Duration, Instant};

use serde_json::json;
use spiderweb_fsnode::client::FsClient;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn main() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("64k"), vec![0x5a; 64 * 1024]).unwrap();
    let big: Vec<u8> = (0..256u32 << 20).map(|i| (i % 251) as u8).collect();
    std::fs::write(dir.path().join("big"), &big).unwrap();
    drop(big);

    let (mut node, url) = common::start_node(dir.path());

    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        for binary in [false, true] {
            let client = FsClient::connect_with(&url, None, false, binary).await.expect("connect");
            run(&client, if binary { "binary data frames" } else { "JSON/base64 (original wire format)" }).await;
        }
    });
    let _ = node.kill();
    let _ = node.wait();
}

async fn run(client: &FsClient, mode: &str) {
    println!("== {mode}");
    let root = client.exports().await.unwrap()[0].root;
    let open = async |name: &str| {
        let attr = client.call("lookup", Some(root), None, json!({"name": name})).await.unwrap();
        let id = attr["attr"]["id"].as_u64();
        client.call("open", id, None, json!({"flags": 0})).await.unwrap()["h"].as_u64().unwrap()
    };

    let h = open("64k").await;
    for _ in 0..500 {
        client.read(h, 0, 65536).await.unwrap();
    }
    let mut samples = Vec::with_capacity(5000);
    for _ in 0..5000 {
        let t = Instant::now();
        let (data, _) = client.read(h, 0, 65536).await.unwrap();
        samples.push(t.elapsed());
        assert_eq!(data.len(), 65536);
    }
    samples.sort();
    println!(
        "read 64 KiB round trip: p50 {:.3} ms, p90 {:.3} ms, p99 {:.3} ms (n={})",
        percentile(&samples, 0.5).as_secs_f64() * 1e3,
        percentile(&samples, 0.9).as_secs_f64() * 1e3,
        percentile(&samples, 0.99).as_secs_f64() * 1e3,
        samples.len()
    );

    let h = open("big").await;
    let t = Instant::now();
    let mut off = 0u64;
    loop {
        let (data, eof) = client.read(h, off, 1 << 20).await.unwrap();
        off += data.len() as u64;
        if eof {
            break;
        }
    }
    let secs = t.elapsed().as_secs_f64();
    println!("sequential read 256 MiB, 1 MiB requests: {:.0} MiB/s", (off as f64 / (1 << 20) as f64) / secs);

    let n = 10_000;
    let t = Instant::now();
    for _ in 0..n {
        client.call("getattr", Some(root), None, json!({})).await.unwrap();
    }
    println!("getattr: {:.0} ops/s", n as f64 / t.elapsed().as_secs_f64());
}
