//! Starting and watching a real `spiderweb up` (shared by `up.rs` and `chat.rs`).
//!
//! Each stack gets its own temp `HOME`, `XDG_RUNTIME_DIR`, state dir and a free port, so tests
//! run in parallel. Whatever happens, dropping a stack SIGKILLs `up` and every daemon pid it
//! reported, so a failed test leaves nothing behind.

#![allow(dead_code)]

use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use spiderweb_tests::gateway_bin;

/// How long `up` may take to print its banner (debug builds on a loaded 2-core machine).
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// A provider key in `up`'s environment: only the broker may inherit it.
pub const FAKE_KEY: &str = "sk-spiderweb-test-not-a-real-key";

pub struct UpStack {
    child: Child,
    tmp: tempfile::TempDir,
    pub url: String,
    pub runtime_dir: PathBuf,
    /// broker, worker, gateway.
    pub pids: [u32; 3],
    pub banner: Vec<String>,
    extra_pids: Vec<u32>,
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind(("127.0.0.1", 0)).unwrap().local_addr().unwrap().port()
}

impl UpStack {
    /// `spiderweb up --demo --port <free> <extra>`, with the state dir in the temp `HOME`'s
    /// default place (so `chat` finds the token the way a user's would).
    pub fn start(extra: &[&str]) -> UpStack {
        let tmp = tempfile::tempdir().unwrap();
        for dir in ["home", "run"] {
            std::fs::create_dir(tmp.path().join(dir)).unwrap();
        }
        let port = free_port().to_string();
        let mut args = vec!["up", "--port", &port];
        args.extend_from_slice(extra);
        let mut child = Command::new(gateway_bin())
            .args(&args)
            .env("HOME", tmp.path().join("home"))
            .env("XDG_RUNTIME_DIR", tmp.path().join("run"))
            .env("OPENAI_API_KEY", FAKE_KEY)
            .env_remove("XDG_STATE_HOME")
            .env_remove("XDG_CONFIG_HOME")
            .env_remove("SPIDERWEB_CONFIG")
            .env_remove("SPIDERWEB_BROKER_CONFIG")
            .env_remove("STATE_DIRECTORY")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(tmp.path().join("up.stderr")).unwrap())
            .spawn()
            .expect("start spiderweb up");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut banner = Vec::new();
        let deadline = Instant::now() + READY_TIMEOUT;
        while !banner.last().is_some_and(|l: &String| l.starts_with("next:")) {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => banner.push(line),
                Err(_) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!(
                        "spiderweb up printed no banner within {READY_TIMEOUT:?}; stdout so far: {banner:?}\nstderr:\n{}",
                        std::fs::read_to_string(tmp.path().join("up.stderr")).unwrap_or_default()
                    );
                }
            }
        }
        let field = |key: &str| {
            banner
                .iter()
                .find_map(|l| l.trim_start().strip_prefix(key))
                .unwrap_or_else(|| panic!("no {key:?} line in the banner: {banner:?}"))
                .trim()
                .to_owned()
        };
        let url = banner[0]
            .strip_prefix("spiderweb up: ready at ")
            .and_then(|rest| rest.split_whitespace().next())
            .unwrap_or_else(|| panic!("first line is not the ready line: {banner:?}"))
            .to_owned();
        let runtime_dir = PathBuf::from(field("runtime:").split_whitespace().next().unwrap());
        let pids_line = field("pids:");
        let numbers: Vec<u32> = pids_line.split_whitespace().filter_map(|w| w.parse().ok()).collect();
        let pids: [u32; 3] = numbers.try_into().unwrap_or_else(|_| panic!("three pids expected: {pids_line}"));
        UpStack { child, tmp, url, runtime_dir, pids, banner, extra_pids: vec![] }
    }

    pub fn home(&self) -> PathBuf {
        self.tmp.path().join("home")
    }

    pub fn state_dir(&self) -> PathBuf {
        self.home().join(".local/state/spiderweb")
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.tmp.path().join("up.stderr")).unwrap_or_default()
    }

    pub fn banner_line(&self, key: &str) -> String {
        self.banner.iter().find(|l| l.trim_start().starts_with(key)).cloned().unwrap_or_default()
    }

    /// Also kill `pid` when the stack is dropped (a restarted daemon).
    pub fn track(&mut self, pid: u32) {
        self.extra_pids.push(pid);
    }

    pub fn signal(&self, signal: i32) {
        signal_pid(self.child.id(), signal);
    }

    /// Waits for `up` to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            if Instant::now() > deadline {
                panic!("spiderweb up did not exit within {timeout:?}; stderr:\n{}", self.stderr());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Polls `up`'s stderr until `pred` holds.
    pub fn wait_stderr(&self, what: &str, timeout: Duration, pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let text = self.stderr();
            if pred(&text) {
                return text;
            }
            if Instant::now() > deadline {
                panic!("waited {timeout:?} for {what}; up's stderr:\n{text}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `spiderweb chat` against this stack, with its `HOME` (token discovery) and `stdin`.
    pub fn chat(&self, args: &[&str], stdin: &str) -> Output {
        let mut all = vec!["chat", "--url", &self.url];
        all.extend_from_slice(args);
        run_chat(&all, &self.home(), stdin)
    }
}

impl Drop for UpStack {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        for pid in self.pids.iter().chain(&self.extra_pids) {
            signal_pid(*pid, libc::SIGKILL);
        }
    }
}

/// `spiderweb <args>` with `HOME` set and `stdin` fed; waits at most a minute.
pub fn run_chat(args: &[&str], home: &Path, stdin: &str) -> Output {
    use std::io::Write as _;
    let mut child = Command::new(gateway_bin())
        .args(args)
        .env("HOME", home)
        .env_remove("SPIDERWEB_TOKEN")
        .env_remove("SPIDERWEB_URL")
        .env_remove("SPIDERWEB_CONFIG")
        .env_remove("XDG_STATE_HOME")
        .env_remove("STATE_DIRECTORY")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start spiderweb chat");
    child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(Duration::from_secs(60)) {
        Ok(output) => output.unwrap(),
        Err(_) => {
            signal_pid(pid, libc::SIGKILL);
            panic!("spiderweb {args:?} did not finish within 60 s");
        }
    }
}

pub fn signal_pid(pid: u32, signal: i32) {
    if pid != 0 {
        // SAFETY: kill(2) only sends a signal.
        unsafe {
            libc::kill(pid as libc::pid_t, signal);
        }
    }
}

/// Whether `pid` exists and is not a zombie.
pub fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat.rsplit(')').next().and_then(|rest| rest.split_whitespace().next()) != Some("Z"),
        Err(_) => false,
    }
}

/// Waits until none of `pids` is alive.
pub fn wait_gone(pids: &[u32], timeout: Duration) -> Vec<u32> {
    let deadline = Instant::now() + timeout;
    loop {
        let left: Vec<u32> = pids.iter().copied().filter(|p| alive(*p)).collect();
        if left.is_empty() || Instant::now() > deadline {
            return left;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
