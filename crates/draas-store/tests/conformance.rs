//! The shared state store conformance suite, against the embedded store on
//! a file and in memory.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use draas_store::EmbeddedStore;
use draas_testkit::conformance::store::run_all;

#[tokio::test]
async fn file_store_conforms() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = EmbeddedStore::open(&dir.path().join("state.redb")).expect("open");
    run_all(Arc::new(store)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_store_conforms_on_a_multi_thread_runtime() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = EmbeddedStore::open(&dir.path().join("state.redb")).expect("open");
    run_all(Arc::new(store)).await;
}

#[tokio::test]
async fn in_memory_store_conforms() {
    let store = EmbeddedStore::in_memory().expect("in-memory store");
    run_all(Arc::new(store)).await;
}
