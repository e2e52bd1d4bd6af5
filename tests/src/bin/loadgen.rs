//! Load generator for the spiderweb gateway.
//!
//! Measures, over real loopback sockets: control.ping round trips on one connection, aggregate
//! ping throughput over many concurrent connections, connection set-up latency (TCP + upgrade +
//! control.version + control.connect), and the gateway's memory per idle authenticated
//! connection. Without `--url` it starts the (release) gateway itself, in a temp state dir, so
//! it knows the PID to read VmRSS from.
//!
//! Usage: `cargo run --release -p spiderweb-tests --bin loadgen -- [--url ws://127.0.0.1:18790/
//! --token sw-admin_… [--pid N]] [--connections 200] [--idle-connections 10000] …`

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, anyhow, bail};
use clap::Parser;
use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use spiderweb_tests::{Gateway, gateway_bin, rss_kib_of};
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::http::HeaderValue;

#[derive(Parser, Debug, Clone)]
#[command(name = "loadgen", about = "Load generator for the spiderweb gateway")]
struct Args {
    /// Gateway URL (e.g. ws://127.0.0.1:18790/). Without it, the release gateway is started.
    #[arg(long)]
    url: Option<String>,
    /// Bearer token (admin recommended) for --url.
    #[arg(long, env = "SPIDERWEB_AUTH_TOKEN")]
    token: Option<String>,
    /// PID of the gateway behind --url, to report its RSS.
    #[arg(long)]
    pid: Option<u32>,
    /// Gateway binary to start (default: `spiderweb` next to this executable).
    #[arg(long)]
    gateway_bin: Option<PathBuf>,
    /// Sequential pings measured on one connection.
    #[arg(long, default_value_t = 20_000)]
    pings: usize,
    /// Warm-up pings before measuring.
    #[arg(long, default_value_t = 2_000)]
    warmup: usize,
    /// Concurrent connections for the throughput phase.
    #[arg(long, default_value_t = 200)]
    connections: usize,
    /// Duration of the throughput phase, seconds.
    #[arg(long, default_value_t = 5.0)]
    duration_secs: f64,
    /// Connection set-ups measured.
    #[arg(long, default_value_t = 500)]
    setups: usize,
    /// Idle authenticated connections held for the memory measurement.
    #[arg(long, default_value_t = 10_000)]
    idle_connections: usize,
    /// Connections opened in parallel while building the idle set.
    #[arg(long, default_value_t = 128)]
    open_concurrency: usize,
    /// Client runtime worker threads (1 = current_thread runtime, leaving the other core to the gateway).
    #[arg(long, default_value_t = 1)]
    client_threads: usize,
    /// Skip phases: any of ping,throughput,setup,idle (comma separated).
    #[arg(long, value_delimiter = ',')]
    skip: Vec<String>,
}

type Ws = WebSocketStream<TcpStream>;

const PING: &str = r#"{"channel":"control","type":"control.ping","id":"p"}"#;
const VERSION: &str = r#"{"channel":"control","type":"control.version","id":"v","payload":{"protocol":"unified-v2"}}"#;
const CONNECT: &str = r#"{"channel":"control","type":"control.connect","id":"c","payload":{}}"#;

struct Target {
    host_port: String,
    url: String,
    token: String,
    pid: Option<u32>,
}

fn raise_nofile() -> (u64, u64) {
    unsafe {
        let mut rl = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) == 0 {
            rl.rlim_cur = rl.rlim_max;
            let _ = libc::setrlimit(libc::RLIMIT_NOFILE, &rl);
            libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl);
        }
        (rl.rlim_cur, rl.rlim_max)
    }
}

async fn open(t: &Target) -> Result<Ws> {
    let stream = TcpStream::connect(&t.host_port).await.with_context(|| format!("connect {}", t.host_port))?;
    stream.set_nodelay(true)?;
    let mut req = t.url.as_str().into_client_request()?;
    req.headers_mut().insert("Authorization", HeaderValue::from_str(&format!("Bearer {}", t.token))?);
    let (ws, _) = tokio_tungstenite::client_async_with_config(req, stream, Some(spiderweb_tests::client_ws_config()))
        .await
        .context("websocket upgrade")?;
    Ok(ws)
}

