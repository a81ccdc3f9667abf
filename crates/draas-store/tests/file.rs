//! Behaviour specific to the file: durability across reopening, creating
//! missing directories, and the lock that keeps a second process out.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use draas_core::ports::{Precondition, Revision, StateStore, StoreError, Write};
use draas_store::EmbeddedStore;

#[tokio::test]
async fn reopen_keeps_everything() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("state.redb");

    let (r_a, r_b, r_gone) = {
        let store = EmbeddedStore::open(&path).expect("open");
        let r_a = store
            .put("instances", "a", b"alpha".to_vec(), Precondition::Absent)
            .await
            .expect("put a");
        let r_b = store
            .put("instances", "b", b"beta".to_vec(), Precondition::Absent)
            .await
            .expect("put b");
        let r_gone = store
            .put("instances", "gone", b"x".to_vec(), Precondition::Absent)
            .await
            .expect("put gone");
        store
            .put("other", "a", b"other".to_vec(), Precondition::None)
            .await
            .expect("put other");
        assert!(store
            .delete("instances", "gone", Precondition::Revision(r_gone))
            .await
            .expect("delete"));
        for n in 1..=5u64 {
            let cursor = store
                .append("events", format!("e{n}").into_bytes(), 3)
                .await
                .expect("append");
            assert_eq!(cursor, n);
        }
        (r_a, r_b, r_gone)
        // `store` (the only handle) is dropped here, closing the file.
    };

    let store = EmbeddedStore::open(&path).expect("reopen");
    let a = store
        .get("instances", "a")
        .await
        .expect("get")
        .expect("a kept");
    assert_eq!((a.value.as_slice(), a.revision), (b"alpha".as_slice(), r_a));
    let listed = store.list("instances").await.expect("list");
    let keys: Vec<&str> = listed.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(keys, ["a", "b"], "deleted key stays deleted");
    assert_eq!(listed[1].1.revision, r_b);
    assert_eq!(
        store.get("other", "a").await.expect("get").map(|v| v.value),
        Some(b"other".to_vec())
    );

    // Compare-and-set with a revision read before the restart still works,
    // and revisions keep increasing past everything assigned before it.
    let r_a2 = store
        .put(
            "instances",
            "a",
            b"alpha2".to_vec(),
            Precondition::Revision(r_a),
        )
        .await
        .expect("compare-and-set after reopen");
    assert!(
        r_a2 > r_gone && r_a2 > r_b,
        "revisions continue after reopen"
    );
    let r_gone2 = store
        .put("instances", "gone", b"y".to_vec(), Precondition::Absent)
        .await
        .expect("recreate");
    assert!(r_gone2 > r_gone, "a recreated key never reuses a revision");

    // The log kept its newest 3 entries and continues at cursor 6.
    let page = store.read_log("events", 0, 100).await.expect("read_log");
    let cursors: Vec<u64> = page.entries.iter().map(|(c, _)| *c).collect();
    assert_eq!(cursors, [3, 4, 5]);
    assert_eq!(page.entries[2].1, b"e5");
    assert_eq!((page.oldest, page.newest), (3, 5));
    assert_eq!(
        store
            .append("events", b"e6".to_vec(), 3)
            .await
            .expect("append"),
        6,
        "log cursors continue after reopen"
    );
}

#[tokio::test]
async fn failed_batch_is_not_visible_after_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("state.redb");
    {
        let store = EmbeddedStore::open(&path).expect("open");
        let err = store
            .apply(vec![
                Write::Put {
                    collection: "c".into(),
                    key: "written?".into(),
                    value: b"no".to_vec(),
                    precondition: Precondition::None,
                },
                Write::Put {
                    collection: "c".into(),
                    key: "missing".into(),
                    value: b"no".to_vec(),
                    precondition: Precondition::Revision(Revision(42)),
                },
            ])
            .await
            .expect_err("second precondition fails");
        assert!(matches!(err, StoreError::Conflict { .. }), "{err}");
    }
    let store = EmbeddedStore::open(&path).expect("reopen");
    assert!(store.list("c").await.expect("list").is_empty());
}

#[tokio::test]
async fn open_creates_missing_directories() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("nested/deeper/state.redb");
    let store = EmbeddedStore::open(&path).expect("open");
    assert!(path.is_file(), "the state file exists after open");
    assert_eq!(store.location(), path.display().to_string());
    store
        .put("c", "k", b"v".to_vec(), Precondition::None)
        .await
        .expect("put");
}

#[test]
fn second_open_of_the_same_file_fails_with_the_path() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("state.redb");
    let first = EmbeddedStore::open(&path).expect("first open");

    let err = EmbeddedStore::open(&path).expect_err("second open of a locked file must fail");
    let message = err.to_string();
    assert!(matches!(err, StoreError::Backend(_)), "{err:?}");
    assert!(
        message.contains(&path.display().to_string()),
        "the error names the file: {message}"
    );
    assert!(
        message.contains("another DRaaS process is using it"),
        "the error says why: {message}"
    );

    // Once the first store is closed, the file opens again.
    drop(first);
    EmbeddedStore::open(&path).expect("open after the first store closed");
}

#[test]
fn open_rejects_a_file_that_is_not_a_store() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("state.redb");
    std::fs::write(&path, b"definitely not a redb database, just some text").expect("write");
    let err = EmbeddedStore::open(&path).expect_err("garbage must not open");
    assert!(
        err.to_string().contains(&path.display().to_string()),
        "the error names the file: {err}"
    );
    assert!(Path::new(&path).is_file(), "the file is left alone");
}
