//! What the fsnode benchmarks share: a real `spiderweb-fs-node` on a free loopback port.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

/// Starts a node exporting `dir` as `w`; returns the process and its `ws://…/v2/fs` URL.
pub fn start_node(dir: &Path) -> (Child, String) {
    let mut node = Command::new(env!("CARGO_BIN_EXE_spiderweb-fs-node"))
        .args(["--port", "0", "--export"])
        .arg(format!("w={}", dir.display()))
        .env("SPIDERWEB_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .expect("start node");
    let mut line = String::new();
    BufReader::new(node.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let url = format!("ws://{}/v2/fs", line.trim().trim_start_matches("listening on "));
    (node, url)
}
