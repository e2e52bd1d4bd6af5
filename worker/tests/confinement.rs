//! Confinement as the tool sees it, the refusal to run unconfined, and the unprivileged
//! (user-namespace) launcher path.

mod common;

use std::os::unix::process::CommandExt;

use common::*;
use serde_json::json;

/// Both ways a worker process starts: forked by the tenant's fork server (what the supervisor
/// does) and exec'd (its fallback).
const SPAWN_PATHS: [(&str, &[&str]); 2] = [("fork-server", &[]), ("confined", &["--exec"])];

#[test]
fn every_layer_is_active_inside_the_tool() {
    for (argv1, extra) in SPAWN_PATHS {
        let w = Workspace::new(test_uid("layers"));
        let command = "grep -E '^(NoNewPrivs|Seccomp|Cap(Inh|Prm|Eff|Bnd|Amb)|SigBlk):' /proc/self/status; \
            id -u; id -g; hostname; echo pid1=$(cat /proc/1/comm); \
            awk '{print $2}' /proc/self/mounts | sort | tr '\\n' ' '; echo; ulimit -u; ulimit -n; ulimit -f; \
            ls /proc/1/fd | tr '\\n' ' '; echo; env | sort | tr '\\n' ' '";
        let out = run_tool(&w, "workspace-write", "shell_exec", json!({ "command": command }), extra);
        let text = out.ok()["stdout"].as_str().unwrap().to_owned();
        let shown =
            run_tool(&w, "read-only", "shell_exec", json!({"command": "tr '\\0' ' ' < /proc/1/cmdline"}), extra);
        let cmdline = shown.ok()["stdout"].as_str().unwrap();
        assert_eq!(cmdline.trim_end(), format!("{WORKER} {argv1}"), "the plan is not in argv");
        for line in [
            "NoNewPrivs:\t1",
            "Seccomp:\t2",
            "CapEff:\t0000000000000000",
            "CapBnd:\t0000000000000000",
            "SigBlk:\t0000000000000000",
        ] {
            assert!(text.contains(line), "{argv1}: missing {line:?} in {text}");
        }
        assert!(text.contains(&format!("\n{}\n{}\nspiderweb-worker\n", w.uid, w.uid)), "{argv1}: {text}");
        assert!(text.contains("pid1=spiderweb-worke"), "{argv1}: the worker is PID 1 of its namespace: {text}");
        let mounts: Vec<&str> = text.lines().find(|l| l.starts_with("/ ")).unwrap().split_whitespace().collect();
        for mount in &mounts {
            let allowed = ["/", "/usr", "/etc", "/workspace", "/tmp", "/dev", "/proc"].contains(mount)
                || mount.starts_with("/dev/")
                || mount.starts_with("/workspace/.git");
            assert!(allowed, "{argv1}: unexpected mount {mount} in {mounts:?}");
        }
        assert!(text.contains("\n512\n1024\n1048576\n"), "{argv1}: rlimits (nproc, nofile, fsize KiB): {text}");
        // PID 1 holds its stdio and the tool's pipes, nothing of the launcher or fork server.
        let fds = text.lines().rev().nth(1).unwrap_or_default();
        assert!(
            fds.split_whitespace().all(|fd| fd.parse::<u32>().is_ok_and(|fd| fd <= 6)),
            "{argv1}: PID 1's fds {fds}"
        );
        let env = text.lines().last().unwrap_or_default();
        assert_eq!(
            env.trim_end(),
            "HOME=/workspace LANG=C.UTF-8 PATH=/usr/local/bin:/usr/bin:/bin:/usr/local/games:/usr/games PWD=/workspace \
             SHELL=/bin/bash SHLVL=1 TERM=dumb TMPDIR=/tmp USER=spiderweb _=/usr/bin/env",
            "{argv1}: only the sandbox's environment (PATH as the login files set it)"
        );
    }
}

#[test]
fn a_protected_path_that_is_a_symlink_stops_the_worker_before_the_tool_runs() {
    let w = Workspace::new(test_uid("protected-symlink"));
    std::fs::create_dir_all(w.join(".git")).unwrap();
    w.symlink(".git/hooks", "/tmp");
    let out = shell(&w, "workspace-write", "touch ran");
    out.failed("sandbox_unavailable");
    let message = out.json["message"].as_str().unwrap();
    assert!(message.contains("protected path .git/hooks"), "{message}");
    assert!(w.read("ran").is_none(), "the tool must not run unconfined");
    assert_eq!(out.exit, Some(1));
}

#[test]
fn a_missing_workspace_is_reported_and_nothing_runs() {
    require_root();
    let out = std::process::Command::new(WORKER)
        .args(["run", "--workspace", "/nonexistent/sw-ws", "--uid", "400000", "--gid", "400000", "--"])
        .args(["shell_exec", r#"{"command":"true"}"#])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/sw-ws"));
}

#[test]
fn root_never_runs_tools_as_root() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(WORKER)
        .arg("run")
        .arg("--workspace")
        .arg(dir.path())
        .args(["--", "shell_exec", r#"{"command":"id"}"#])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "a root-owned workspace without --uid is refused");
    assert!(String::from_utf8_lossy(&out.stderr).contains("--uid"), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn an_unprivileged_launcher_confines_through_a_user_namespace() {
    let uid = test_uid("unprivileged");
    let w = Workspace::new(uid);
    w.write("a.txt", "inside\n");
    let secret = tempfile::Builder::new().prefix("sw-unpriv-secret-").tempdir().unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(secret.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(secret.path().join("s.txt"), "SW-UNPRIV-SECRET").unwrap();
    std::fs::set_permissions(secret.path().join("s.txt"), std::fs::Permissions::from_mode(0o644)).unwrap();
    let command = format!(
        "grep -E '^(NoNewPrivs|Seccomp|CapEff|CapBnd):' /proc/self/status; cat a.txt; echo x > b.txt; \
         cat {}/s.txt; touch /etc/x; unshare -r true && echo NAMESPACED; ps -e | wc -l",
        secret.path().display()
    );
    let out = run_tool_with(&w, "workspace-write", "shell_exec", json!({ "command": command }), &[], |cmd| {
        cmd.uid(uid).gid(uid);
    });
    let text = out.shell_text();
    assert_eq!(out.json["status"], "ok", "{}", out.json);
    for line in ["NoNewPrivs:\t1", "Seccomp:\t2", "CapEff:\t0000000000000000", "CapBnd:\t0000000000000000", "inside"] {
        assert!(text.contains(line), "missing {line:?}: {text}");
    }
    assert!(!text.contains("SW-UNPRIV-SECRET") && !text.contains("NAMESPACED"), "{text}");
    assert!(text.contains("'/etc/x': Read-only file system"), "{text}");
    assert_eq!(w.read("b.txt").as_deref(), Some("x\n"), "the workspace stays writable");
    use std::os::unix::fs::MetadataExt;
    assert_eq!(std::fs::metadata(w.join("b.txt")).unwrap().uid(), uid, "files belong to the launcher's uid");
}
