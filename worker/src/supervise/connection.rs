//! One gateway connection: requests may be pipelined; each runs in its own task and its
//! replies (output chunks, then one result) go through one writer in order per request.
//!
//! A malformed frame is answered with [`SupervisorReply::Malformed`] and the connection stays
//! open; a broken stream closes it. When the gateway closes the connection (or replies can no
//! longer be delivered) every worker still running for it is ended with its whole tree, so the
//! gateway keeps the connection open until it has its results. In-flight requests per connection and output forwarded per
//! request are bounded, so no peer can grow the supervisor's memory without limit.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use futures_util::{SinkExt, StreamExt};
use spiderweb_proto::frame::JsonFrames;
use spiderweb_proto::worker::{
    FailureCode, MAX_FRAME_BYTES, MAX_STREAM_BYTES, SupervisorReply, ToolOutcome, ToolRequest, WorkerTask,
};
use tokio::net::UnixStream;
use tokio::sync::{Semaphore, mpsc};
use tokio_util::codec::{FramedRead, FramedWrite};
use tokio_util::sync::CancellationToken;

use super::request::plan_for;
use super::server::Shared;
use crate::plan::ConfinementPlan;

/// Requests one connection may have running or queued.
pub const MAX_IN_FLIGHT: usize = 64;
/// Replies waiting for the writer.
const REPLY_QUEUE: usize = 256;
/// Output bytes forwarded per request: both streams at their cap, after lossy UTF-8 decoding
/// (which can triple invalid input).
const OUTPUT_FORWARD_CAP: usize = 6 * MAX_STREAM_BYTES;

/// Serves one connection to its end.
pub async fn serve(stream: UnixStream, shared: Arc<Shared>) {
    let (read, write) = stream.into_split();
    let mut requests = FramedRead::new(read, JsonFrames::<ToolRequest, ()>::new(MAX_FRAME_BYTES));
    let mut replies = FramedWrite::new(write, JsonFrames::<(), SupervisorReply>::new(MAX_FRAME_BYTES));
    let (tx, mut rx) = mpsc::channel::<SupervisorReply>(REPLY_QUEUE);
    let gateway_gone = CancellationToken::new();
    let writer = {
        let gateway_gone = gateway_gone.clone();
        tokio::spawn(async move {
            while let Some(reply) = rx.recv().await {
                if replies.send(reply).await.is_err() {
                    gateway_gone.cancel();
                    break;
                }
            }
        })
    };
    let in_flight = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    while let Some(frame) = requests.next().await {
        let request = match frame {
            Ok(Ok(request)) => request,
            Ok(Err(malformed)) => {
                let _ = tx.send(SupervisorReply::Malformed { message: malformed.to_string() }).await;
                continue;
            }
            Err(e) => {
                tracing::debug!(error = %e, "connection closed");
                break;
            }
        };
        let Ok(permit) = in_flight.clone().try_acquire_owned() else {
            let outcome = ToolOutcome::failed(FailureCode::Rejected, "too many requests in flight on this connection");
            let _ = tx.send(SupervisorReply::Result { request_id: request.request_id, outcome }).await;
            continue;
        };
        let (shared, tx, gateway_gone) = (shared.clone(), tx.clone(), gateway_gone.clone());
        tokio::spawn(async move {
            let request_id = request.request_id.clone();
            // Dropping `handle` drops its worker, which ends the worker's whole tree.
            tokio::select! {
                (outcome, exited) = handle(&shared, request, &tx) => {
                    let _ = tx.send(SupervisorReply::Result { request_id, outcome }).await;
                    // The worker's exit, bounded by the launcher's grace period, still holds
                    // its worker slot but no longer delays the reply.
                    exited.await;
                }
                _ = gateway_gone.cancelled() => {}
            }
            drop(permit);
        });
    }
    gateway_gone.cancel();
    drop(tx);
    let _ = writer.await;
}

/// What is left after a result: the worker's exit, holding its worker slot.
type Exit<'a> = Pin<Box<dyn Future<Output = ()> + Send + 'a>>;

fn nothing_left<'a>() -> Exit<'a> {
    Box::pin(std::future::ready(()))
}

async fn handle<'a>(
    shared: &'a Arc<Shared>,
    request: ToolRequest,
    tx: &mpsc::Sender<SupervisorReply>,
) -> (ToolOutcome, Exit<'a>) {
    let plan = match plan_for(&shared.config, &request, shared.switch_ids.available()) {
        Ok(plan) => plan,
        Err(message) => return (ToolOutcome::failed(FailureCode::Rejected, message), nothing_left()),
    };
    let Ok(slot) = shared.workers.acquire().await else {
        return (ToolOutcome::failed(FailureCode::Rejected, "supervisor shutting down"), nothing_left());
    };
    tracing::info!(request_id = %request.request_id, tenant = %request.tenant, tool = %request.tool, profile = %plan.profile, "tool call");
    let shell_call = request.tool == "shell_exec";
    let task = WorkerTask { tool: request.tool, args: request.args };
    // Output is forwarded through an unbounded queue, bounded in total by the cap below
    // (the worker caps each stream at MAX_STREAM_BYTES; a worker that lies is cut off here).
    let (out_tx, mut out_rx) = mpsc::unbounded_channel();
    let forward = {
        let (tx, request_id) = (tx.clone(), request.request_id.clone());
        tokio::spawn(async move {
            while let Some((stream, data)) = out_rx.recv().await {
                let reply = SupervisorReply::Output { request_id: request_id.clone(), stream, data };
                if tx.send(reply).await.is_err() {
                    break;
                }
            }
        })
    };
    let plan_key = serde_json::to_string(&plan).unwrap_or_default();
    let running = shared.warm.call(&plan_key);
    let worker = match shared.warm.take(&plan_key) {
        Some(worker) => worker,
        None => match shared.launcher.start(&plan).await {
            Ok(worker) => worker,
            Err(outcome) => return (outcome, nothing_left()),
        },
    };
    let mut forwarded = 0usize;
    let (outcome, exited) = worker
        .run_then_exit(&task, |stream, data| {
            forwarded += data.len();
            if forwarded <= OUTPUT_FORWARD_CAP {
                let _ = out_tx.send((stream, data));
            }
        })
        .await;
    drop(out_tx);
    let _ = forward.await;
    // After the reply (this runs once the result is sent): warm the next worker, so starting
    // it does not compete with the call for CPU. After a shell call, expect another: its login
    // shell starts ahead too.
    let exit = Box::pin(async move {
        if let Some(place) = shared.warm.reserve(&plan_key) {
            let shared = shared.clone();
            let plan = ConfinementPlan { prestart_shell: shell_call, ..plan };
            tokio::spawn(async move {
                if let Ok(worker) = shared.launcher.start(&plan).await {
                    place.fill(worker);
                }
            });
        }
        drop(running);
        exited.await;
        drop(slot);
    });
    (outcome, exit)
}