async fn roundtrip(ws: &mut Ws, text: &str, expect: &str) -> Result<()> {
    ws.send(Message::text(text.to_string())).await?;
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(t))) => {
                if t.as_str().contains(expect) {
                    return Ok(());
                }
                bail!("unexpected reply (wanted {expect}): {}", t.as_str());
            }
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            Some(Ok(other)) => bail!("unexpected message {other:?}"),
            Some(Err(e)) => return Err(e.into()),
            None => bail!("connection closed"),
        }
    }
}

async fn open_handshaken(t: &Target) -> Result<Ws> {
    let mut ws = open(t).await?;
    roundtrip(&mut ws, VERSION, "control.version_ack").await?;
    roundtrip(&mut ws, CONNECT, "control.connect_ack").await?;
    Ok(ws)
}

#[derive(Default, Clone, Copy, Debug)]
struct Stats {
    n: usize,
    p50_us: f64,
    p99_us: f64,
    mean_us: f64,
    max_us: f64,
}

fn stats(mut ns: Vec<u64>) -> Stats {
    if ns.is_empty() {
        return Stats::default();
    }
    ns.sort_unstable();
    let n = ns.len();
    let at = |p: usize| ns[((n * p) / 100).min(n - 1)] as f64 / 1000.0;
    Stats {
        n,
        p50_us: at(50),
        p99_us: at(99),
        mean_us: ns.iter().map(|x| *x as f64).sum::<f64>() / n as f64 / 1000.0,
        max_us: *ns.last().unwrap() as f64 / 1000.0,
    }
}

fn fmt_us(us: f64) -> String {
    if us >= 1000.0 { format!("{:.2} ms", us / 1000.0) } else { format!("{us:.1} µs") }
}

async fn phase_single(t: &Target, a: &Args) -> Result<Stats> {
    let mut ws = open_handshaken(t).await?;
    for _ in 0..a.warmup {
        roundtrip(&mut ws, PING, "control.pong").await?;
    }
    let mut lat = Vec::with_capacity(a.pings);
    for _ in 0..a.pings {
        let t0 = Instant::now();
        roundtrip(&mut ws, PING, "control.pong").await?;
        lat.push(t0.elapsed().as_nanos() as u64);
    }
    let _ = ws.close(None).await;
    Ok(stats(lat))
}

