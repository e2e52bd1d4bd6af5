//! The router's negative lookup cache (spec §9.3) against a real node: a miss is answered
//! from the cache when repeated, and is forgotten when the directory changes — on the node's
//! host (its `e_fs_inval_dir`) or through this router.

mod common;

use std::time::{Duration, Instant};

use common::Node;
use spiderweb_fsnode::client::CallError;
use spiderweb_fsnode::router::{EndpointSpec, Router};
use spiderweb_proto::fs::Errno;

fn is_enoent(result: Result<spiderweb_proto::fs::Attr, CallError>) -> bool {
    matches!(result, Err(e) if e.errno() == Errno::NoEnt)
}

#[tokio::test]
async fn misses_are_cached_and_invalidated() {
    let export = tempfile::tempdir().unwrap();
    std::fs::create_dir(export.path().join("d")).unwrap();
    let node = Node::start(&[format!("w={}", export.path().display())], &[]);
    let spec = EndpointSpec::parse(&format!("n={}#w@/src", node.url())).unwrap();
    let router = Router::new(vec![spec], None);

    assert!(is_enoent(router.getattr("/src/d/nope").await));
    // (The first miss asks the node; its re-walk from the root, which guards against stale
    // cached ids, may already be answered by the fresh entry.)
    let after_first = router.negative_lookup_hits_total();
    assert!(is_enoent(router.getattr("/src/d/nope").await));
    assert!(is_enoent(router.getattr("/src/d/nope/deeper/file").await), "below a missing name");
    assert_eq!(router.negative_lookup_hits_total(), after_first + 2, "repeats are answered from the cache");
    assert_eq!(router.status()["metrics"]["negative_lookup_hits_total"], after_first + 2);

    // The node's host creates it: its inval_dir event clears the entry long before 15 s.
    std::fs::write(export.path().join("d/nope"), "here now").unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while router.getattr("/src/d/nope").await.is_err() {
        assert!(Instant::now() < deadline, "host-created file still reported missing after 5 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Mutations through the router clear their own entries at once.
    for name in ["made.txt", "dir", "renamed.txt"] {
        assert!(is_enoent(router.getattr(&format!("/src/d/{name}")).await));
        assert!(is_enoent(router.getattr(&format!("/src/d/{name}")).await));
    }
    router.create("/src/d/made.txt", 0o644, true).await.unwrap();
    router.getattr("/src/d/made.txt").await.expect("created through the router");
    router.mkdir("/src/d/dir").await.unwrap();
    router.getattr("/src/d/dir").await.expect("mkdir through the router");
    router.rename("/src/d/made.txt", "/src/d/renamed.txt").await.unwrap();
    router.getattr("/src/d/renamed.txt").await.expect("renamed through the router");
}
