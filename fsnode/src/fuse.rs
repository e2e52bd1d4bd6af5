//! FUSE mount (placeholder until the FUSE layer lands).
use std::sync::Arc;

use crate::router::Router;

pub fn mount(
    _router: Arc<Router>,
    _runtime: tokio::runtime::Runtime,
    _at: &std::path::Path,
) -> anyhow::Result<()> {
    anyhow::bail!("FUSE mount is not implemented yet")
}
