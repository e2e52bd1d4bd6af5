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
//! ```

use std::os::unix::fs::chown;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

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
const CONCURRENT_FOR: Duration = Duration::from_secs(5);

fn main() -> anyhow::Result<()> {
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
    let config = json!({
        "socket": socket,
        "workspace_roots": [dir.path()],
        "uid_range": {"start": TENANT_UID, "count": 1},
        "tenants": {"bench": {"uid": TENANT_UID, "gid": TENANT_UID}},
        "max_workers": 16,
    });
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
    let result = run(&socket, &ws);
    let _ = supervisor.kill();
    let _ = supervisor.wait();
    result
}

fn run(socket: &Path, ws: &str) -> anyhow::Result<()> {
    let shell_true = json!({"command": "true"});
    let mut conn = UnixStream::connect(socket)?;
    let shell_paced = sequential(&mut conn, ws, "shell_exec", &shell_true, PACED, PACE)?;
    let read = sequential(&mut conn, ws, "file_read", &json!({"path": "one-mib.txt"}), PACED, PACE)?;
    let shell = sequential(&mut conn, ws, "shell_exec", &shell_true, SEQUENTIAL, Duration::ZERO)?;
    let calls_per_s = concurrent(socket, ws, &shell_true)?;
    let bwrap = bwrap_reference();
    println!("| figure | result | target (issue 4) |");
    println!("|---|---|---|");
    println!(
        "| `shell_exec true` round trip p50 / p99, calls {} ms apart (warm worker) | {} / {} | p50 ≤ 3 ms |",
        PACE.as_millis(),
        ms(shell_paced.0),
        ms(shell_paced.1)
    );
    println!("| `shell_exec true` round trip p50 / p99, back to back | {} / {} | — |", ms(shell.0), ms(shell.1));
    println!(
        "| `file_read` 1 MiB round trip p50 / p99, calls {} ms apart | {} / {} | — |",
        PACE.as_millis(),
        ms(read.0),
        ms(read.1)
    );
    println!("| `shell_exec true` calls/s, {CONCURRENT_CALLERS} concurrent callers | {calls_per_s:.0} | ≥ 200 |");
    match bwrap {
        Some((p50, p99)) => {
            println!("| `bwrap --unshare-all true` p50 / p99 (reference) | {} / {} | — |", ms(p50), ms(p99))
        }
        None => println!("| `bwrap --unshare-all true` | bwrap not installed | — |"),
    }
    let line = json!({
        "shell_true_paced_p50_us": shell_paced.0.as_micros() as u64, "shell_true_paced_p99_us": shell_paced.1.as_micros() as u64,
        "shell_true_p50_us": shell.0.as_micros() as u64, "shell_true_p99_us": shell.1.as_micros() as u64,
        "file_read_1mib_p50_us": read.0.as_micros() as u64, "file_read_1mib_p99_us": read.1.as_micros() as u64,
        "calls_per_s_8_callers": calls_per_s.round() as u64,
        "bwrap_p50_us": bwrap.map(|b| b.0.as_micros() as u64), "bwrap_p99_us": bwrap.map(|b| b.1.as_micros() as u64),
    });
    println!("{line}");
    Ok(())
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

fn concurrent(socket: &Path, ws: &str, args: &Value) -> anyhow::Result<f64> {
    let done = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let callers: Vec<_> = (0..CONCURRENT_CALLERS)
        .map(|_| {
            let (done, socket, ws, args) = (done.clone(), socket.to_path_buf(), ws.to_owned(), args.clone());
            std::thread::spawn(move || -> anyhow::Result<()> {
                let mut conn = UnixStream::connect(&socket)?;
                let mut i = 0;
                while start.elapsed() < CONCURRENT_FOR {
                    call(&mut conn, i, &ws, "shell_exec", &args)?;
                    done.fetch_add(1, Ordering::Relaxed);
                    i += 1;
                }
                Ok(())
            })
        })
        .collect();
    for caller in callers {
        caller.join().map_err(|_| anyhow::anyhow!("caller panicked"))??;
    }
    Ok(done.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64())
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
