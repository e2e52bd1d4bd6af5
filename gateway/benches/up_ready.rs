//! How long `spiderweb up` takes from exec to "ready" (all three daemons sent `READY=1`), and
//! from SIGTERM to exit with everything stopped. The target: ready in under a second.
//!
//! `cargo bench -p spiderweb-gateway --bench up_ready` (builds the release binaries of this
//! crate; build the broker and worker in release too: `cargo build --release --workspace --bins`).
//! Each run gets a fresh HOME, state dir and runtime dir, so every start creates tokens and the
//! database from nothing (the worst case).

use std::io::{BufRead as _, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const RUNS: usize = 20;

fn main() {
    let bin = env!("CARGO_BIN_EXE_spiderweb");
    let mut ready = Vec::new();
    let mut self_reported = Vec::new();
    let mut stop = Vec::new();
    for _ in 0..RUNS {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir(tmp.path().join("run")).unwrap();
        let started = Instant::now();
        let mut child = Command::new(bin)
            .args(["up", "--demo", "--port", "0"])
            .env("HOME", tmp.path())
            .env("XDG_RUNTIME_DIR", tmp.path().join("run"))
            .env_remove("XDG_STATE_HOME")
            .env_remove("SPIDERWEB_CONFIG")
            .env_remove("SPIDERWEB_BROKER_CONFIG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start spiderweb up");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let first = lines.next().expect("a banner").unwrap();
        ready.push(started.elapsed());
        let ms: u64 = first
            .rsplit(" in ")
            .next()
            .and_then(|rest| rest.trim_end_matches(" ms").parse().ok())
            .unwrap_or_else(|| panic!("unexpected first line: {first}"));
        self_reported.push(Duration::from_millis(ms));
        // SAFETY: kill(2) only sends a signal.
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
        let stopping = Instant::now();
        let status = child.wait().unwrap();
        stop.push(stopping.elapsed());
        assert!(status.success(), "up exited with {status}");
    }
    println!("spiderweb up --demo, {RUNS} cold starts (fresh state each)");
    report("exec → banner (all three READY=1)", &mut ready);
    report("as printed by up (from its start)", &mut self_reported);
    report("SIGTERM → exit, all stopped", &mut stop);
}

fn report(what: &str, samples: &mut [Duration]) {
    samples.sort();
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
    println!(
        "{what:<40} p50 {:>6.1} ms  p90 {:>6.1} ms  max {:>6.1} ms",
        at(0.5).as_secs_f64() * 1e3,
        at(0.9).as_secs_f64() * 1e3,
        at(1.0).as_secs_f64() * 1e3
    );
}
