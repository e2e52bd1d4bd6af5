//! The negative lookup cache seen by a program: a build tool probing include directories for
//! headers that are not there, through a real FUSE mount of a real node.
//!
//! `cargo bench -p spiderweb-fsnode --bench negative_lookup` (root, `/dev/fuse`, fuse3) starts
//! a release `spiderweb-fs-node` and `spiderweb-fs-mount mount`, makes 20 include directories
//! each holding 10 headers, then probes 2,000 names that do not exist (100 per directory,
//! `stat` each) in five rounds. Round 1 is cold (every miss asks the node), rounds 2-5 are
//! what the cache saves (answered by the mount client; the kernel does not cache FUSE misses).
//! The same probes on the native directory are the reference. Figures go to
//! `docs/benchmarks.md`.

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const DIRS: usize = 20;
const MISSES_PER_DIR: usize = 100;
const ROUNDS: usize = 5;

fn probe(root: &Path) -> Duration {
    let t = Instant::now();
    for d in 0..DIRS {
        for m in 0..MISSES_PER_DIR {
            let missing = root.join(format!("inc{d}/probe{m}.h"));
            assert!(std::fs::metadata(&missing).is_err(), "{} exists", missing.display());
        }
    }
    t.elapsed()
}

fn per_probe_us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6 / (DIRS * MISSES_PER_DIR) as f64
}

fn started(mut child: Child, want: &str) -> Child {
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    assert!(line.starts_with(want), "unexpected first line {line:?}");
    child
}

fn main() {
    let dir = tempfile::tempdir().expect("tempdir");
    let export = dir.path().join("export");
    for d in 0..DIRS {
        let inc = export.join(format!("inc{d}"));
        std::fs::create_dir_all(&inc).unwrap();
        for h in 0..10 {
            std::fs::write(inc.join(format!("real{h}.h")), "#pragma once\n").unwrap();
        }
    }
    let (mut node, url) = common::start_node(&export);
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let mount = Command::new(env!("CARGO_BIN_EXE_spiderweb-fs-mount"))
        .args(["--endpoint", &format!("n={url}#w@/src"), "mount"])
        .arg(&mnt)
        .env("SPIDERWEB_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .expect("start mount (needs /dev/fuse and fuse3)");
    let mut mount = started(mount, "mounted at");
    let src = mnt.join("src");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !src.join("inc0/real0.h").exists() {
        assert!(Instant::now() < deadline, "mount not ready");
        std::thread::sleep(Duration::from_millis(20));
    }

    println!("{} missing headers probed per round ({DIRS} directories x {MISSES_PER_DIR})", DIRS * MISSES_PER_DIR);
    let native: Vec<Duration> = (0..ROUNDS).map(|_| probe(&export)).collect();
    let mounted: Vec<Duration> = (0..ROUNDS).map(|_| probe(&src)).collect();
    let warm = |rounds: &[Duration]| rounds[1..].iter().sum::<Duration>() / (ROUNDS as u32 - 1);
    println!("native:            {:.1} us per probe", per_probe_us(warm(&native)));
    println!("mount, cold (round 1, every miss asks the node): {:.1} us per probe", per_probe_us(mounted[0]));
    println!("mount, warm (rounds 2-{ROUNDS}, negative cache): {:.1} us per probe", per_probe_us(warm(&mounted)));
    println!("speed-up from the cache: {:.1}x", mounted[0].as_secs_f64() / warm(&mounted).as_secs_f64());

    // SAFETY: signalling our own child; the mount unmounts itself on SIGTERM.
    unsafe { libc::kill(mount.id() as i32, libc::SIGTERM) };
    let _ = mount.wait();
    let _ = node.kill();
    let _ = node.wait();
}
