//! Benchmark of the agent runtime through the whole stack (gateway, broker, worker
//! supervisor) against a local provider server.
//!
//! Figures (issue 6, "Performance"):
//! 1. time to first token added by spiderweb: a client asking the provider server directly
//!    vs a client writing a prompt to the gateway and reading the job's first `text` event;
//! 2. many concurrent streaming chats at a fixed chunk rate: the delay each chunk picks up
//!    on its way through broker and gateway (its arrival time relative to the stream's first
//!    chunk, minus when the provider sent it), p50/p99, and the gateway's RSS;
//! 3. a tool-call turn's overhead beyond the tool and the model calls themselves.
//!
//! Runs as root (the worker supervisor switches to tenant uids). Build with
//! `cargo build --release --workspace --bins`, then
//! `target/release/chat-bench [--chats 1000 --chunks 500 --chunk-interval-ms 20 --ramp-ms 5000]`.

use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use clap::Parser;
use serde_json::json;
use spiderweb_tests::fake_provider::{FakeProvider, Format, Reply};
use spiderweb_tests::stack::{CHAT_INPUT, ProviderSetup, Stack, follow_job, send_prompt, send_prompt_via};
use spiderweb_tests::{Client, cpu_time_of, rss_kib_of};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[derive(Parser, Debug)]
#[command(name = "chat-bench", about = "Agent runtime benchmark through the whole stack")]
struct Args {
    /// Sequential chats measured for time to first token (each way).
    #[arg(long, default_value_t = 200)]
    ttft_samples: usize,
    /// Concurrent streaming chats.
    #[arg(long, default_value_t = 1000)]
    chats: usize,
    /// Text chunks per streamed reply.
    #[arg(long, default_value_t = 500)]
    chunks: usize,
    /// Interval between chunks (20 ms = 50 chunks/s).
    #[arg(long, default_value_t = 20)]
    chunk_interval_ms: u64,
    /// The concurrent chats start evenly spread over this long (users do not all press
    /// enter in the same millisecond); the steady-state figure counts only chunks that
    /// arrive while every chat is streaming, so streams must last longer than the ramp.
    #[arg(long, default_value_t = 5000)]
    ramp_ms: u64,
    /// Tool-call turns measured.
    #[arg(long, default_value_t = 100)]
    tool_turns: usize,
}

const CHUNK_CHARS: usize = 8;
const NO_APPROVALS: fn(&serde_json::Value) -> Option<&'static str> = |_| None;

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn summary(name: &str, mut samples: Vec<f64>) -> (f64, f64) {
    samples.sort_by(|a, b| a.total_cmp(b));
    let (p50, p99) = (percentile(&samples, 0.5), percentile(&samples, 0.99));
    println!("{name}: n={} p50={p50:.3} ms p99={p99:.3} ms", samples.len());
    (p50, p99)
}

/// Time to the first content chunk of a streamed Chat Completions request, asked directly.
async fn direct_ttft(fake: &FakeProvider) -> Result<f64> {
    let body =
        json!({"model": "gpt-4o-mini", "stream": true, "messages": [{"role": "user", "content": "hi"}]}).to_string();
    let request = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: {}\r\ncontent-type: application/json\r\nauthorization: Bearer k\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        fake.addr(),
        body.len()
    );
    let started = Instant::now();
    let mut stream = tokio::net::TcpStream::connect(fake.addr()).await?;
    stream.set_nodelay(true)?;
    stream.write_all(request.as_bytes()).await?;
    let mut seen = Vec::new();
    let mut buf = [0u8; 16384];
    loop {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            bail!("the provider closed before any content");
        }
        seen.extend_from_slice(&buf[..n]);
        if seen.windows(10).any(|w| w == b"\"content\":") {
            return Ok(started.elapsed().as_secs_f64() * 1000.0);
        }
    }
}

