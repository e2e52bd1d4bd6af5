//! The benchmark behind `docs/benchmarks.md` (worker section).
//!
//! Starts the release `spiderweb-worker supervise` next to this binary with a temporary
//! configuration, then measures through its socket: `shell_exec true` round trips (request in,
//! result out) p50/p99, `file_read` of 1 MiB, and sustained calls/s with 8 concurrent callers;
//! and, in the same run, `bwrap --unshare-all true` as the reference. Run as root (tenants get
//! their own uid, as in production).
//!
//! ```sh
//! cargo build --release -p spiderweb-worker
//! sudo apt-get install bubblewrap   # the reference only
//! target/release/worker-bench
//! target/release/worker-bench --only concurrent --seconds 20   # one figure, e.g. under perf
//! ```

use std::os::unix::fs::chown;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use serde_json::{Value, json};
use spiderweb_proto::frame::{read_frame, write_frame};
use spiderweb_proto::worker::{MAX_FRAME_BYTES, SupervisorReply, ToolOutcome, ToolRequest};

const TENANT_UID: u32 = 390_000;
const SEQUENTIAL: usize = 500;
const PACED: usize = 200;
/// Time between paced calls: an agent turn's model round trip is far longer, so the next
/// worker is always warm by then.
const PACE: Duration = Duration::from_millis(100);
const WARMUP: usize = 30;
const CONCURRENT_CALLERS: usize = 8;

