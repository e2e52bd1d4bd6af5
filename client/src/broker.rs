//! A small async client of the broker socket, for `spiderweb-config`, tests and the benchmark
//! (and usable by the gateway).
//!
//! It is a thin pipe over [`spiderweb_proto::broker`] frames: `send` a request, read replies
//! with `next`. Replies of concurrent provider requests interleave; callers match them by id.

use std::path::Path;

use futures_util::{SinkExt, StreamExt};
use spiderweb_proto::broker::{BrokerReply, BrokerRequest, ClientCodec, DEFAULT_MAX_FRAME_BYTES};
use spiderweb_proto::frame::FrameError;
use tokio::net::UnixStream;
use tokio_util::codec::Framed;

/// Why talking to the broker failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Connecting to the socket failed.
    #[error("cannot connect to the broker at {path}: {source}")]
    Connect {
        /// The socket path.
        path: String,
        /// The error.
        source: std::io::Error,
    },
    /// The stream broke.
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// The broker sent something that is not a reply.
    #[error("broker sent an unreadable reply: {0}")]
    Malformed(String),
    /// The broker closed the connection.
    #[error("the broker closed the connection")]
    Closed,
}

/// One connection to the broker.
pub struct BrokerClient {
    framed: Framed<UnixStream, ClientCodec>,
}

impl BrokerClient {
    /// Connects to the socket at `path`.
    pub async fn connect(path: &Path) -> Result<Self, ClientError> {
        let stream = UnixStream::connect(path)
            .await
            .map_err(|source| ClientError::Connect { path: path.display().to_string(), source })?;
        Ok(BrokerClient { framed: Framed::new(stream, ClientCodec::new(DEFAULT_MAX_FRAME_BYTES)) })
    }

    /// Sends one request.
    pub async fn send(&mut self, request: BrokerRequest) -> Result<(), ClientError> {
        self.framed.send(request).await?;
        Ok(())
    }

    /// The next reply.
    pub async fn next(&mut self) -> Result<BrokerReply, ClientError> {
        match self.framed.next().await {
            None => Err(ClientError::Closed),
            Some(Err(e)) => Err(e.into()),
            Some(Ok(Err(m))) => Err(ClientError::Malformed(m.reason)),
            Some(Ok(Ok(reply))) => Ok(reply),
        }
    }

    /// Sends a request that has a single reply and returns that reply.
    pub async fn call(&mut self, request: BrokerRequest) -> Result<BrokerReply, ClientError> {
        self.send(request).await?;
        self.next().await
    }

    /// The underlying stream, to write raw bytes (tests of malformed input).
    pub fn stream_mut(&mut self) -> &mut UnixStream {
        self.framed.get_mut()
    }
}