async fn phase_throughput(t: &Target, a: &Args) -> Result<(Stats, f64, usize)> {
    let mut conns = Vec::with_capacity(a.connections);
    for _ in 0..a.connections {
        conns.push(open_handshaken(t).await?);
    }
    let dur = Duration::from_secs_f64(a.duration_secs);
    let start = Instant::now();
    let deadline = start + dur;
    let mut tasks = Vec::new();
    for mut ws in conns {
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(4096);
            while Instant::now() < deadline {
                let t0 = Instant::now();
                roundtrip(&mut ws, PING, "control.pong").await?;
                lat.push(t0.elapsed().as_nanos() as u64);
            }
            let _ = ws.close(None).await;
            anyhow::Ok(lat)
        }));
    }
    let mut all = Vec::new();
    let mut failed = 0;
    for task in tasks {
        match task.await? {
            Ok(l) => all.extend(l),
            Err(e) => {
                failed += 1;
                eprintln!("throughput connection failed: {e:#}");
            }
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    let rate = all.len() as f64 / elapsed;
    Ok((stats(all), rate, failed))
}

async fn phase_setup(t: &Target, a: &Args) -> Result<Stats> {
    let mut lat = Vec::with_capacity(a.setups);
    for _ in 0..a.setups {
        let t0 = Instant::now();
        let ws = open_handshaken(t).await?;
        lat.push(t0.elapsed().as_nanos() as u64);
        drop(ws);
    }
    Ok(stats(lat))
}

async fn phase_idle(t: &Target, a: &Args) -> Result<(Vec<Ws>, usize, String)> {
    let results: Vec<Result<Ws>> = futures_util::stream::iter(0..a.idle_connections)
        .map(|_| open_handshaken(t))
        .buffer_unordered(a.open_concurrency.max(1))
        .collect()
        .await;
    let mut ok = Vec::with_capacity(results.len());
    let mut failed = 0;
    let mut first_err = String::new();
    for r in results {
        match r {
            Ok(ws) => ok.push(ws),
            Err(e) => {
                if failed == 0 {
                    first_err = format!("{e:#}");
                }
                failed += 1;
            }
        }
    }
    Ok((ok, failed, first_err))
}

fn rss(t: &Target) -> Option<u64> {
    t.pid.and_then(rss_kib_of)
}

fn main() -> Result<()> {
    let args = Args::parse();
    let (soft, hard) = raise_nofile();
    let needed = args.idle_connections as u64 + args.connections as u64 + 256;
    if soft < needed {
        eprintln!(
            "warning: RLIMIT_NOFILE is {soft} (hard {hard}); {needed} needed for --idle-connections {}",
            args.idle_connections
        );
    }

    // Start the gateway ourselves unless --url was given.
    let mut _gateway: Option<Gateway> = None;
    let target = match &args.url {
        Some(url) => {
            let token = args.token.clone().ok_or_else(|| anyhow!("--url needs --token (or SPIDERWEB_AUTH_TOKEN)"))?;
            let rest = url.strip_prefix("ws://").ok_or_else(|| anyhow!("only ws:// URLs are supported"))?;
            let host_port = rest.split('/').next().unwrap().to_string();
            Target { host_port, url: url.clone(), token, pid: args.pid }
        }
        None => {
            let bin = args.gateway_bin.clone().unwrap_or_else(gateway_bin);
            eprintln!("starting {} …", bin.display());
            let mut gw = Gateway::new_with_bin(
                bin,
                json!({"server": {"max_connections": 20000, "max_connections_per_token": 20000}, "log": {"level": "warn"}}),
            );
            gw.launch();
            let t = Target {
                host_port: format!("127.0.0.1:{}", gw.port()),
                url: gw.ws_url(),
                token: gw.admin_token(),
                pid: Some(gw.pid()),
            };
            _gateway = Some(gw);
            t
        }
    };

    let rt = if args.client_threads <= 1 {
        tokio::runtime::Builder::new_current_thread().enable_all().build()?
    } else {
        tokio::runtime::Builder::new_multi_thread().worker_threads(args.client_threads).enable_all().build()?
    };
    let skip = |p: &str| args.skip.iter().any(|s| s == p);

    let report = rt.block_on(async {
        let rss_start = rss(&target);
        let single = if skip("ping") {
            None
        } else {
            Some(phase_single(&target, &args).await.context("single-connection ping phase")?)
        };
        let thr = if skip("throughput") {
            None
        } else {
            Some(phase_throughput(&target, &args).await.context("throughput phase")?)
        };
        let setup = if skip("setup") { None } else { Some(phase_setup(&target, &args).await.context("set-up phase")?) };
        tokio::time::sleep(Duration::from_secs(1)).await;
        let rss_idle = rss(&target);
        let idle = if skip("idle") {
            None
        } else {
            let t0 = Instant::now();
            let (held, failed, first_err) = phase_idle(&target, &args).await?;
            let open_secs = t0.elapsed().as_secs_f64();
            tokio::time::sleep(Duration::from_secs(2)).await;
            let rss_with = rss(&target);
            // Check a sample of the idle connections still answers (they are really open).
            let mut held = held;
            let mut alive = 0;
            for ws in held.iter_mut().step_by((args.idle_connections / 20).max(1)) {
                if roundtrip(ws, PING, "control.pong").await.is_ok() {
                    alive += 1;
                }
            }
            let n = held.len();
            drop(held);
            Some((n, failed, first_err, open_secs, rss_with, alive))
        };
        anyhow::Ok((rss_start, single, thr, setup, rss_idle, idle))
    })?;
    let (rss_start, single, thr, setup, rss_idle, idle) = report;

    // ----- report -----
    let mark = |ok: bool| if ok { "ok" } else { "MISSED" };
    println!();
    println!(
        "spiderweb loadgen — {} (pid {}), client runtime: {} thread(s), TCP_NODELAY on",
        target.url,
        target.pid.map(|p| p.to_string()).unwrap_or_else(|| "unknown".into()),
        args.client_threads.max(1)
    );
    println!("{:<52} {:>14} {:>12} {:>7}", "metric", "value", "target", "");
    println!("{}", "-".repeat(88));
    let mut summary = serde_json::Map::new();
    if let Some(s) = single {
        println!(
            "{:<52} {:>14} {:>12} {:>7}",
            format!("ping RTT p50, 1 connection ({} pings)", s.n),
            fmt_us(s.p50_us),
            "≤ 100 µs",
            mark(s.p50_us <= 100.0)
        );
        println!(
            "{:<52} {:>14} {:>12} {:>7}",
            "ping RTT p99, 1 connection",
            fmt_us(s.p99_us),
            "≤ 1 ms",
            mark(s.p99_us <= 1000.0)
        );
        println!(
            "{:<52} {:>14}",
            "ping RTT mean / max, 1 connection",
            format!("{} / {}", fmt_us(s.mean_us), fmt_us(s.max_us))
        );
        summary.insert("ping_p50_us".into(), json!(s.p50_us));
        summary.insert("ping_p99_us".into(), json!(s.p99_us));
        summary.insert("ping_mean_us".into(), json!(s.mean_us));
    }
    if let Some((s, rate, failed)) = thr {
        println!(
            "{:<52} {:>14} {:>12} {:>7}",
            format!("pings/s, {} connections, {} s", args.connections, args.duration_secs),
            format!("{rate:.0}"),
            "≥ 50000",
            mark(rate >= 50_000.0)
        );
        println!(
            "{:<52} {:>14}",
            format!("ping RTT p50 / p99, {} connections", args.connections),
            format!("{} / {}", fmt_us(s.p50_us), fmt_us(s.p99_us))
        );
        if failed > 0 {
            println!("{:<52} {:>14}", "  connections that failed", failed);
        }
        summary.insert("conc_connections".into(), json!(args.connections));
        summary.insert("conc_pings_per_s".into(), json!(rate));
        summary.insert("conc_p50_us".into(), json!(s.p50_us));
        summary.insert("conc_p99_us".into(), json!(s.p99_us));
        summary.insert("conc_failed".into(), json!(failed));
    }
    if let Some(s) = setup {
        println!(
            "{:<52} {:>14}",
            format!("connection set-up p50 / p99 ({} set-ups)", s.n),
            format!("{} / {}", fmt_us(s.p50_us), fmt_us(s.p99_us))
        );
        summary.insert("setup_p50_us".into(), json!(s.p50_us));
        summary.insert("setup_p99_us".into(), json!(s.p99_us));
    }
    let kib = |v: Option<u64>| v.map(|k| format!("{:.1} MiB", k as f64 / 1024.0)).unwrap_or_else(|| "n/a".into());
    println!("{:<52} {:>14}", "gateway RSS at start", kib(rss_start));
    println!("{:<52} {:>14}", "gateway RSS idle (after the phases above)", kib(rss_idle));
    summary.insert("rss_start_kib".into(), json!(rss_start));
    summary.insert("rss_idle_kib".into(), json!(rss_idle));
    if let Some((n, failed, first_err, open_secs, rss_with, alive)) = idle {
        println!("{:<52} {:>14}", format!("gateway RSS with {n} idle authenticated connections"), kib(rss_with));
        let per = match (rss_idle, rss_with) {
            (Some(i), Some(w)) if n > 0 => Some(w.saturating_sub(i) as f64 / n as f64),
            _ => None,
        };
        match per {
            Some(p) => println!(
                "{:<52} {:>14} {:>12} {:>7}",
                "KiB per idle connection",
                format!("{p:.1} KiB"),
                "≤ 32 KiB",
                mark(p <= 32.0)
            ),
            None => println!("{:<52} {:>14}", "KiB per idle connection", "n/a (no pid)"),
        }
        println!("{:<52} {:>14}", "idle set opened in", format!("{open_secs:.2} s"));
        println!(
            "{:<52} {:>14}",
            "sampled idle connections still answering",
            format!("{alive}/{}", n.div_ceil((args.idle_connections / 20).max(1)))
        );
        if failed > 0 {
            println!("{:<52} {:>14}", "idle connections that failed to open", failed);
            println!("  first error: {first_err}");
        }
        summary.insert("idle_connections".into(), json!(n));
        summary.insert("idle_failed".into(), json!(failed));
        summary.insert("rss_with_idle_kib".into(), json!(rss_with));
        summary.insert("kib_per_idle_conn".into(), json!(per));
    }
    println!("{}", "-".repeat(88));
    println!(
        "note: loopback only; the peer (ZiggySpiderweb c55356f) measured ~44 ms ping p50 because of Nagle + delayed ACK (spec quirk 3), a transport artefact."
    );
    println!("{}", serde_json::Value::Object(summary));
    Ok(())
}
