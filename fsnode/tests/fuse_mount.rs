//! Real FUSE mounts of `spiderweb-fs-mount` over real nodes: ordinary programs through the
//! mount, read-only exports, escape attempts, host-side changes, a node restarted under a
//! live mount, clean unmount on SIGTERM. Needs `/dev/fuse` and `fusermount3` (package
//! `fuse3`, installed by `scripts/test`); without them the tests fail saying so.

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{MOUNT_BIN, Node};

struct Mount {
    child: Child,
    at: PathBuf,
    _dir: tempfile::TempDir,
}

fn is_mounted(at: &Path) -> bool {
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap();
    let at = at.to_str().unwrap();
    mounts.lines().any(|l| l.split(' ').nth(1) == Some(at))
}

fn require_fuse() {
    assert!(Path::new("/dev/fuse").exists(), "FUSE tests need /dev/fuse (load the fuse module)");
    let has_fusermount = Command::new("fusermount3").arg("-V").output().is_ok();
    assert!(has_fusermount, "FUSE tests need fusermount3: apt-get install fuse3 (scripts/test does)");
}

impl Mount {
    fn start(endpoints: &[String]) -> Mount {
        require_fuse();
        let dir = tempfile::tempdir().unwrap();
        let at = dir.path().join("mnt");
        std::fs::create_dir(&at).unwrap();
        let mut cmd = Command::new(MOUNT_BIN);
        for e in endpoints {
            cmd.args(["--endpoint", e]);
        }
        let mut child = cmd.arg("mount").arg(&at).stdout(Stdio::piped()).stderr(Stdio::inherit()).spawn().unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        assert!(line.starts_with("mounted at"), "mount did not start: {line:?}");
        let deadline = Instant::now() + Duration::from_secs(10);
        while !is_mounted(&at) {
            assert!(Instant::now() < deadline, "not mounted after 10 s");
            std::thread::sleep(Duration::from_millis(20));
        }
        Mount { child, at, _dir: dir }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.at.join(rel)
    }

    fn stop(&mut self) {
        // SAFETY: sending a signal to our own child process.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let status = self.child.wait().unwrap();
        assert!(status.success(), "mount exited with {status}");
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
            let _ = self.child.wait();
        }
        if is_mounted(&self.at) {
            let _ = Command::new("fusermount3").arg("-uz").arg(&self.at).status();
        }
    }
}

fn sh(dir: &Path, script: &str) -> String {
    let out = Command::new("sh").arg("-ec").arg(script).current_dir(dir).output().unwrap();
    assert!(
        out.status.success(),
        "{script}: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn wait_until(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !check() {
        assert!(Instant::now() < deadline, "{what} not seen within 5 s");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn ordinary_programs_work_through_the_mount() {
    let export = tempfile::tempdir().unwrap();
    let node = Node::start(&[format!("w={}", export.path().display())], &[]);
    let mut mount = Mount::start(&[format!("a={}#w@/src", node.url())]);
    let src = mount.path("src");

    // cp in and out, cat, a large file with reads bigger than 128 KiB.
    let big: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 % 256) as u8).collect();
    let local = tempfile::tempdir().unwrap();
    std::fs::write(local.path().join("big.bin"), &big).unwrap();
    sh(local.path(), &format!("cp big.bin {}/big.bin", src.display()));
    assert_eq!(std::fs::read(export.path().join("big.bin")).unwrap(), big);
    sh(local.path(), &format!("cp {}/big.bin back.bin && cmp big.bin back.bin", src.display()));
    sh(local.path(), &format!("dd if={}/big.bin of=/dev/null bs=1M status=none", src.display()));
    std::fs::write(src.join("note.txt"), "through the mount\n").unwrap();
    assert_eq!(sh(&src, "cat note.txt"), "through the mount\n");

    // find over a small tree.
    sh(&src, "mkdir -p t/a/b t/c && touch t/a/1 t/a/b/2 t/c/3");
    let found = sh(&src, "find t -type f | sort");
    assert_eq!(found, "t/a/1\nt/a/b/2\nt/c/3\n");

    // git init && git commit, then a clean status.
    sh(
        &src,
        "git init -q repo && cd repo && echo hello > f.txt && mkdir d && echo x > d/g.txt && git add . \
         && git -c user.email=t@example.com -c user.name=t commit -qm first && git status --porcelain",
    );
    assert_eq!(sh(&src.join("repo"), "git log --format=%s"), "first\n");
    assert_eq!(sh(&src.join("repo"), "git status --porcelain"), "");
    // The host sees a valid repository.
    assert_eq!(sh(&export.path().join("repo"), "git log --format=%s && git fsck --no-progress"), "first\n");

    // tar out of and into the mount.
    sh(local.path(), &format!("tar cf out.tar -C {} t repo && tar tf out.tar | grep -q repo/d/g.txt", src.display()));
    sh(
        local.path(),
        &format!("mkdir x && tar xf out.tar -C x && mkdir {0}/untar && tar xf out.tar -C {0}/untar", src.display()),
    );
    assert_eq!(std::fs::read_to_string(export.path().join("untar/repo/f.txt")).unwrap(), "hello\n");

    // rename and remove.
    std::fs::rename(src.join("note.txt"), src.join("t/moved.txt")).unwrap();
    assert!(export.path().join("t/moved.txt").exists());
    std::fs::remove_dir_all(src.join("t")).unwrap();
    assert!(!export.path().join("t").exists());

    mount.stop();
    assert!(!is_mounted(&mount.at), "SIGTERM unmounts");
}