/// Makes `session` the connection's active session (a conversation of its own: a chat's
/// cost depends on its transcript, and the bench's chats must not share one).
async fn own_session(client: &mut Client, session: &str) {
    client
        .control_ok("session_attach", json!({"session_key": session, "agent_id": "mother", "project_id": "system"}))
        .await;
    // Another binding is another namespace: fids start over (spec acheron-worldfs §1).
    client.fs_attach().await;
}

/// Time from the prompt write to the first `text` event of its job, in a fresh conversation.
async fn stack_ttft(client: &mut Client, sample: usize) -> Result<f64> {
    // A connection holds a bounded number of sessions: 32 keys, each a short conversation.
    own_session(client, &format!("ttft-{}", sample % 32)).await;
    // A chat client keeps the input file open (`spiderweb chat` does): a message is one write.
    let input = client.walk_ok(CHAT_INPUT).await;
    let started = Instant::now();
    let job = send_prompt_via(client, input, "hi").await;
    let fid = client.walk_ok(&format!("/agents/self/jobs/{job}/events.ndjson")).await;
    let mut offset = 0usize;
    loop {
        let reply = client
            .acheron_within("t_read", json!({"fid": fid, "offset": offset, "count": 65536}), Duration::from_secs(30))
            .await;
        use base64::Engine as _;
        let data = spiderweb_tests::B64.decode(reply["payload"]["data_b64"].as_str().unwrap_or_default())?;
        if data.is_empty() {
            let events = client.walk_read(&format!("/agents/self/jobs/{job}/events.ndjson")).await;
            bail!("job {job} ended without text: {events}");
        }
        if data.windows(13).any(|w| w == b"\"type\":\"text\"") {
            let elapsed = started.elapsed().as_secs_f64() * 1000.0;
            client.clunk(fid).await;
            // Let the job finish so the next sample starts on an idle stack.
            follow_job(client, &job, &mut NO_APPROVALS.clone(), Duration::from_secs(30)).await;
            return Ok(elapsed);
        }
        offset += data.len();
    }
}

/// One streaming chat on its own connection, started after `start_after`: each text
/// event's arrival time and the delay it picked up.
async fn streaming_chat(
    stack: &Stack,
    interval: Duration,
    chat: usize,
    start_after: Duration,
) -> Result<Vec<(Instant, f64)>> {
    tokio::time::sleep(start_after).await;
    let mut client = stack.gateway.admin().await;
    own_session(&mut client, &format!("stream-{chat}")).await;
    let job = send_prompt(&mut client, "stream").await;
    let fid = client.walk_ok(&format!("/agents/self/jobs/{job}/events.ndjson")).await;
    let mut offset = 0usize;
    let mut arrivals: Vec<Instant> = Vec::new();
    // The bench's clients share the two cores with the gateway: each read is one preformatted
    // request and one typed parse of the reply (no JSON trees), so the client costs as little
    // CPU as a client can.
    #[derive(serde::Deserialize)]
    struct ReadReply<'a> {
        tag: u32,
        #[serde(borrow)]
        payload: ReadPayload<'a>,
    }
    #[derive(serde::Deserialize)]
    struct ReadPayload<'a> {
        #[serde(borrow, default)]
        data_b64: std::borrow::Cow<'a, str>,
    }
    loop {
        let tag = client.next_tag();
        let request = format!(
            r#"{{"channel":"acheron","type":"acheron.t_read","tag":{tag},"fid":{fid},"offset":{offset},"count":65536}}"#
        );
        let text = client.round_trip_raw(request, Duration::from_secs(120)).await.map_err(|e| anyhow::anyhow!(e))?;
        let reply: ReadReply = serde_json::from_str(&text).with_context(|| format!("read reply: {text}"))?;
        anyhow::ensure!(reply.tag == tag, "reply to tag {} while waiting for {tag}: {text}", reply.tag);
        use base64::Engine as _;
        let data = spiderweb_tests::B64.decode(reply.payload.data_b64.as_bytes())?;
        if data.is_empty() {
            break;
        }
        let now = Instant::now();
        for line in data.split(|b| *b == b'\n') {
            let line = std::str::from_utf8(line).unwrap_or_default();
            if line.contains("\"type\":\"text\"") {
                arrivals.push(now);
            }
            if line.contains("\"type\":\"done\"") || line.contains("\"type\":\"failed\"") {
                offset = usize::MAX;
            }
        }
        if offset == usize::MAX {
            break;
        }
        offset += data.len();
    }
    let Some(first) = arrivals.first().copied() else { bail!("no text streamed") };
    // Chunk i left the provider i intervals after chunk 0; what it took longer is delay
    // added on the way (an upper bound: it includes the provider's own timer jitter).
    Ok(arrivals
        .iter()
        .enumerate()
        .map(|(i, at)| {
            let expected = interval * i as u32;
            (*at, (at.duration_since(first).as_secs_f64() - expected.as_secs_f64()).max(0.0) * 1000.0)
        })
        .collect())
}

