//! The router's endpoint list changing while it runs (what a workspace sync does): unchanged
//! endpoints keep their connection, removed mount paths disappear, added ones work at once,
//! and a group of two endpoints on one path is a failover group.

mod common;

use common::Node;
use spiderweb_fsnode::router::{EndpointConfig, EndpointSpec, Router};
use spiderweb_proto::fs::Errno;

fn config(text: &str, token: Option<&str>) -> EndpointConfig {
    EndpointConfig { spec: EndpointSpec::parse(text).unwrap(), auth_token: token.map(str::to_owned) }
}

#[tokio::test]
async fn endpoints_are_added_and_removed_live() {
    let (one, two) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    std::fs::write(one.path().join("a.txt"), "one").unwrap();
    std::fs::write(two.path().join("b.txt"), "two").unwrap();
    let node_one = Node::start(&[format!("w={}", one.path().display())], &["--auth-token", "t1"]);
    let node_two = Node::start(&[format!("w={}", two.path().display())], &["--auth-token", "t2"]);
    let first = config(&format!("one={}#w@/one", node_one.url()), Some("t1"));
    let second = config(&format!("two={}#w@/two", node_two.url()), Some("t2"));

    let router = Router::empty();
    assert_eq!(router.set_endpoints(vec![first.clone()]), (1, 0));
    assert_eq!(router.read("/one/a.txt", 0, 16).await.unwrap().0, b"one");
    assert_eq!(router.set_endpoints(vec![first.clone()]), (0, 0), "an unchanged list changes nothing");

    // Each endpoint's hello carries its own token.
    assert_eq!(router.set_endpoints(vec![first.clone(), second.clone()]), (1, 0));
    assert_eq!(router.read("/two/b.txt", 0, 16).await.unwrap().0, b"two");
    let names: Vec<String> = router.list("/").await.unwrap().into_iter().map(|e| e.name).collect();
    assert_eq!(names, ["one", "two"]);

    assert_eq!(router.set_endpoints(vec![second.clone()]), (0, 1));
    let gone = router.getattr("/one/a.txt").await.unwrap_err();
    assert_eq!(gone.errno(), Errno::NoEnt, "a removed mount path is gone");
    let names: Vec<String> = router.list("/").await.unwrap().into_iter().map(|e| e.name).collect();
    assert_eq!(names, ["two"]);

    // The same token changed counts as a different endpoint (re-paired node).
    let retokened = config(&format!("two={}#w@/two", node_two.url()), Some("wrong"));
    assert_eq!(router.set_endpoints(vec![retokened]), (1, 1));
    assert!(router.getattr("/two/b.txt").await.is_err(), "the new token is used");
    let status = router.status();
    assert_eq!(status["endpoints"].as_array().unwrap().len(), 1, "{status}");
}
