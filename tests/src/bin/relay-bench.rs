//! Benchmark of the gateway's node relay: what `/v2/fs/node/<id>` (relay → tunnel → a real
//! daemon-mode `spiderweb-fs-node`) adds over talking to a standalone node directly.
//!
//! Starts the gateway (the `spiderweb` next to this executable), pairs a daemon node with an
//! invite, starts a standalone node on the same directory with the same secret, then on each
//! endpoint (JSON wire format on both, since the relay does not carry binary frames): 64 KiB
//! reads at offset 0 of one open handle, one at a time, and `getattr` round trips.
//!
//! Usage: `cargo build --release -p spiderweb-gateway -p spiderweb-fsnode --bins &&
//! cargo run --release -p spiderweb-tests --bin relay-bench -- [--reads 3000] [--getattrs 5000]`

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use clap::Parser;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use spiderweb_tests::{Gateway, bin_dir, raw_upgrade};
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};

#[derive(Parser, Debug)]
#[command(name = "relay-bench", about = "Round trips through the gateway's node relay vs a direct node")]
struct Args {
    #[arg(long, default_value_t = 3000)]
    reads: usize,
    #[arg(long, default_value_t = 5000)]
    getattrs: usize,
    #[arg(long, default_value_t = 300)]
    warmup: usize,
}

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

type Ws = WebSocketStream<TcpStream>;

struct Endpoint {
    ws: Ws,
    tag: u32,
}

impl Endpoint {
    async fn open(addr: std::net::SocketAddr, path: &str) -> Result<Endpoint> {
        let (stream, _) = raw_upgrade(addr, path, &[]).await.map_err(|e| anyhow::anyhow!("upgrade {path}: {e}"))?;
        let config = WebSocketConfig::default().max_message_size(Some(16 << 20));
        Ok(Endpoint { ws: WebSocketStream::from_raw_socket(stream, Role::Client, Some(config)).await, tag: 0 })
    }

    async fn call(&mut self, kind: &str, top: Value, payload: Value) -> Result<Value> {
        self.tag += 1;
        let mut frame =
            json!({"channel": "acheron", "type": format!("acheron.t_fs_{kind}"), "tag": self.tag, "payload": payload});
        for (k, v) in top.as_object().into_iter().flatten() {
            frame[k] = v.clone();
        }
        self.ws.send(Message::text(frame.to_string())).await?;
        loop {
            match self.ws.next().await.context("connection closed")?? {
                Message::Text(t) => {
                    let v: Value = serde_json::from_str(t.as_str())?;
                    if v["tag"] == self.tag {
                        if v["ok"] != true {
                            bail!("{kind} failed: {v}");
                        }
                        return Ok(v["payload"].clone());
                    }
                }
                _ => continue,
            }
        }
    }
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1000.0
}

async fn measure(name: &str, ep: &mut Endpoint, secret: &str, args: &Args) -> Result<()> {
    ep.call("hello", json!({}), json!({"protocol": "unified-v2-fs", "proto": 2, "auth_token": secret})).await?;
    let exports = ep.call("exports", json!({}), json!({})).await?;
    let root = exports["exports"][0]["root"].as_u64().context("export root")?;
    let attr = ep.call("lookup", json!({"node": root}), json!({"name": "data.bin"})).await?;
    let node = attr["attr"]["id"].as_u64().context("file id")?;
    let h = ep.call("open", json!({"node": node}), json!({"flags": 0})).await?["h"].as_u64().context("handle")?;
    let mut reads = Vec::with_capacity(args.reads);
    for i in 0..args.warmup + args.reads {
        let start = Instant::now();
        ep.call("read", json!({"h": h}), json!({"off": 0, "len": 65536})).await?;
        if i >= args.warmup {
            reads.push(start.elapsed());
        }
    }
    reads.sort();
    let started = Instant::now();
    for _ in 0..args.getattrs {
        ep.call("getattr", json!({"node": node}), json!({})).await?;
    }
    let per_sec = args.getattrs as f64 / started.elapsed().as_secs_f64();
    println!(
        "| {name} | {:.3} ms | {:.3} / {:.3} ms | {per_sec:.0} /s |",
        percentile(&reads, 0.5),
        percentile(&reads, 0.9),
        percentile(&reads, 0.99)
    );
    Ok(())
}

fn spawn_node(args: &[&str], dir: &Path) -> Result<Child> {
    Command::new(bin_dir().join("spiderweb-fs-node"))
        .args(args)
        .arg("--export")
        .arg(format!("work={}", dir.display()))
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("start spiderweb-fs-node")
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let dir = tempfile::tempdir()?;
    std::fs::write(dir.path().join("data.bin"), vec![0x5au8; 65536])?;
    let gw = Gateway::start();
    let mut admin = gw.admin().await;
    let invite = admin.control_ok("node_invite_create", json!({})).await;
    let state = dir.path().join("..").join(format!("relay-bench-state-{}.json", std::process::id()));
    let admin_token = gw.admin_token();
    let daemon_args = [
        "--control-url",
        &gw.ws_url(),
        "--control-auth-token",
        &admin_token,
        "--invite-token",
        invite["invite_token"].as_str().context("invite")?,
        "--state-file",
        state.to_str().context("state path")?,
    ];
    let _daemon = Killed(spawn_node(&daemon_args, dir.path())?);
    let deadline = Instant::now() + Duration::from_secs(20);
    let node_id = loop {
        let list = admin.control_ok("node_list", json!({})).await;
        if let Some(n) = list["nodes"].as_array().and_then(|n| n.first())
            && n["fs_url"].as_str().is_some_and(|u| u.contains("/v2/fs/node/"))
        {
            break n["node_id"].as_str().context("node id")?.to_owned();
        }
        if Instant::now() > deadline {
            bail!("the daemon node did not pair: {list}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let secret: Value = serde_json::from_slice(&std::fs::read(&state)?)?;
    let secret = secret["node_secret"].as_str().context("node_secret in the state file")?.to_owned();
    let mut direct_node = Killed(spawn_node(&["--port", "0", "--auth-token", &secret], dir.path())?);
    let mut line = String::new();
    BufReader::new(direct_node.0.stdout.take().context("stdout")?).read_line(&mut line)?;
    let direct_addr: std::net::SocketAddr = line.trim().trim_start_matches("listening on ").parse()?;

    println!("| path | 64 KiB read p50 | p90 / p99 | getattr |");
    println!("|---|---|---|---|");
    let mut direct = Endpoint::open(direct_addr, "/v2/fs").await?;
    measure("direct to the node", &mut direct, &secret, &args).await?;
    let mut relayed = Endpoint::open(gw.addr(), &format!("/v2/fs/node/{node_id}")).await?;
    measure("gateway relay → tunnel → node", &mut relayed, &secret, &args).await?;
    let _ = std::fs::remove_file(&state);
    Ok(())
}
