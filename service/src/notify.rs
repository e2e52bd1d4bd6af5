//! Readiness, stopping and watchdog notifications to the service manager (sd_notify(3)).
//!
//! With `Type=notify` systemd considers a unit started only when it sends `READY=1`, so the
//! daemons send it after their listener is serving and their state is loaded — never
//! earlier, or dependent units would start against a daemon that cannot answer yet. On
//! shutdown they send `STOPPING=1` first, so `systemctl status` shows the drain.
//!
//! With `WatchdogSec=` set, the daemon must send `WATCHDOG=1` more often than the period or
//! be restarted. The keep-alive runs as a task on the daemon's own runtime: a runtime that is
//! wedged stops sending, which is exactly the failure the watchdog is for.
//!
//! Without `NOTIFY_SOCKET` (started by hand, by tests, by `spiderweb up`) every call is a
//! no-op. A failed send is logged, never fatal: the service manager owns that problem.
//!
//! Sending a datagram blocks while the receiver's queue is full, so no daemon thread ever
//! sends: messages go through a bounded queue to one sender thread of their own. A stuck
//! service manager then costs dropped keep-alives, never a stalled runtime.
//!
//! The datagram socket is created and connected once, when the environment is read
//! ([`Notifier::connect`]), not per message: a daemon that confines itself afterwards with a
//! seccomp filter forbidding `socket()` (the fs node) can still notify. The sender thread is
//! started separately ([`ConnectedNotifier::start`]) so such a daemon starts it after its
//! confinement, which the thread then inherits. Messages are formatted by `sd-notify`.

use std::io;
use std::os::unix::net::UnixDatagram;
use std::sync::mpsc;
use std::time::Duration;

use sd_notify::NotifyState;

/// Messages waiting for the sender thread; beyond this, keep-alives are dropped.
const QUEUE: usize = 8;

#[derive(Clone, Debug)]
pub struct Notifier {
    watchdog: Option<Duration>,
    queue: Option<mpsc::SyncSender<Message>>,
}

#[derive(Debug)]
enum Message {
    Ready(String),
    Stopping(String),
    Status(String),
    Watchdog,
    /// Answered once every message before it has been sent.
    Flush(mpsc::SyncSender<()>),
}

/// The notification socket, connected, with no sender thread yet (see the module doc).
#[derive(Debug)]
pub struct ConnectedNotifier {
    watchdog: Option<Duration>,
    /// `None` without `NOTIFY_SOCKET`; an error is reported when the first message is sent,
    /// once logging is set up.
    socket: Option<io::Result<UnixDatagram>>,
}

impl Notifier {
    /// [`Notifier::connect`] then [`ConnectedNotifier::start`]: for daemons that do not
    /// confine themselves between reading their environment and serving.
    ///
    /// # Safety
    /// Clears environment variables: call it before any other thread exists.
    pub unsafe fn take() -> Notifier {
        // SAFETY: forwarded to the caller.
        unsafe { Notifier::connect() }.start()
    }

    /// Reads `NOTIFY_SOCKET` and the watchdog settings and clears them, so that no child
    /// process inherits them, and connects the notification socket.
    ///
    /// # Safety
    /// Clears environment variables: call it before any other thread exists.
    pub unsafe fn connect() -> ConnectedNotifier {
        // SAFETY: forwarded to the caller (single-threaded at this point).
        let watchdog = unsafe { sd_notify::watchdog_enabled_and_unset_env() };
        let socket = std::env::var_os("NOTIFY_SOCKET").map(|path| connect_socket(&path));
        // SAFETY: as above.
        unsafe { std::env::remove_var("NOTIFY_SOCKET") };
        ConnectedNotifier { watchdog, socket }
    }

    /// The daemon serves: its listener accepts and its state is loaded.
    pub fn ready(&self, status: &str) {
        self.post(Message::Ready(status.to_owned()));
    }

    /// Shutdown has begun.
    pub fn stopping(&self, status: &str) {
        self.post(Message::Stopping(status.to_owned()));
    }

