//! The five tools through the real binary and the full confinement path (spec legacy-v1 §6).

mod common;

use common::*;
use serde_json::json;

fn ws(name: &str) -> Workspace {
    Workspace::new(test_uid(name))
}

#[test]
fn file_read_defaults_caps_and_utf8_truncation() {
    let w = ws("file_read");
    w.write("a.txt", "héllo\n");
    let r = run_tool(&w, "workspace-write", "file_read", json!({"path": "a.txt"}), &[]);
    assert_eq!(
        *r.ok(),
        json!({"path":"a.txt","bytes":7,"truncated":false,"content":"héllo\n","ready":true,"wait_until_ready":true})
    );
    // max_bytes 2 would split "é" (bytes 1..3): cut back to "h".
    let r = run_tool(&w, "read-only", "file_read", json!({"path": "/workspace/a.txt", "max_bytes": 2}), &[]);
    assert_eq!(r.ok()["content"], "h");
    assert_eq!(r.ok()["truncated"], true);

    w.write("big.bin", vec![b'x'; 9 * 1024 * 1024]);
    let r = run_tool(&w, "read-only", "file_read", json!({"path": "big.bin", "max_bytes": 100_000_000u64}), &[]);
    assert_eq!(r.ok()["bytes"], 8 * 1024 * 1024, "max_bytes is capped at 8 MiB");

    run_tool(&w, "read-only", "file_read", json!({}), &[]).failed("invalid_params");
    let r = run_tool(&w, "read-only", "file_read", json!({"path": "a.txt", "max_bytes": -1}), &[]);
    r.failed("invalid_params");
    assert!(r.json["message"].as_str().unwrap().contains("max_bytes"), "{}", r.json);
    let r = run_tool(&w, "read-only", "file_read", json!({"path": "nope"}), &[]);
    r.failed("execution_failed");
    assert_eq!(r.json["message"], "FileNotFound");
    run_tool(&w, "read-only", "file_read", json!({"path": "~/x"}), &[]).failed("permission_denied");
}

#[test]
fn file_write_creates_parents_appends_and_respects_profiles() {
    let w = ws("file_write");
    let r = run_tool(&w, "workspace-write", "file_write", json!({"path": "d/e/f.txt", "content": "one\n"}), &[]);
    assert_eq!(
        *r.ok(),
        json!({"path":"d/e/f.txt","bytes_written":4,"append":false,"ready":true,"wait_until_ready":true})
    );
    run_tool(
        &w,
        "workspace-write",
        "file_write",
        json!({"path": "d/e/f.txt", "content": "two\n", "append": true}),
        &[],
    )
    .ok();
    assert_eq!(w.read("d/e/f.txt").unwrap(), "one\ntwo\n");
    use std::os::unix::fs::MetadataExt;
    assert_eq!(std::fs::metadata(w.join("d/e/f.txt")).unwrap().uid(), w.uid, "files belong to the tenant uid");
    let r = run_tool(
        &w,
        "workspace-write",
        "file_write",
        json!({"path": "x/y", "content": "", "create_parents": false}),
        &[],
    );
    r.failed("execution_failed");
    run_tool(&w, "workspace-write", "file_write", json!({"path": "a"}), &[]).failed("invalid_params");
    run_tool(&w, "read-only", "file_write", json!({"path": "ro.txt", "content": "x"}), &[]).failed("permission_denied");
    assert!(w.read("ro.txt").is_none());

    // wait_until_ready:false on a FIFO nobody reads: success, not ready, nothing written.
    nix::unistd::mkfifo(&w.join("fifo"), nix::sys::stat::Mode::from_bits_truncate(0o644)).unwrap();
    std::os::unix::fs::chown(w.join("fifo"), Some(w.uid), Some(w.uid)).unwrap();
    let args = json!({"path": "fifo", "content": "x", "wait_until_ready": false, "create_parents": false});
    let r = run_tool(&w, "workspace-write", "file_write", args, &[]);
    assert_eq!((r.ok()["ready"].as_bool(), r.ok()["bytes_written"].as_u64()), (Some(false), Some(0)));
}

