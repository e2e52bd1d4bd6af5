//! Shared helpers: workspaces owned by a test tenant uid, and running the real
//! `spiderweb-worker run` binary.
#![allow(dead_code)] // each test binary uses a different subset

use std::os::unix::fs::{chown, symlink};
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

pub const WORKER: &str = env!("CARGO_BIN_EXE_spiderweb-worker");

/// A distinct uid per test (and per purpose), so rlimits on processes and leftover-process
/// checks of one test never see another's processes.
pub fn test_uid(name: &str) -> u32 {
    let hash = name.bytes().fold(2166136261u32, |h, b| (h ^ b as u32).wrapping_mul(16777619));
    300_000 + hash % 100_000
}

/// Fails the test (never skips it) when not root: the tests exercise the root path
/// (tenant uids); the unprivileged path is exercised by dropping to a uid explicitly.
pub fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "these tests must run as root (they run workers under per-tenant uids); run scripts/test as root"
    );
}

pub struct Workspace {
    pub dir: tempfile::TempDir,
    pub uid: u32,
}

impl Workspace {
    pub fn new(uid: u32) -> Self {
        require_root();
        let dir = tempfile::Builder::new().prefix("sw-ws-").tempdir().expect("tempdir");
        chown(dir.path(), Some(uid), Some(uid)).expect("chown workspace");
        Workspace { dir, uid }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn join(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// Creates a file (and parents) owned by the tenant.
    pub fn write(&self, rel: &str, content: impl AsRef<[u8]>) {
        let path = self.join(rel);
        let mut made = Vec::new();
        let mut parent = path.parent();
        while let Some(p) = parent {
            if p.exists() {
                break;
            }
            made.push(p.to_path_buf());
            parent = p.parent();
        }
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        for dir in made {
            chown(&dir, Some(self.uid), Some(self.uid)).unwrap();
        }
        std::fs::write(&path, content).unwrap();
        chown(&path, Some(self.uid), Some(self.uid)).unwrap();
    }

    pub fn symlink(&self, rel: &str, target: &str) {
        symlink(target, self.join(rel)).unwrap();
    }

    pub fn read(&self, rel: &str) -> Option<String> {
        std::fs::read_to_string(self.join(rel)).ok()
    }
}

#[derive(Debug)]
pub struct Outcome {
    pub json: Value,
    pub exit: Option<i32>,
    pub stderr: String,
}

impl Outcome {
    pub fn ok(&self) -> &Value {
        assert_eq!(self.json["status"], "ok", "tool failed: {} (stderr: {})", self.json, self.stderr);
        &self.json["payload"]
    }

    pub fn code(&self) -> &str {
        self.json["code"].as_str().unwrap_or("")
    }

    pub fn failed(&self, code: &str) {
        assert_eq!(self.json["status"], "failed", "expected failure {code}, got {}", self.json);
        assert_eq!(self.code(), code, "{}", self.json);
    }

    /// stdout + stderr of a shell_exec result.
    pub fn shell_text(&self) -> String {
        let p = &self.json["payload"];
        format!("{}{}", p["stdout"].as_str().unwrap_or(""), p["stderr"].as_str().unwrap_or(""))
    }
}

/// Runs one tool through `spiderweb-worker run`.
pub fn run_tool(ws: &Workspace, profile: &str, tool: &str, args: Value, extra: &[&str]) -> Outcome {
    run_tool_with(ws, profile, tool, args, extra, |_| {})
}

/// As [`run_tool`], letting the caller adjust the command (environment, inherited fds).
pub fn run_tool_with(
    ws: &Workspace,
    profile: &str,
    tool: &str,
    args: Value,
    extra: &[&str],
    adjust: impl FnOnce(&mut Command),
) -> Outcome {
    let mut cmd = Command::new(WORKER);
    cmd.arg("run")
        .arg("--workspace")
        .arg(ws.path())
        .args(["--profile", profile])
        .args(extra)
        .arg("--")
        .arg(tool)
        .arg(args.to_string());
    adjust(&mut cmd);
    let out = cmd.output().expect("start spiderweb-worker");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let json = serde_json::from_str(stdout.trim()).unwrap_or_else(|_| {
        panic!("no outcome JSON (exit {:?}): {stdout} / {}", out.status.code(), String::from_utf8_lossy(&out.stderr))
    });
    Outcome { json, exit: out.status.code(), stderr: String::from_utf8_lossy(&out.stderr).into_owned() }
}

pub fn shell(ws: &Workspace, profile: &str, command: &str) -> Outcome {
    run_tool(ws, profile, "shell_exec", serde_json::json!({ "command": command }), &[])
}

/// `pid: command line` of each process, for failure messages.
pub fn describe(pids: &[i32]) -> String {
    let line = |pid: &i32| {
        let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        format!("{pid}: {}", String::from_utf8_lossy(&cmd).replace('\0', " "))
    };
    pids.iter().map(line).collect::<Vec<_>>().join("; ")
}

/// Host processes (pids) running as `uid`.
pub fn processes_of(uid: u32) -> Vec<i32> {
    use std::os::unix::fs::MetadataExt;
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else { continue };
        if entry.metadata().is_ok_and(|m| m.uid() == uid) {
            pids.push(pid);
        }
    }
    pids
}
