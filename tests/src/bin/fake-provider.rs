//! A fake LLM provider for benchmarks, and the direct-client reference figures.
//!
//! `fake-provider serve` runs one [`FakeProvider`] that answers every request with the same
//! streamed text (`--chunks` text chunks, `--chunk-delay-ms` apart: 50 chunks/s by default) and
//! prints its base URL, for pointing a broker (`providers.<id>.base_url`) at it while a load
//! generator drives the gateway.
//!
//! `fake-provider measure` starts the same server in-process and reads `--streams` concurrent
//! streams from it with a plain HTTP client: time to first chunk and each chunk's lateness
//! (arrival gap minus the configured delay). These are the "client talks to the provider
//! directly" figures that spiderweb's added latency is measured against.
//!
//! Usage: `cargo run --release -p spiderweb-tests --bin fake-provider -- measure --streams 1000
//! [--ramp-ms 1000] [--format anthropic]`

use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use bytes::Bytes;
use clap::{Parser, Subcommand, ValueEnum};
use http_body_util::{BodyExt, Full};
use spiderweb_tests::fake_provider::{FakeProvider, Format, Reply};

#[derive(Parser)]
#[command(name = "fake-provider", about = "A local LLM provider server for benchmarks")]
struct Args {
    #[command(subcommand)]
    command: Mode,
}

#[derive(clap::Args, Clone, Copy)]
struct Stream {
    /// Wire format.
    #[arg(long, value_enum, default_value_t = FormatArg::OpenaiChat)]
    format: FormatArg,
    /// Text chunks per reply.
    #[arg(long, default_value_t = 50)]
    chunks: usize,
    /// Pause before each chunk, milliseconds (20 = 50 chunks/s).
    #[arg(long, default_value_t = 20)]
    chunk_delay_ms: u64,
}

#[derive(Subcommand)]
enum Mode {
    /// Serve until interrupted; prints the base URL.
    Serve(Stream),
    /// Read concurrent streams directly and report latency percentiles.
    Measure {
        #[command(flatten)]
        stream: Stream,
        /// Concurrent streams.
        #[arg(long, default_value_t = 1000)]
        streams: usize,
        /// Spread the streams' starts evenly over this many milliseconds (chats do not all
        /// begin in the same instant; 0 starts them together).
        #[arg(long, default_value_t = 1000)]
        ramp_ms: u64,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum FormatArg {
    OpenaiChat,
    OpenaiResponses,
    Anthropic,
    Gemini,
    AzureOpenai,
}

impl FormatArg {
    fn format(self) -> Format {
        match self {
            FormatArg::OpenaiChat => Format::OpenAiChat,
            FormatArg::OpenaiResponses => Format::OpenAiResponses,
            FormatArg::Anthropic => Format::Anthropic,
            FormatArg::Gemini => Format::Gemini,
            FormatArg::AzureOpenai => Format::AzureOpenAi,
        }
    }

    /// The streaming endpoint below the base URL, as the gateway's builders make it.
    fn path(self) -> &'static str {
        match self {
            FormatArg::OpenaiChat => "/chat/completions",
            FormatArg::OpenaiResponses => "/responses",
            FormatArg::Anthropic => "/v1/messages",
            FormatArg::Gemini => "/v1beta/models/bench:streamGenerateContent?alt=sse",
            FormatArg::AzureOpenai => "/openai/deployments/bench/chat/completions?api-version=2024-10-21",
        }
    }
}

/// Characters per text chunk: one short word, like a real token stream.
const CHUNK_CHARS: usize = 4;

fn start(stream: Stream) -> FakeProvider {
    let fake = FakeProvider::start(stream.format.format());
    fake.set_text_chunk_chars(CHUNK_CHARS)
        .set_chunk_delay(Duration::from_millis(stream.chunk_delay_ms))
        .always(Reply::text("tok ".repeat(stream.chunks)));
    fake
}

fn main() -> Result<()> {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    match args.command {
        Mode::Serve(stream) => {
            let fake = start(stream);
            println!("fake-provider listening on {}", fake.base_url());
            runtime.block_on(tokio::signal::ctrl_c())?;
            Ok(())
        }
        Mode::Measure { stream, streams, ramp_ms } => {
            runtime.block_on(measure(stream, streams, Duration::from_millis(ramp_ms)))
        }
    }
}

/// One stream's timings.
struct Timings {
    first_chunk: Duration,
    lateness: Vec<Duration>,
}

async fn measure(stream: Stream, streams: usize, ramp: Duration) -> Result<()> {
    if streams == 0 {
        bail!("--streams must be at least 1");
    }
    let fake = start(stream);
    let base = fake.base_url();
    let delay = Duration::from_millis(stream.chunk_delay_ms);
    let started = Instant::now();
    let tasks: Vec<_> = (0..streams)
        .map(|n| {
            let url = format!("{base}{}", stream.format.path());
            let start_at = tokio::time::Instant::now() + ramp.mul_f64(n as f64 / streams as f64);
            tokio::spawn(async move {
                tokio::time::sleep_until(start_at).await;
                read_stream(&url, delay).await
            })
        })
        .collect();
    let mut first = Vec::with_capacity(streams);
    let mut late = Vec::new();
    for task in tasks {
        let timings = task.await?.context("one stream failed")?;
        first.push(timings.first_chunk);
        late.extend(timings.lateness);
    }
    let wall = started.elapsed();
    let percentile = |values: &mut Vec<Duration>, p: usize| {
        values.sort_unstable();
        values[(values.len() * p / 100).min(values.len() - 1)]
    };
    println!(
        "fake-provider direct: {streams} concurrent streams × {} chunks at {:?} apart, started over {:?}, {:.1} s",
        stream.chunks,
        delay,
        ramp,
        wall.as_secs_f64()
    );
    println!("  first chunk: p50 {:?}  p99 {:?}", percentile(&mut first, 50), percentile(&mut first, 99));
    println!(
        "  chunk lateness (gap − delay, {} gaps): p50 {:?}  p99 {:?}",
        late.len(),
        percentile(&mut late, 50),
        percentile(&mut late, 99)
    );
    Ok(())
}

/// Reads one stream; lateness counts only gaps between body chunks.
async fn read_stream(url: &str, delay: Duration) -> Result<Timings> {
    let uri: hyper::Uri = url.parse()?;
    let authority = uri.authority().context("URL without host")?.clone();
    let tcp = tokio::net::TcpStream::connect(authority.as_str()).await?;
    tcp.set_nodelay(true)?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp)).await?;
    tokio::spawn(connection);
    let request = hyper::Request::post(uri.path_and_query().context("no path")?.as_str())
        .header("host", authority.as_str())
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(br#"{"model":"bench","stream":true}"#)))?;
    let sent = Instant::now();
    let response = sender.send_request(request).await?;
    if response.status() != 200 {
        bail!("status {}", response.status());
    }
    let mut body = response.into_body();
    let mut first_chunk = None;
    let mut last: Option<Instant> = None;
    let mut lateness = Vec::new();
    while let Some(frame) = body.frame().await {
        if !frame?.is_data() {
            continue;
        }
        let now = Instant::now();
        match last {
            None => first_chunk = Some(now - sent),
            Some(previous) => lateness.push((now - previous).saturating_sub(delay)),
        }
        last = Some(now);
    }
    Ok(Timings { first_chunk: first_chunk.context("no body")?, lateness })
}