#[test]
fn file_list_sorted_recursive_and_capped() {
    let w = ws("file_list");
    w.write("b.txt", "");
    w.write("a/c.txt", "");
    w.write("a/d/e.txt", "");
    w.symlink("link", "a");
    let r = run_tool(&w, "read-only", "file_list", json!({}), &[]);
    assert_eq!(
        *r.ok(),
        json!({"path":".","entries":[
            {"name":"a","type":"directory"},{"name":"b.txt","type":"file"},{"name":"link","type":"symlink"}
        ],"truncated":false})
    );
    let r = run_tool(&w, "read-only", "file_list", json!({"recursive": true}), &[]);
    let names: Vec<&str> = r.ok()["entries"].as_array().unwrap().iter().map(|e| e["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["a", "a/c.txt", "a/d", "a/d/e.txt", "b.txt", "link"], "symlinked dirs are not entered");
    let r = run_tool(&w, "read-only", "file_list", json!({"recursive": true, "max_entries": 2}), &[]);
    assert_eq!(r.ok()["entries"].as_array().unwrap().len(), 2);
    assert_eq!(r.ok()["truncated"], true);
}

fn search_fixture(name: &str) -> Workspace {
    let w = ws(name);
    w.write("src/main.rs", "fn main() {\n    println!(\"Needle one\");\n}\n");
    w.write("src/lib.rs", "// needle two\npub fn f() {}\n// NEEDLE three\n");
    w.write("notes.txt", "no match here\nneedle in notes\n");
    w.write(".hidden/secret.txt", "needle hidden\n");
    w.write("ignored/x.txt", "needle ignored\n");
    w.write(".gitignore", "ignored/\n");
    w.write(".git/HEAD", "ref: refs/heads/main\n");
    w.write("bin.dat", b"needle before nul\0needle after\n");
    w.write("crlf.txt", "needle crlf\r\nsecond\r\n");
    w
}

fn search(w: &Workspace, backend: &str, args: serde_json::Value) -> serde_json::Value {
    run_tool(w, "read-only", "search_code", args, &["--search-backend", backend]).ok().clone()
}

#[test]
fn search_code_ripgrep_and_builtin_give_identical_results() {
    assert!(
        std::path::Path::new("/usr/bin/rg").exists(),
        "ripgrep is not installed (/usr/bin/rg); scripts/test installs the Debian package `ripgrep`"
    );
    let w = search_fixture("search_code");
    let cases = [
        json!({"query": "needle"}),
        json!({"query": "needle", "case_sensitive": true}),
        json!({"query": "NEEDLE", "case_sensitive": true}),
        json!({"query": "needle", "path": "src"}),
        json!({"query": "needle", "path": "notes.txt"}),
        json!({"query": "ne+dle (one|two)", "max_results": 1}),
        json!({"query": "zzz-no-match"}),
    ];
    for args in cases {
        let rg = search(&w, "ripgrep", args.clone());
        let builtin = search(&w, "builtin", args.clone());
        assert_eq!(rg, builtin, "backends differ for {args}");
    }
    let all = search(&w, "builtin", json!({"query": "needle"}));
    let matches: Vec<&str> = all["matches"].as_array().unwrap().iter().map(|m| m.as_str().unwrap()).collect();
    assert!(matches.contains(&"./src/main.rs:2:    println!(\"Needle one\");"), "{matches:?}");
    assert!(
        matches.iter().all(|m| !m.contains("hidden") && !m.contains("ignored")),
        "hidden/ignored skipped: {matches:?}"
    );
    assert_eq!(all["count"], matches.len());
    let one = search(&w, "builtin", json!({"query": "needle", "path": "notes.txt"}));
    assert_eq!(one["matches"], json!(["notes.txt:2:needle in notes"]));
    let capped = search(&w, "ripgrep", json!({"query": "needle", "max_results": 2}));
    assert_eq!((capped["count"].as_u64(), capped["truncated"].as_bool()), (Some(2), Some(true)));

    let bad = run_tool(&w, "read-only", "search_code", json!({"query": "("}), &[]);
    bad.failed("invalid_params");
    run_tool(&w, "read-only", "search_code", json!({"query": "x", "path": "../"}), &[]).failed("permission_denied");
}

#[test]
fn shell_exec_reports_both_streams_exit_codes_signals_and_timeouts() {
    let w = ws("shell_exec");
    w.write("sub/f.txt", "in sub\n");
    let r = run_tool(&w, "workspace-write", "shell_exec", json!({"command": "echo out; echo err >&2; exit 3"}), &[]);
    assert_eq!(*r.ok(), json!({"exit_code": 3, "stdout": "out\n", "stderr": "err\n"}));
    let r = run_tool(&w, "read-only", "shell_exec", json!({"command": "pwd; cat f.txt", "cwd": "sub"}), &[]);
    assert_eq!(r.ok()["stdout"], "/workspace/sub\nin sub\n");
    let r = run_tool(&w, "read-only", "shell_exec", json!({"command": "kill -9 $$"}), &[]);
    assert_eq!(r.ok()["exit_code"], 9, "signal death reports the signal number");
    let r = run_tool(&w, "read-only", "shell_exec", json!({"command": "sleep 30", "timeout_ms": 300}), &[]);
    r.failed("timeout");
    assert_eq!(r.json["message"], "command timed out");
    // The worker's own deadline is the only timeout: a command exiting 124 (what `timeout`
    // returns, which legacy v1 could not tell from its own timeout) is just an exit code.
    let r = run_tool(&w, "read-only", "shell_exec", json!({"command": "timeout 0.1 sleep 5; exit $?"}), &[]);
    assert_eq!(r.ok()["exit_code"], 124, "a command's own 124 is not the tool's timeout: {}", r.json);
    let r = run_tool(&w, "read-only", "shell_exec", json!({"command": "head -c 3000000 /dev/zero | tr '\\0' a"}), &[]);
    assert_eq!(r.ok()["stdout"].as_str().unwrap().len(), 1024 * 1024, "stdout capped at 1 MiB");
    // A login shell: /etc/profile may extend PATH; nothing of the launcher's environment leaks.
    let r = run_tool(&w, "read-only", "shell_exec", json!({"command": "echo $HOME; env"}), &[]);
    let out = r.ok()["stdout"].as_str().unwrap();
    assert!(out.starts_with("/workspace\n"), "{out}");
    assert!(out.contains("PATH=/usr/local/bin:/usr/bin:/bin"), "{out}");
    assert!(!out.contains("CARGO") && !out.contains("RUST"), "launcher environment leaked: {out}");
    run_tool(&w, "read-only", "shell_exec", json!({"command": "true", "cwd": "../.."}), &[])
        .failed("permission_denied");
    run_tool(&w, "read-only", "shell_exec", json!({"timeout_ms": 5}), &[]).failed("invalid_params");
}

#[test]
fn streamed_output_arrives_before_the_result() {
    let w = ws("streamed");
    let r = run_tool(&w, "read-only", "shell_exec", json!({"command": "echo first; echo second >&2"}), &["--stream"]);
    r.ok();
    assert!(r.stderr.contains("[stdout] first\n") && r.stderr.contains("[stderr] second\n"), "{}", r.stderr);
}

#[test]
fn unknown_tools_and_bad_arguments_are_refused_cleanly() {
    let w = ws("unknown_tool");
    run_tool(&w, "read-only", "rm_rf", json!({}), &[]).failed("tool_not_found");
    run_tool(&w, "read-only", "file_read", json!(["path"]), &[]).failed("invalid_params");
    run_tool(&w, "read-only", "file_read", json!({"path": 5}), &[]).failed("invalid_params");
}

#[test]
fn schemas_are_printed_for_operators() {
    let out = std::process::Command::new(WORKER).arg("schemas").output().unwrap();
    let schemas: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let names: Vec<&str> = schemas.as_array().unwrap().iter().map(|s| s["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["file_read", "file_write", "file_list", "search_code", "shell_exec"]);
}
