//! The `spiderweb up` and `spiderweb chat` subcommands: thin programs beside the gateway.
//!
//! Why it exists: the one-command start (`up`) and the terminal client (`chat`) ship in the
//! `spiderweb` binary, as DESIGN.md's process table says, but are not part of the server: `up`
//! only execs the broker, the worker supervisor and the gateway as separate processes and
//! supervises them; `chat` is an ordinary WebSocket client. Neither ever reads a key.
//!
//! Codemap: [`up`] (orchestration and banner) over [`stack`] (runtime directory, configs,
//! workspace), [`provider_choice`] (which provider, and why), [`demo`] (the built-in demo
//! provider) and [`supervise`] (readiness, restarts, stopping); [`chat`] over [`client`] (the
//! unified-v2 client).

pub mod chat;
pub mod client;
pub mod demo;
pub mod provider_choice;
pub mod stack;
pub mod supervise;
pub mod up;

use std::process::ExitCode;

/// The subcommands of `spiderweb`; without one it serves.
#[derive(clap::Subcommand, Debug)]
pub enum Command {
    /// Start broker, worker supervisor and gateway together (Ctrl-C stops them all).
    Up(up::UpArgs),
    /// Chat with the agent in the terminal: stream answers, approve commands.
    Chat(chat::ChatArgs),
}

/// Runs a subcommand to the end.
pub fn run(command: Command) -> ExitCode {
    match command {
        Command::Up(args) => up::run(args),
        Command::Chat(args) => chat::run(args),
    }
}
