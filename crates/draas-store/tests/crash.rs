//! Deferred durability across a crash of the process holding the store.
//!
//! Each test runs itself again as a child process (the same test binary,
//! this one test, with `CRASH_CHILD` set), which writes and then exits at
//! once, without closing the store: what a crash leaves on disk. The
//! parent reopens the file and checks what survived.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use draas_core::ports::{Applied, Precondition, StateStore, Write};
use draas_store::EmbeddedStore;

const CHILD: &str = "CRASH_CHILD";
const RESULT: &str = "CHILD-RESULT";

fn put(key: &str, value: &str) -> Write {
    Write::Put {
        collection: "instances".into(),
        key: key.into(),
        value: value.as_bytes().to_vec(),
        precondition: Precondition::None,
    }
}

fn append(value: &str) -> Write {
    Write::Append {
        log: "status".into(),
        value: value.as_bytes().to_vec(),
        capacity: 100,
    }
}

/// Runs `test` of this binary as a child that acts on `path`; returns the
/// numbers it printed.
fn run_child(test: &str, path: &Path) -> Vec<u64> {
    let output = Command::new(std::env::current_exe().expect("test binary"))
        .args(["--exact", test, "--nocapture", "--test-threads=1"])
        .env(CHILD, path)
        .output()
        .expect("run the child");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line = stdout
        .lines()
        // The harness may print its own words before it on the line.
        .find_map(|l| l.split_once(RESULT).map(|(_, numbers)| numbers))
        .unwrap_or_else(|| {
            panic!(
                "the child printed no result: {stdout}\n{}",
                String::from_utf8_lossy(&output.stderr)
            )
        });
    line.split_whitespace()
        .map(|n| n.parse().expect("a number"))
        .collect()
}

/// In the child: prints `numbers` and dies without closing anything.
fn crash(numbers: &[u64]) -> ! {
    let printed: Vec<String> = numbers.iter().map(u64::to_string).collect();
    println!("{RESULT} {}", printed.join(" "));
    std::process::exit(0)
}

/// A deferred write's revision and cursor.
async fn write_deferred(store: &EmbeddedStore, key: &str) -> (u64, u64) {
    let applied = store
        .apply_deferred(vec![put(key, "observed"), append(key)])
        .await
        .expect("deferred write");
    match applied.as_slice() {
        [Applied::Put(revision), Applied::Appended(cursor)] => (revision.0, *cursor),
        other => panic!("unexpected result {other:?}"),
    }
}

#[tokio::test]
async fn a_crash_right_after_a_deferred_write_loses_it_and_hands_out_nothing_twice() {
    if let Some(path) = std::env::var_os(CHILD) {
        let store = EmbeddedStore::open(Path::new(&path)).expect("open");
        store
            .apply(vec![put("durable", "kept")])
            .await
            .expect("durable write");
        let (revision, cursor) = write_deferred(&store, "deferred").await;
        // Visible at once, to every reader of this process.
        assert!(store.get("instances", "deferred").await.unwrap().is_some());
        crash(&[revision, cursor]);
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("state.redb");
    let numbers = run_child(
        "a_crash_right_after_a_deferred_write_loses_it_and_hands_out_nothing_twice",
        &path,
    );
    let (lost_revision, lost_cursor) = (numbers[0], numbers[1]);

    let store = EmbeddedStore::open(&path).expect("reopen after the crash");
    assert!(
        store.get("instances", "durable").await.unwrap().is_some(),
        "the durable write survives"
    );
    assert_eq!(
        store.get("instances", "deferred").await.unwrap(),
        None,
        "the deferred write was not flushed before the crash"
    );
    // Neither the revision nor the cursor the lost write was given comes
    // back: a reader holding them cannot mistake a new write for it.
    let (revision, cursor) = write_deferred(&store, "after").await;
    assert!(
        revision > lost_revision,
        "revision {revision} after the crash, {lost_revision} before"
    );
    assert!(
        cursor > lost_cursor,
        "cursor {cursor} after the crash, {lost_cursor} before"
    );
    let page = store.read_log("status", lost_cursor, 10).await.unwrap();
    assert_eq!(page.entries.len(), 1, "only the new entry follows");
    assert_eq!(page.entries[0].0, cursor);
}

#[tokio::test]
async fn a_durable_write_makes_the_deferred_ones_before_it_durable() {
    if let Some(path) = std::env::var_os(CHILD) {
        let store = EmbeddedStore::open(Path::new(&path)).expect("open");
        let (revision, cursor) = write_deferred(&store, "deferred").await;
        store
            .apply(vec![put("durable", "kept")])
            .await
            .expect("durable write");
        crash(&[revision, cursor]);
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("state.redb");
    let numbers = run_child(
        "a_durable_write_makes_the_deferred_ones_before_it_durable",
        &path,
    );
    let store = EmbeddedStore::open(&path).expect("reopen after the crash");
    let kept = store
        .get("instances", "deferred")
        .await
        .unwrap()
        .expect("the deferred write became durable with the durable one");
    assert_eq!(kept.revision.0, numbers[0]);
    let page = store.read_log("status", 0, 10).await.unwrap();
    assert_eq!(page.entries.len(), 1);
    assert_eq!(page.entries[0].0, numbers[1]);
}

#[tokio::test]
async fn a_deferred_write_alone_is_flushed_within_the_delay() {
    if let Some(path) = std::env::var_os(CHILD) {
        let store = EmbeddedStore::open(Path::new(&path)).expect("open");
        let (revision, cursor) = write_deferred(&store, "deferred").await;
        // The flusher's delay is 50 ms; the bound is generous for a busy
        // machine.
        tokio::time::sleep(Duration::from_millis(1000)).await;
        crash(&[revision, cursor]);
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("state.redb");
    let numbers = run_child("a_deferred_write_alone_is_flushed_within_the_delay", &path);
    let store = EmbeddedStore::open(&path).expect("reopen after the crash");
    let kept = store
        .get("instances", "deferred")
        .await
        .unwrap()
        .expect("the flusher made the deferred write durable");
    assert_eq!(kept.revision.0, numbers[0]);
}

#[tokio::test]
async fn closing_the_store_keeps_deferred_writes_and_the_counters_run_on() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("state.redb");
    let (revision, cursor) = {
        let store = EmbeddedStore::open(&path).expect("open");
        write_deferred(&store, "deferred").await
        // Dropped at once, long before the flusher's delay: closing flushes.
    };
    let store = EmbeddedStore::open(&path).expect("reopen");
    let kept = store
        .get("instances", "deferred")
        .await
        .unwrap()
        .expect("kept when the store closed");
    assert_eq!(kept.revision.0, revision);
    // A clean close moves no counter ahead.
    assert_eq!(
        write_deferred(&store, "next").await,
        (revision + 1, cursor + 1)
    );
}