#[test]
fn read_only_export_refuses_mutations_with_erofs() {
    let export = tempfile::tempdir().unwrap();
    std::fs::write(export.path().join("f"), "keep").unwrap();
    std::fs::create_dir(export.path().join("d")).unwrap();
    let node = Node::start(&[format!("r={}:ro", export.path().display())], &[]);
    let mount = Mount::start(&[format!("a={}#r@/ro", node.url())]);
    let ro = mount.path("ro");
    assert_eq!(std::fs::read_to_string(ro.join("f")).unwrap(), "keep");

    let erofs = |r: std::io::Result<()>, what: &str| {
        assert_eq!(r.expect_err(what).raw_os_error(), Some(libc::EROFS), "{what}");
    };
    erofs(std::fs::write(ro.join("new"), "x"), "create");
    erofs(std::fs::write(ro.join("f"), "x"), "overwrite");
    erofs(
        std::fs::OpenOptions::new()
            .append(true)
            .open(ro.join("f"))
            .and_then(|mut f| std::io::Write::write_all(&mut f, b"x")),
        "append",
    );
    erofs(std::fs::create_dir(ro.join("nd")), "mkdir");
    erofs(std::fs::remove_file(ro.join("f")), "unlink");
    erofs(std::fs::remove_dir(ro.join("d")), "rmdir");
    erofs(std::fs::rename(ro.join("f"), ro.join("g")), "rename");
    erofs(std::os::unix::fs::symlink("f", ro.join("l")), "symlink");
    assert_eq!(std::fs::read_to_string(export.path().join("f")).unwrap(), "keep");
}

#[test]
fn escapes_through_the_mount_fail() {
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("secret"), "SECRET").unwrap();
    std::fs::write(outside.path().join("inner"), "SECRET").unwrap();
    let export = tempfile::tempdir().unwrap();
    std::fs::create_dir(export.path().join("walk")).unwrap();
    std::fs::write(export.path().join("walk/inner"), "inside").unwrap();
    std::os::unix::fs::symlink(outside.path().join("secret"), export.path().join("link")).unwrap();
    let node = Node::start(&[format!("w={}", export.path().display())], &[]);
    let mount = Mount::start(&[format!("a={}#w@/src", node.url())]);
    let src = mount.path("src");

    assert!(std::fs::read(src.join("link")).is_err(), "symlink to outside is not followed out");
    assert_eq!(std::fs::read_to_string(src.join("walk/inner")).unwrap(), "inside");
    // `..` through the mount stays in the mounted namespace (the kernel resolves it on our
    // own inodes): the export root's parent is the mount's root, never the host.
    let names: Vec<_> = std::fs::read_dir(src.join("walk/../..")).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(names, vec![std::ffi::OsString::from("src")]);

    // The directory is swapped for a symlink to outside while the kernel still caches it.
    std::fs::rename(export.path().join("walk"), export.path().join("walk.old")).unwrap();
    std::os::unix::fs::symlink(outside.path(), export.path().join("walk")).unwrap();
    for _ in 0..3 {
        if let Ok(data) = std::fs::read_to_string(src.join("walk/inner")) {
            assert_ne!(data, "SECRET", "read outside the export through a swapped directory");
        }
        assert!(std::fs::write(src.join("walk/planted"), "x").is_err());
    }
    assert!(!outside.path().join("planted").exists());
}

#[test]
fn host_changes_are_visible_through_the_mount() {
    let export = tempfile::tempdir().unwrap();
    std::fs::write(export.path().join("f.txt"), "one").unwrap();
    let node = Node::start(&[format!("w={}", export.path().display())], &[]);
    let mount = Mount::start(&[format!("a={}#w@/src", node.url())]);
    let src = mount.path("src");
    assert_eq!(std::fs::read_to_string(src.join("f.txt")).unwrap(), "one");

    // Longer content: the cached size (TTL 10 s) must be invalidated by the node's event.
    std::fs::write(export.path().join("f.txt"), "one two three").unwrap();
    wait_until("host write", || std::fs::read_to_string(src.join("f.txt")).unwrap() == "one two three");
    let names = || -> Vec<String> {
        let mut v: Vec<String> =
            std::fs::read_dir(&src).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        v.sort();
        v
    };
    assert_eq!(names(), ["f.txt"]);
    std::fs::write(export.path().join("added.txt"), "new").unwrap();
    wait_until("host create in the listing", || names() == ["added.txt", "f.txt"]);
    wait_until("host create", || std::fs::read_to_string(src.join("added.txt")).is_ok_and(|s| s == "new"));
    std::fs::remove_file(export.path().join("added.txt")).unwrap();
    wait_until("host unlink", || !src.join("added.txt").exists());
    wait_until("host unlink in the listing", || names() == ["f.txt"]);
}