fn main() -> Result<()> {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(run(args))
}

async fn run(args: Args) -> Result<()> {
    let fake = FakeProvider::start(Format::OpenAiChat);
    fake.set_text_chunk_chars(CHUNK_CHARS);
    fake.always(Reply::text("x".repeat(CHUNK_CHARS * 4)));
    let overlay = json!({
        "runtime": {"runtime_worker_threads": args.chats.max(16), "runtime_request_queue_max": args.chats.max(128)},
        "server": {"max_connections_per_token": args.chats + 64, "max_connections": args.chats + 64},
    });
    // The broker's defaults suit one laptop (64 upstream requests at once); a load test of a
    // shared gateway raises them as its operator would.
    let broker = json!({"limits": {"max_concurrent_upstream": args.chats + 64}});
    let stack = Stack::start_with_broker(&ProviderSetup::fake(&fake), overlay, broker);
    let pid = stack.gateway.pid();
    println!("chat-bench: gateway pid {pid}, broker pid {}", stack.broker_pid());

    // 1. Time to first token, direct vs through the stack.
    let mut client = stack.gateway.admin().await;
    for warmup in 0..10 {
        direct_ttft(&fake).await?;
        stack_ttft(&mut client, args.ttft_samples + warmup).await?;
    }
    let mut direct = Vec::new();
    let mut through = Vec::new();
    for sample in 0..args.ttft_samples {
        direct.push(direct_ttft(&fake).await?);
        through.push(stack_ttft(&mut client, sample).await?);
    }
    let (d50, _) = summary("ttft direct to the provider", direct);
    let (s50, _) = summary("ttft through spiderweb", through);
    println!("ttft added by spiderweb: p50 {:.3} ms", s50 - d50);

    // 3. Tool-call turn overhead: a turn with one file_read vs a plain turn.
    stack.seed_file("bench.txt", "benchmark file\n");
    let mut plain = Vec::new();
    let mut with_tool = Vec::new();
    for turn in 0..args.tool_turns {
        own_session(&mut client, &format!("ttft-{}", turn % 32)).await;
        fake.script(vec![Reply::text("done")]);
        let started = Instant::now();
        let job = send_prompt(&mut client, "plain").await;
        follow_job(&mut client, &job, &mut NO_APPROVALS.clone(), Duration::from_secs(30)).await;
        plain.push(started.elapsed().as_secs_f64() * 1000.0);
        fake.script(vec![Reply::tool_calls([("file_read", r#"{"path":"bench.txt"}"#)]), Reply::text("done")]);
        let started = Instant::now();
        let job = send_prompt(&mut client, "tool").await;
        follow_job(&mut client, &job, &mut NO_APPROVALS.clone(), Duration::from_secs(30)).await;
        with_tool.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    let (p50_plain, _) = summary("plain turn (1 model call)", plain);
    let (p50_tool, _) = summary("tool turn (2 model calls + file_read in a confined worker)", with_tool);
    println!("tool step (model call + confined file_read + bookkeeping): p50 {:.3} ms", p50_tool - p50_plain);
    drop(client);

    // 2. Concurrent streaming chats.
    let interval = Duration::from_millis(args.chunk_interval_ms);
    fake.always(Reply::text("y".repeat(CHUNK_CHARS * args.chunks)));
    fake.set_chunk_delay(interval);
    let started = Instant::now();
    let rss_peak = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let sampler = {
        let peak = rss_peak.clone();
        tokio::spawn(async move {
            loop {
                if let Some(kib) = rss_kib_of(pid) {
                    peak.fetch_max(kib, std::sync::atomic::Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    let broker_pid = stack.broker_pid();
    let own_pid = std::process::id();
    let cpu_before = (cpu_time_of(pid), cpu_time_of(broker_pid), cpu_time_of(own_pid));
    let ramp = Duration::from_millis(args.ramp_ms);
    let chats = (0..args.chats)
        .map(|chat| streaming_chat(&stack, interval, chat, ramp.mul_f64(chat as f64 / args.chats.max(1) as f64)));
    let results = futures_util::future::join_all(chats).await;
    sampler.abort();
    let cpu_after = (cpu_time_of(pid), cpu_time_of(broker_pid), cpu_time_of(own_pid));
    let mut streams = Vec::new();
    let mut failed = 0;
    for result in results {
        match result {
            Ok(arrivals) if !arrivals.is_empty() => streams.push(arrivals),
            Ok(_) => failed += 1,
            Err(e) => {
                failed += 1;
                eprintln!("chat failed: {e}");
            }
        }
    }
    // Every chat is streaming from the last first chunk to the first last chunk.
    let all_streaming_from = streams.iter().map(|s| s[0].0).max();
    let all_streaming_until = streams.iter().map(|s| s[s.len() - 1].0).min();
    let delays: Vec<f64> = streams.iter().flatten().map(|(_, delay)| *delay).collect();
    let chunks = delays.len().max(1) as f64;
    let steady: Vec<f64> = match (all_streaming_from, all_streaming_until) {
        (Some(from), Some(until)) if from < until => {
            streams.iter().flatten().filter(|(at, _)| (from..=until).contains(at)).map(|(_, delay)| *delay).collect()
        }
        _ => Vec::new(),
    };
    println!(
        "{} concurrent chats × {} chunks at {} ms: {:.1} s wall, {failed} failed",
        args.chats,
        args.chunks,
        args.chunk_interval_ms,
        started.elapsed().as_secs_f64()
    );
    summary("added delay per chunk, all chunks (start-up included)", delays);
    if steady.is_empty() {
        println!("added delay per chunk while all chats stream: no such window (streams shorter than the ramp)");
    } else {
        let window = all_streaming_until.zip(all_streaming_from).map_or(0.0, |(u, f)| (u - f).as_secs_f64());
        summary(
            &format!("added delay per chunk while all {} chats stream ({window:.1} s window)", streams.len()),
            steady,
        );
    }
    // What a chunk costs in CPU does not depend on what else runs on the machine, unlike
    // its delay: it is the capacity figure (cores needed = chunks/s × cost).
    let per_chunk = |before: Option<Duration>, after: Option<Duration>| {
        before.zip(after).map_or(f64::NAN, |(b, a)| a.saturating_sub(b).as_secs_f64() * 1e6 / chunks)
    };
    println!(
        "CPU per streamed chunk: gateway {:.1} µs, broker {:.1} µs, this bench (clients + fake provider) {:.1} µs",
        per_chunk(cpu_before.0, cpu_after.0),
        per_chunk(cpu_before.1, cpu_after.1),
        per_chunk(cpu_before.2, cpu_after.2)
    );
    println!(
        "gateway RSS peak during the streaming phase: {:.1} MiB",
        rss_peak.load(std::sync::atomic::Ordering::Relaxed) as f64 / 1024.0
    );
    Ok(())
}
