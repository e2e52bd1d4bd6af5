//! Tool calls to the worker supervisor.
//!
//! One connection per call: the supervisor ends every worker of a connection when the
//! connection closes, so dropping a [`ToolCall`] is how a caller cancels (the client went
//! away, the turn was stopped) — the confined worker and everything it spawned are killed.
//! Connecting to a local socket costs microseconds against the milliseconds a confined
//! worker takes to start.

use std::path::Path;

use futures_util::{SinkExt, StreamExt};
use spiderweb_proto::frame::{FrameError, JsonFrames};
use spiderweb_proto::worker::{MAX_FRAME_BYTES, OutputStream, SupervisorReply, ToolOutcome, ToolRequest};
use tokio::net::UnixStream;
use tokio_util::codec::Framed;

/// Why a tool call could not be completed.
#[derive(Debug, thiserror::Error)]
pub enum WorkerClientError {
    /// Connecting to the supervisor failed.
    #[error("cannot connect to the worker supervisor at {path}: {source}")]
    Connect {
        /// The socket path tried.
        path: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// Sending the request or reading a reply failed.
    #[error("worker supervisor connection failed: {0}")]
    Frame(#[from] FrameError),
    /// The supervisor could not read the request (a bug on our side or a version mismatch).
    #[error("the worker supervisor refused the request frame: {0}")]
    Malformed(String),
    /// The connection ended before the result.
    #[error("the worker supervisor closed the connection before the tool finished")]
    Closed,
}

/// What a running call reports.
#[derive(Debug, Clone, PartialEq)]
pub enum ToolProgress {
    /// A chunk of `shell_exec` output.
    Output {
        /// stdout or stderr.
        stream: OutputStream,
        /// The chunk.
        data: String,
    },
    /// The call's outcome; nothing follows.
    Done(ToolOutcome),
}

type Codec = JsonFrames<SupervisorReply, ToolRequest>;

/// One tool call in progress. Dropping it cancels the call.
pub struct ToolCall {
    conn: Framed<UnixStream, Codec>,
    request_id: String,
    done: bool,
}

impl ToolCall {
    /// Connects and sends the request.
    pub async fn start(socket: &Path, request: ToolRequest) -> Result<ToolCall, WorkerClientError> {
        let stream = UnixStream::connect(socket)
            .await
            .map_err(|source| WorkerClientError::Connect { path: socket.display().to_string(), source })?;
        let mut conn = Framed::new(stream, Codec::new(MAX_FRAME_BYTES));
        let request_id = request.request_id.clone();
        conn.send(request).await?;
        Ok(ToolCall { conn, request_id, done: false })
    }

    /// The next report; after [`ToolProgress::Done`] it returns [`WorkerClientError::Closed`].
    pub async fn next(&mut self) -> Result<ToolProgress, WorkerClientError> {
        if self.done {
            return Err(WorkerClientError::Closed);
        }
        loop {
            let reply = match self.conn.next().await {
                Some(Ok(Ok(reply))) => reply,
                Some(Ok(Err(malformed))) => return Err(WorkerClientError::Malformed(malformed.to_string())),
                Some(Err(e)) => return Err(e.into()),
                None => return Err(WorkerClientError::Closed),
            };
            match reply {
                SupervisorReply::Output { request_id, stream, data } if request_id == self.request_id => {
                    return Ok(ToolProgress::Output { stream, data });
                }
                SupervisorReply::Result { request_id, outcome } if request_id == self.request_id => {
                    self.done = true;
                    return Ok(ToolProgress::Done(outcome));
                }
                SupervisorReply::Malformed { message } => return Err(WorkerClientError::Malformed(message)),
                // Replies for another id cannot occur on a one-call connection; ignore them.
                _ => continue,
            }
        }
    }
}