    /// A one-line status for `systemctl status`.
    pub fn status(&self, status: &str) {
        self.post(Message::Status(status.to_owned()));
    }

    /// Waits (at most `timeout`) until everything posted so far has been sent: a daemon that
    /// exits right after [`Notifier::stopping`] calls this, or the message dies with it.
    pub fn flush(&self, timeout: Duration) {
        let Some(queue) = &self.queue else { return };
        let deadline = std::time::Instant::now() + timeout;
        let (done, sent) = mpsc::sync_channel(1);
        let mut message = Message::Flush(done);
        loop {
            match queue.try_send(message) {
                Ok(()) => break,
                Err(mpsc::TrySendError::Full(back)) if std::time::Instant::now() < deadline => {
                    message = back;
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(_) => return,
            }
        }
        let _ = sent.recv_timeout(deadline.saturating_duration_since(std::time::Instant::now()));
    }

    fn post(&self, message: Message) {
        if let Some(queue) = &self.queue
            && queue.try_send(message).is_err()
        {
            tracing::warn!("the service manager is not reading notifications; dropping one");
        }
    }

    /// Starts the watchdog keep-alive (at half the configured period) when `WatchdogSec=` is
    /// set. Must be called from within a tokio runtime.
    pub fn spawn_watchdog(&self) -> Option<tokio::task::JoinHandle<()>> {
        let period = self.watchdog?;
        let queue = self.queue.clone()?;
        tracing::info!(period_ms = period.as_millis() as u64, "systemd watchdog enabled");
        Some(tokio::spawn(async move {
            let mut tick = tokio::time::interval(period / 2);
            loop {
                tick.tick().await;
                // A full queue means the previous keep-alives are still pending: skip this one.
                let _ = queue.try_send(Message::Watchdog);
            }
        }))
    }
}

impl ConnectedNotifier {
    /// Starts the sender thread (when a notification socket is configured). A daemon that
    /// confines itself calls this after confinement, so the thread is confined too.
    pub fn start(self) -> Notifier {
        let queue = self.socket.and_then(|socket| {
            let (tx, rx) = mpsc::sync_channel(QUEUE);
            std::thread::Builder::new().name("sd-notify".into()).spawn(move || send_loop(socket, rx)).ok().map(|_| tx)
        });
        Notifier { watchdog: self.watchdog, queue }
    }
}

/// A datagram socket connected to `path`; `@name` is an abstract socket, as in sd_notify(3).
fn connect_socket(path: &std::ffi::OsStr) -> io::Result<UnixDatagram> {
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::net::SocketAddr;
    let socket = UnixDatagram::unbound()?;
    match path.as_bytes().strip_prefix(b"@") {
        Some(name) => socket.connect_addr(&SocketAddr::from_abstract_name(name)?)?,
        None => socket.connect(path)?,
    }
    Ok(socket)
}

fn send_loop(socket: io::Result<UnixDatagram>, queue: mpsc::Receiver<Message>) {
    let socket = match socket {
        Ok(socket) => socket,
        Err(e) => {
            tracing::warn!(error = %e, "cannot connect to the service manager's notification socket");
            // Keep taking messages, so senders see a working queue rather than a warning each.
            for message in queue {
                if let Message::Flush(done) = message {
                    let _ = done.try_send(());
                }
            }
            return;
        }
    };
    for message in queue {
        let states: &[NotifyState] = match &message {
            Message::Flush(done) => {
                let _ = done.try_send(());
                continue;
            }
            Message::Ready(status) => &[NotifyState::Ready, NotifyState::Status(status)],
            Message::Stopping(status) => &[NotifyState::Stopping, NotifyState::Status(status)],
            Message::Status(status) => &[NotifyState::Status(status)],
            Message::Watchdog => &[NotifyState::Watchdog],
        };
        let text: String = states.iter().map(|state| format!("{state}\n")).collect();
        if let Err(e) = socket.send(text.as_bytes()) {
            tracing::warn!(error = %e, "cannot notify the service manager");
        }
    }
}
