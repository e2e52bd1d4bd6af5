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
}

impl Notifier {
    /// Reads the watchdog settings and clears them, so that no child process inherits them,
    /// and starts the sender thread when a notification socket is configured.
    ///
    /// # Safety
    /// Clears environment variables: call it before any other thread exists.
    pub unsafe fn take() -> Notifier {
        // SAFETY: forwarded to the caller (single-threaded at this point).
        let watchdog = unsafe { sd_notify::watchdog_enabled_and_unset_env() };
        let queue = std::env::var_os("NOTIFY_SOCKET").and_then(|_| {
            let (tx, rx) = mpsc::sync_channel(QUEUE);
            std::thread::Builder::new().name("sd-notify".into()).spawn(move || send_loop(rx)).ok().map(|_| tx)
        });
        Notifier { watchdog, queue }
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

fn send_loop(queue: mpsc::Receiver<Message>) {
    for message in queue {
        let result = match &message {
            Message::Ready(status) => sd_notify::notify(&[NotifyState::Ready, NotifyState::Status(status)]),
            Message::Stopping(status) => sd_notify::notify(&[NotifyState::Stopping, NotifyState::Status(status)]),
            Message::Status(status) => sd_notify::notify(&[NotifyState::Status(status)]),
            Message::Watchdog => sd_notify::notify(&[NotifyState::Watchdog]),
        };
        if let Err(e) = result {
            tracing::warn!(error = %e, "cannot notify the service manager");
        }
    }
}