#[derive(Parser)]
#[command(name = "worker-bench", about = "tool-worker round trips and throughput through a real supervisor")]
struct Options {
    /// Measure only these figures (default: all).
    #[arg(long, value_enum)]
    only: Vec<Figure>,
    /// How long the concurrent callers run.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=600))]
    seconds: u64,
    /// The supervisor's `warm_workers_per_plan` (default: the supervisor's default).
    #[arg(long, value_parser = clap::value_parser!(u64).range(0..=8))]
    warm_workers: Option<u64>,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Figure {
    /// `shell_exec true`, calls 100 ms apart.
    Paced,
    /// `file_read` of 1 MiB, calls 100 ms apart.
    FileRead,
    /// `shell_exec true` back to back.
    BackToBack,
    /// `shell_exec true` calls/s with 8 concurrent callers.
    Concurrent,
    /// `bwrap --unshare-all true`.
    Bwrap,
}

fn main() -> anyhow::Result<()> {
    let options = Options::parse();
    anyhow::ensure!(nix::unistd::geteuid().is_root(), "run as root: workers run under a tenant uid");
    let exe = std::env::current_exe()?.with_file_name("spiderweb-worker");
    anyhow::ensure!(exe.exists(), "{} not found: cargo build --release -p spiderweb-worker", exe.display());
    let dir = tempfile::Builder::new().prefix("sw-bench-").tempdir()?;
    let workspace = dir.path().join("ws");
    std::fs::create_dir(&workspace)?;
    std::fs::write(workspace.join("one-mib.txt"), "x".repeat(1024 * 1024))?;
    for path in [&workspace, &workspace.join("one-mib.txt")] {
        chown(path, Some(TENANT_UID), Some(TENANT_UID))?;
    }
    let socket = dir.path().join("worker.sock");
    let mut config = json!({
        "socket": socket,
        "workspace_roots": [dir.path()],
        "uid_range": {"start": TENANT_UID, "count": 1},
        "tenants": {"bench": {"uid": TENANT_UID, "gid": TENANT_UID}},
        "max_workers": 16,
    });
    if let Some(warm) = options.warm_workers {
        config["warm_workers_per_plan"] = warm.into();
    }
    let config_path = dir.path().join("config.json");
    std::fs::write(&config_path, config.to_string())?;
    let mut supervisor = Command::new(&exe)
        .args(["supervise", "--config"])
        .arg(&config_path)
        .env("SPIDERWEB_LOG", "warn")
        .stderr(Stdio::inherit())
        .spawn()?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while UnixStream::connect(&socket).is_err() {
        anyhow::ensure!(Instant::now() < deadline, "supervisor did not start");
        std::thread::sleep(Duration::from_millis(10));
    }
    let ws = workspace.display().to_string();
    let result = run(&socket, &ws, supervisor.id(), &options);
    let _ = supervisor.kill();
    let _ = supervisor.wait();
    result
}

fn run(socket: &Path, ws: &str, supervisor: u32, options: &Options) -> anyhow::Result<()> {
    let wanted = |figure| options.only.is_empty() || options.only.contains(&figure);
    let shell_true = json!({"command": "true"});
    let mut conn = UnixStream::connect(socket)?;
    let load_before = load_average();
    let mut rows = Vec::new();
    let mut line = serde_json::Map::new();
    let mut record = |name: &str, figure: String, target: &str, fields: Value| {
        rows.push(format!("| {name} | {figure} | {target} |"));
        line.extend(fields.as_object().cloned().unwrap_or_default());
    };
    if wanted(Figure::Paced) {
        let (p50, p99) = sequential(&mut conn, ws, "shell_exec", &shell_true, PACED, PACE)?;
        record(
            &format!("`shell_exec true` round trip p50 / p99, calls {} ms apart (warm worker)", PACE.as_millis()),
            format!("{} / {}", ms(p50), ms(p99)),
            "p50 ≤ 3 ms",
            json!({"shell_true_paced_p50_us": us(p50), "shell_true_paced_p99_us": us(p99)}),
        );
    }
    if wanted(Figure::FileRead) {
        let (p50, p99) = sequential(&mut conn, ws, "file_read", &json!({"path": "one-mib.txt"}), PACED, PACE)?;
        record(
            &format!("`file_read` 1 MiB round trip p50 / p99, calls {} ms apart", PACE.as_millis()),
            format!("{} / {}", ms(p50), ms(p99)),
            "—",
            json!({"file_read_1mib_p50_us": us(p50), "file_read_1mib_p99_us": us(p99)}),
        );
    }
    if wanted(Figure::BackToBack) {
        let (p50, p99) = sequential(&mut conn, ws, "shell_exec", &shell_true, SEQUENTIAL, Duration::ZERO)?;
        record(
            "`shell_exec true` round trip p50 / p99, back to back",
            format!("{} / {}", ms(p50), ms(p99)),
            "—",
            json!({"shell_true_p50_us": us(p50), "shell_true_p99_us": us(p99)}),
        );
    }
    if wanted(Figure::Concurrent) {
        let cpu_before = tree_cpu(supervisor)?;
        let (calls, elapsed, (p50, p99)) = concurrent(socket, ws, &shell_true, Duration::from_secs(options.seconds))?;
        let cpu = tree_cpu(supervisor)? - cpu_before;
        let per_s = calls as f64 / elapsed.as_secs_f64();
        record(
            &format!("`shell_exec true` calls/s, {CONCURRENT_CALLERS} concurrent callers ({} s)", options.seconds),
            format!("{per_s:.0} (p50 / p99 {} / {})", ms(p50), ms(p99)),
            "≥ 200",
            json!({"calls_per_s_8_callers": per_s.round() as u64,
                "concurrent_p50_us": us(p50), "concurrent_p99_us": us(p99)}),
        );
        record(
            "CPU per call of the supervisor, its fork servers and their reaped workers, 8 callers",
            format!("{:.2} ms", cpu * 1000.0 / calls as f64),
            "—",
            json!({"cpu_per_call_us": (cpu * 1e6 / calls as f64).round() as u64}),
        );
    }
    if wanted(Figure::Bwrap) {
        match bwrap_reference() {
            Some((p50, p99)) => record(
                "`bwrap --unshare-all true` p50 / p99 (reference)",
                format!("{} / {}", ms(p50), ms(p99)),
                "—",
                json!({"bwrap_p50_us": us(p50), "bwrap_p99_us": us(p99)}),
            ),
            None => record("`bwrap --unshare-all true`", "bwrap not installed".into(), "—", json!({})),
        }
    }
    let load = format!("{load_before} → {}", load_average());
    record("load average (1, 5, 15 min) at start → end", load.clone(), "—", json!({"load": load}));
    println!("| figure | result | target (issue 4) |");
    println!("|---|---|---|");
    for row in rows {
        println!("{row}");
    }
    println!("{}", Value::Object(line));
    Ok(())
}

fn us(d: Duration) -> u64 {
    d.as_micros() as u64
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|text| text.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

/// CPU seconds of the supervisor `pid` and its worker processes: its own and its reaped
/// children's, plus the same for each of its living children (the fork servers, which reap the
/// workers they forked; each worker's relay reaps its PID 1, which reaps its tool), from
/// `/proc/PID/stat`. Workers still running (warm ones) are not counted.
fn tree_cpu(pid: u32) -> anyhow::Result<f64> {
    let mut ticks = process_ticks(pid)?;
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let children = std::fs::read_to_string(task?.path().join("children")).unwrap_or_default();
        for child in children.split_whitespace().filter_map(|c| c.parse::<u32>().ok()) {
            ticks += process_ticks(child).unwrap_or(0);
        }
    }
    // SAFETY: sysconf with a valid name.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Ok(ticks as f64 / per_second)
}

/// utime + stime + cutime + cstime of one process, in clock ticks.
fn process_ticks(pid: u32) -> anyhow::Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the parenthesised command name: state is field 3; utime..cstime are 14..17.
    let after_name = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or_default();
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    Ok(fields.get(11..15).unwrap_or_default().iter().filter_map(|f| f.parse::<u64>().ok()).sum())
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

fn call(conn: &mut UnixStream, id: u64, ws: &str, tool: &str, args: &Value) -> anyhow::Result<()> {
    let request = ToolRequest {
        request_id: id.to_string(),
        tenant: "bench".into(),
        session: "bench".into(),
        workspace: ws.into(),
        profile: Default::default(),
        tool: tool.into(),
        args: args.clone(),
    };
    write_frame(conn, &request, MAX_FRAME_BYTES)?;
    loop {
        match read_frame::<SupervisorReply>(conn, MAX_FRAME_BYTES)? {
            Some(Ok(SupervisorReply::Result { outcome: ToolOutcome::Ok { .. }, .. })) => return Ok(()),
            Some(Ok(SupervisorReply::Result { outcome, .. })) => anyhow::bail!("{tool} failed: {outcome:?}"),
            Some(Ok(_)) => {}
            Some(Err(e)) => anyhow::bail!("{e}"),
            None => anyhow::bail!("supervisor closed the connection"),
        }
    }
}

fn percentiles(mut samples: Vec<Duration>) -> (Duration, Duration) {
    samples.sort();
    let at = |q: f64| samples[((samples.len() as f64 - 1.0) * q).round() as usize];
    (at(0.50), at(0.99))
}

fn sequential(
    conn: &mut UnixStream,
    ws: &str,
    tool: &str,
    args: &Value,
    count: usize,
    pause: Duration,
) -> anyhow::Result<(Duration, Duration)> {
    let mut samples = Vec::with_capacity(count);
    for i in 0..(WARMUP + count) {
        std::thread::sleep(pause);
        let start = Instant::now();
        call(conn, i as u64, ws, tool, args)?;
        if i >= WARMUP {
            samples.push(start.elapsed());
        }
    }
    Ok(percentiles(samples))
}

/// Calls done, time taken and the calls' p50/p99 with 8 callers on their own connections.
fn concurrent(
    socket: &Path,
    ws: &str,
    args: &Value,
    run_for: Duration,
) -> anyhow::Result<(usize, Duration, (Duration, Duration))> {
    let start = Instant::now();
    let callers: Vec<_> = (0..CONCURRENT_CALLERS)
        .map(|_| {
            let (socket, ws, args) = (socket.to_path_buf(), ws.to_owned(), args.clone());
            std::thread::spawn(move || -> anyhow::Result<Vec<Duration>> {
                let mut conn = UnixStream::connect(&socket)?;
                let mut samples = Vec::new();
                while start.elapsed() < run_for {
                    let began = Instant::now();
                    call(&mut conn, samples.len() as u64, &ws, "shell_exec", &args)?;
                    samples.push(began.elapsed());
                }
                Ok(samples)
            })
        })
        .collect();
    let mut samples = Vec::new();
    for caller in callers {
        samples.extend(caller.join().map_err(|_| anyhow::anyhow!("caller panicked"))??);
    }
    let elapsed = start.elapsed();
    anyhow::ensure!(!samples.is_empty(), "no call finished");
    Ok((samples.len(), elapsed, percentiles(samples)))
}

/// `bwrap --unshare-all true`, the reference the issue names.
fn bwrap_reference() -> Option<(Duration, Duration)> {
    let bwrap = ["/usr/bin/bwrap", "/bin/bwrap"].into_iter().find(|p| Path::new(p).exists())?;
    let args = ["--unshare-all", "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc", "true"];
    let mut samples = Vec::new();
    for i in 0..(WARMUP + SEQUENTIAL) {
        let start = Instant::now();
        let ok = Command::new(bwrap).args(args).status().ok()?.success();
        if !ok {
            return None;
        }
        if i >= WARMUP {
            samples.push(start.elapsed());
        }
    }
    Some(percentiles(samples))
}