#[test]
fn node_restarted_under_a_live_mount() {
    let export = tempfile::tempdir().unwrap();
    std::fs::create_dir(export.path().join("d")).unwrap();
    std::fs::write(export.path().join("d/f.txt"), "before").unwrap();
    let spec = [format!("w={}", export.path().display())];
    let mut node = Node::start(&spec, &[]);
    let port = node.port();
    let mount = Mount::start(&[format!("a={}#w@/src", node.url())]);
    let file = mount.path("src/d/f.txt");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "before");

    node.kill();
    let started = Instant::now();
    let err = std::fs::read_to_string(&file).expect_err("node is down");
    assert!(matches!(err.raw_os_error(), Some(libc::EIO) | Some(libc::ETIMEDOUT)), "{err}");
    assert!(started.elapsed() < Duration::from_secs(30), "a dead node must not hang the mount");

    let _node = Node::start_on(&port, &spec, &[]);
    std::fs::write(export.path().join("d/f.txt"), "after").unwrap();
    wait_until("reconnect after restart", || std::fs::read_to_string(&file).is_ok_and(|s| s == "after"));
    std::fs::write(&file, "written after restart").unwrap();
    assert_eq!(std::fs::read_to_string(export.path().join("d/f.txt")).unwrap(), "written after restart");
}

#[test]
fn mounted_reads_fail_over_to_the_other_endpoint() {
    let export = tempfile::tempdir().unwrap();
    let content: Vec<u8> = (0..4_000_000u32).map(|i| (i % 253) as u8).collect();
    std::fs::write(export.path().join("f.bin"), &content).unwrap();
    let spec = [format!("w={}:ro", export.path().display())];
    let mut first = Node::start(&spec, &[]);
    let second = Node::start(&spec, &[]);
    let mount = Mount::start(&[format!("a={}#w@/m", first.url()), format!("b={}#w@/m", second.url())]);
    let file = mount.path("m/f.bin");
    let mut reader = std::fs::File::open(&file).unwrap();
    let mut head = vec![0u8; 1 << 20];
    std::io::Read::read_exact(&mut reader, &mut head).unwrap();
    first.kill();
    let mut rest = Vec::new();
    std::io::Read::read_to_end(&mut reader, &mut rest).unwrap();
    head.extend_from_slice(&rest);
    assert!(head == content, "content differs after failover under the mount");
    assert_eq!(std::fs::read(&file).unwrap(), content);
}

#[test]
fn missing_files_are_remembered_until_the_directory_changes() {
    let export = tempfile::tempdir().unwrap();
    std::fs::create_dir(export.path().join("inc")).unwrap();
    let node = Node::start(&[format!("w={}", export.path().display())], &[]);
    let mount = Mount::start(&[format!("a={}#w@/src", node.url())]);
    let inc = mount.path("src/inc");

    // A build tool probing for headers: each miss is ENOENT, and stays right when repeated.
    for _ in 0..3 {
        for name in ["config.h", "missing.h"] {
            let err = std::fs::metadata(inc.join(name)).unwrap_err();
            assert_eq!(err.kind(), std::io::ErrorKind::NotFound, "{name}");
        }
    }
    // Created on the node's host: the node's event ends the negative entry (TTL is 15 s).
    std::fs::write(export.path().join("inc/config.h"), "#define X 1\n").unwrap();
    wait_until("a host-created file that was missing", || inc.join("config.h").exists());
    assert_eq!(std::fs::read_to_string(inc.join("config.h")).unwrap(), "#define X 1\n");

    // Made through the mount: visible at once, no event needed.
    std::fs::write(inc.join("missing.h"), "made here").unwrap();
    assert_eq!(std::fs::read_to_string(inc.join("missing.h")).unwrap(), "made here");
    assert!(std::fs::metadata(inc.join("later")).is_err());
    std::fs::create_dir(inc.join("later")).unwrap();
    assert!(inc.join("later").is_dir(), "mkdir into a remembered miss");
    assert!(std::fs::metadata(inc.join("moved.h")).is_err());
    std::fs::rename(inc.join("missing.h"), inc.join("moved.h")).unwrap();
    assert_eq!(std::fs::read_to_string(inc.join("moved.h")).unwrap(), "made here", "rename onto a remembered miss");
}
