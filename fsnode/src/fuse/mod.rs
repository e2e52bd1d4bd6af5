//! `spiderweb-fs-mount mount <mountpoint>`: the router's namespace as a FUSE filesystem.
//!
//! The session runs on its own threads; node invalidation events (including host-side
//! changes the node saw through inotify) are turned into kernel cache invalidations on a
//! dedicated thread, never from inside a FUSE request (the kernel may hold the directory
//! lock of the very request we are answering). SIGINT/SIGTERM unmount cleanly; an external
//! `fusermount3 -u` ends the process too.

mod fs;
mod inodes;

use std::path::Path;
use std::sync::{Arc, Mutex};

use fuser::{Config, INodeNo, MountOption, Notifier, Session};
use tokio::sync::broadcast::error::RecvError;

use crate::router::{PathEvent, Router};
use inodes::Inodes;

/// FUSE worker threads.
const FUSE_THREADS: usize = 4;
/// Readahead window asked for through sysfs (the FUSE handshake caps it at the kernel's
/// default, 128 KiB); matches the 1 MiB largest read.
const READAHEAD_KB: u32 = 1024;

pub fn mount(router: Arc<Router>, runtime: tokio::runtime::Runtime, at: &Path) -> anyhow::Result<()> {
    let _enter = runtime.enter();
    router.spawn_health_checks();
    let inodes = Arc::new(Mutex::new(Inodes::default()));
    let events = router.subscribe();
    let filesystem = fs::SpiderFs::new(Arc::clone(&router), runtime.handle().clone(), Arc::clone(&inodes));
    let mut config = Config::default();
    config.mount_options =
        vec![MountOption::FSName("spiderweb".into()), MountOption::Subtype("spiderweb".into()), MountOption::NoAtime];
    config.n_threads = Some(FUSE_THREADS);
    let mut session = Session::new(filesystem, at, &config).map_err(|e| {
        anyhow::anyhow!("cannot mount {}: {e} (is fuse3 installed and /dev/fuse usable?)", at.display())
    })?;
    let notifier = session.notifier();
    let mut unmounter = session.unmount_callable();
    std::thread::Builder::new().name("fuse-inval".into()).spawn(move || invalidate(events, notifier, inodes))?;
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    let worker = std::thread::Builder::new().name("fuse-session".into()).spawn(move || {
        let result = session.run();
        let _ = done_tx.send(());
        result
    })?;
    raise_readahead(at);
    println!("mounted at {}", at.display());
    runtime.block_on(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
            _ = done_rx => {}
        }
        anyhow::Ok(())
    })?;
    unmounter.unmount().map_err(|e| anyhow::anyhow!("unmount {}: {e}", at.display()))?;
    let _ = worker.join();
    Ok(())
}

fn invalidate(mut events: tokio::sync::broadcast::Receiver<PathEvent>, notifier: Notifier, inodes: Arc<Mutex<Inodes>>) {
    loop {
        let event = match events.blocking_recv() {
            Ok(event) => event,
            Err(RecvError::Lagged(_)) => continue,
            Err(RecvError::Closed) => return,
        };
        let (ino, children) = {
            let inodes = inodes.lock().unwrap_or_else(|p| p.into_inner());
            let Some(ino) = inodes.ino(&event.path) else {
                continue;
            };
            let children = if event.dir_listing { inodes.file_children(&event.path) } else { Vec::new() };
            (ino, children)
        };
        // ENOENT from the kernel only means it had nothing cached; nothing to report.
        let _ = notifier.inval_inode(INodeNo(ino), 0, 0);
        for name in children {
            let _ = notifier.inval_entry(INodeNo(ino), std::ffi::OsStr::new(&name));
        }
    }
}

/// Widens the kernel's readahead for this mount, when allowed (root); otherwise the kernel
/// default stays. Finds the mount's device in `/proc/self/mountinfo` rather than by `stat`,
/// which would wait on this very filesystem.
fn raise_readahead(at: &Path) {
    let Ok(at) = at.canonicalize() else { return };
    let Ok(mountinfo) = std::fs::read_to_string("/proc/self/mountinfo") else { return };
    let device = mountinfo.lines().rev().find_map(|line| {
        let fields: Vec<&str> = line.split(' ').collect();
        (fields.get(4).map(Path::new) == Some(at.as_path())).then(|| fields[2].to_owned())
    });
    let Some(device) = device else { return };
    let knob = format!("/sys/class/bdi/{device}/read_ahead_kb");
    if let Err(e) = std::fs::write(&knob, READAHEAD_KB.to_string()) {
        tracing::debug!(knob, error = %e, "readahead left at the kernel default");
    }
}
