//! Conformance suite for [`StateStore`]: what every state store backend must
//! do, as documented in `draas_core::ports::store`.
//!
//! Call [`run_all`] from a backend's tests, or single checks while
//! debugging one. Every check uses collection and log names that are unique
//! to the call, so checks may share one store (even one shared Redis server)
//! and run in any order.
//!
//! Revisions are only required to *increase* on every write of a key (a
//! backend may use a store-wide counter), so the checks compare revisions
//! with `<`, never with `+ 1`. Log cursors, in contrast, are exactly
//! 1, 2, 3, … per log (while the store runs: after a crash, a store that
//! defers durability moves them ahead).

use std::sync::Arc;

use draas_core::ports::{
    Applied, JsonStore, LogPage, Precondition, Revision, StateStore, StoreError, Versioned, Write,
};

/// The store under test.
pub type Store = Arc<dyn StateStore>;

/// Runs every check of this suite against `store`, one after the other.
pub async fn run_all(store: Store) {
    get_missing_is_none(store.clone()).await;
    put_get_roundtrip(store.clone()).await;
    get_many_reads_each_key_as_get_does(store.clone()).await;
    appends_in_a_batch_are_atomic_with_its_writes(store.clone()).await;
    revision_increases_on_every_put(store.clone()).await;
    absent_precondition_creates_once(store.clone()).await;
    recreated_key_gets_a_fresh_revision(store.clone()).await;
    revision_precondition_is_compare_and_set(store.clone()).await;
    apply_is_atomic(store.clone()).await;
    a_deferred_apply_is_an_apply_visible_at_once(store.clone()).await;
    apply_returns_one_result_per_write(store.clone()).await;
    delete_semantics(store.clone()).await;
    list_returns_one_collection_in_key_order(store.clone()).await;
    concurrent_compare_and_set_loses_no_update(store.clone()).await;
    log_cursors_start_at_one_and_increase(store.clone()).await;
    log_capacity_keeps_the_newest(store.clone()).await;
    log_after_and_limit(store.clone()).await;
    log_never_appended_is_empty(store.clone()).await;
    logs_are_independent(store).await;
}

/// A name no other check (or other run of the suite) uses.
fn unique(what: &str) -> String {
    format!("conformance-{}-{what}", uuid::Uuid::new_v4().simple())
}

fn put(collection: &str, key: &str, value: &[u8], precondition: Precondition) -> Write {
    Write::Put {
        collection: collection.to_string(),
        key: key.to_string(),
        value: value.to_vec(),
        precondition,
    }
}

fn delete(collection: &str, key: &str, precondition: Precondition) -> Write {
    Write::Delete {
        collection: collection.to_string(),
        key: key.to_string(),
        precondition,
    }
}

/// Reads `collection/key`, which must exist.
async fn must_get(store: &Store, collection: &str, key: &str) -> Versioned {
    store
        .get(collection, key)
        .await
        .expect("get")
        .unwrap_or_else(|| panic!("{collection}/{key} should exist"))
}

/// Asserts `result` is a conflict naming `collection/key`.
fn assert_conflict<T: std::fmt::Debug>(
    result: Result<T, StoreError>,
    collection: &str,
    key: &str,
    what: &str,
) {
    match result {
        Err(StoreError::Conflict {
            collection: c,
            key: k,
        }) => assert_eq!(
            (c.as_str(), k.as_str()),
            (collection, key),
            "{what}: the conflict should name the write whose precondition failed"
        ),
        other => panic!("{what}: expected a conflict on {collection}/{key}, got {other:?}"),
    }
}

/// Cursors of a page's entries.
fn cursors(page: &LogPage) -> Vec<u64> {
    page.entries.iter().map(|(c, _)| *c).collect()
}

/// `get` of a key never written is `None`, in a collection that exists
/// and in one that does not.
pub async fn get_missing_is_none(store: Store) {
    let collection = unique("missing");
    assert_eq!(
        store.get(&collection, "nope").await.expect("get"),
        None,
        "a key in a collection never written must be missing"
    );
    store
        .put(&collection, "present", b"x".to_vec(), Precondition::None)
        .await
        .expect("put");
    assert_eq!(
        store.get(&collection, "nope").await.expect("get"),
        None,
        "a key never written must be missing even when its collection has others"
    );
}

/// `get_many` answers, in order, what `get` answers for each key (values
/// and revisions, `None` where missing), across collections.
pub async fn get_many_reads_each_key_as_get_does(store: Store) {
    let a = unique("many-a");
    let b = unique("many-b");
    let applied = store
        .apply(vec![
            put(&a, "one", b"1", Precondition::None),
            put(&b, "one", b"other collection", Precondition::None),
            put(&a, "two", b"", Precondition::None),
        ])
        .await
        .expect("apply");
    let found = store
        .get_many(&[
            (a.as_str(), "two"),
            (a.as_str(), "missing"),
            (b.as_str(), "one"),
            (a.as_str(), "one"),
            (unique("never").as_str(), "one"),
        ])
        .await
        .expect("get_many");
    let expected = vec![
        Some(Versioned {
            value: Vec::new(),
            revision: applied[2].revision().expect("a revision"),
        }),
        None,
        Some(Versioned {
            value: b"other collection".to_vec(),
            revision: applied[1].revision().expect("a revision"),
        }),
        Some(Versioned {
            value: b"1".to_vec(),
            revision: applied[0].revision().expect("a revision"),
        }),
        None,
    ];
    assert_eq!(
        found, expected,
        "get_many must answer what get answers, in order"
    );
    assert_eq!(
        store.get_many(&[]).await.expect("get_many of nothing"),
        Vec::new()
    );
}

/// What is put is what is read back, byte for byte, with the revision put
/// returned.
pub async fn put_get_roundtrip(store: Store) {
    let collection = unique("roundtrip");
    let values: [(&str, Vec<u8>); 4] = [
        ("json", br#"{"name":"a","n":1}"#.to_vec()),
        ("empty", Vec::new()),
        ("binary", (0..=255u8).collect()),
        ("unicode key é/ü:#", "ünïcödé".as_bytes().to_vec()),
    ];
    for (key, value) in &values {
        let revision = store
            .put(&collection, key, value.clone(), Precondition::None)
            .await
            .expect("put");
        let read = must_get(&store, &collection, key).await;
        assert_eq!(
            &read.value, value,
            "{key}: value read differs from value put"
        );
        assert_eq!(
            read.revision, revision,
            "{key}: revision read differs from the one put returned"
        );
    }
    let record = serde_json::json!({ "id": "i-1", "tags": ["a", "b"] });
    store
        .put_json(&collection, "typed", &record, Precondition::Absent)
        .await
        .expect("put_json");
    let read = store
        .get_json::<serde_json::Value>(&collection, "typed")
        .await
        .expect("get_json")
        .expect("typed record exists");
    assert_eq!(read.value, record, "JSON helpers must round-trip");
}

/// Every put of a key gives it a greater revision, whatever the
/// precondition.
pub async fn revision_increases_on_every_put(store: Store) {
    let collection = unique("revisions");
    let mut last = store
        .put(&collection, "k", b"0".to_vec(), Precondition::Absent)
        .await
        .expect("create");
    assert!(last > Revision(0), "revisions start above 0, got {last:?}");
    for n in 1..=5u32 {
        // Alternate unconditional and compare-and-set puts; rewrite the
        // same bytes once to show a revision is per write, not per change.
        let precondition = if n % 2 == 0 {
            Precondition::Revision(last)
        } else {
            Precondition::None
        };
        let value = if n == 3 {
            b"2".to_vec()
        } else {
            n.to_string().into_bytes()
        };
        let next = store
            .put(&collection, "k", value.clone(), precondition)
            .await
            .expect("put");
        assert!(
            next > last,
            "put #{n} must increase the revision: {last:?} then {next:?}"
        );
        let read = must_get(&store, &collection, "k").await;
        assert_eq!(read.revision, next, "get must return the latest revision");
        assert_eq!(read.value, value, "get must return the latest value");
        last = next;
    }
}

/// `Absent` creates a missing key and conflicts, changing nothing, when the
/// key exists.
pub async fn absent_precondition_creates_once(store: Store) {
    let collection = unique("absent");
    let first = store
        .put(&collection, "k", b"first".to_vec(), Precondition::Absent)
        .await
        .expect("Absent on a missing key must create it");
    assert_conflict(
        store
            .put(&collection, "k", b"second".to_vec(), Precondition::Absent)
            .await,
        &collection,
        "k",
        "Absent on an existing key",
    );
    let read = must_get(&store, &collection, "k").await;
    assert_eq!(read.value, b"first", "a conflicting create must not write");
    assert_eq!(
        read.revision, first,
        "a conflicting create must not bump the revision"
    );
}

/// A key deleted and created again gets a revision greater than any it had,
/// so compare-and-set with a revision read before the delete fails.
pub async fn recreated_key_gets_a_fresh_revision(store: Store) {
    let collection = unique("recreate");
    let r1 = store
        .put(&collection, "k", b"a".to_vec(), Precondition::Absent)
        .await
        .expect("create");
    let r2 = store
        .put(&collection, "k", b"b".to_vec(), Precondition::Revision(r1))
        .await
        .expect("update");
    assert!(store
        .delete(&collection, "k", Precondition::Revision(r2))
        .await
        .expect("delete"));
    let r3 = store
        .put(&collection, "k", b"c".to_vec(), Precondition::Absent)
        .await
        .expect("Absent must create a deleted key again");
    assert!(
        r3 > r2,
        "a recreated key must not reuse an old revision: had {r2:?}, got {r3:?}"
    );
    for stale in [r1, r2] {
        assert_conflict(
            store
                .put(
                    &collection,
                    "k",
                    b"stale".to_vec(),
                    Precondition::Revision(stale),
                )
                .await,
            &collection,
            "k",
            "compare-and-set with a revision from before the delete",
        );
    }
    assert_eq!(must_get(&store, &collection, "k").await.value, b"c");
}

/// `Revision(r)` writes only when the key is at exactly `r`; a stale or
/// future revision, or a missing key, is a conflict that changes nothing.
pub async fn revision_precondition_is_compare_and_set(store: Store) {
    let collection = unique("cas");
    let r1 = store
        .put(&collection, "k", b"v1".to_vec(), Precondition::None)
        .await
        .expect("put");
    let r2 = store
        .put(&collection, "k", b"v2".to_vec(), Precondition::Revision(r1))
        .await
        .expect("compare-and-set with the current revision must succeed");
    assert!(r2 > r1);

    assert_conflict(
        store
            .put(
                &collection,
                "k",
                b"lost".to_vec(),
                Precondition::Revision(r1),
            )
            .await,
        &collection,
        "k",
        "compare-and-set with a stale revision",
    );
    assert_conflict(
        store
            .put(
                &collection,
                "k",
                b"lost".to_vec(),
                Precondition::Revision(Revision(r2.0 + 1_000_000)),
            )
            .await,
        &collection,
        "k",
        "compare-and-set with a revision never assigned",
    );
    let read = must_get(&store, &collection, "k").await;
    assert_eq!(read.value, b"v2", "failed compare-and-set must not write");
    assert_eq!(
        read.revision, r2,
        "failed compare-and-set must not bump the revision"
    );

    assert_conflict(
        store
            .put(
                &collection,
                "missing",
                b"x".to_vec(),
                Precondition::Revision(r2),
            )
            .await,
        &collection,
        "missing",
        "compare-and-set on a missing key",
    );
    assert_eq!(
        store.get(&collection, "missing").await.expect("get"),
        None,
        "compare-and-set on a missing key must not create it"
    );
}

/// A batch whose last precondition fails writes none of its writes, and
/// the conflict names that write.
pub async fn apply_is_atomic(store: Store) {
    let collection = unique("atomic");
    let existing = store
        .put(&collection, "existing", b"old".to_vec(), Precondition::None)
        .await
        .expect("put");
    let doomed = store
        .put(
            &collection,
            "doomed",
            b"keep me".to_vec(),
            Precondition::None,
        )
        .await
        .expect("put");

    let result = store
        .apply(vec![
            put(&collection, "new", b"n", Precondition::Absent),
            delete(&collection, "doomed", Precondition::Revision(doomed)),
            put(
                &collection,
                "existing",
                b"new",
                Precondition::Revision(Revision(existing.0 + 1_000_000)),
            ),
        ])
        .await;
    assert_conflict(
        result,
        &collection,
        "existing",
        "batch with a failing 3rd write",
    );

    assert_eq!(
        store.get(&collection, "new").await.expect("get"),
        None,
        "the 1st write of a failed batch must not be applied"
    );
    let kept = must_get(&store, &collection, "doomed").await;
    assert_eq!(
        (kept.value.as_slice(), kept.revision),
        (b"keep me".as_slice(), doomed),
        "the 2nd write (a delete) of a failed batch must not be applied"
    );
    let unchanged = must_get(&store, &collection, "existing").await;
    assert_eq!(
        (unchanged.value.as_slice(), unchanged.revision),
        (b"old".as_slice(), existing),
        "the failing write must not be applied"
    );
    assert_eq!(
        store.list(&collection).await.expect("list").len(),
        2,
        "a failed batch must leave the collection as it was"
    );
}

/// [`StateStore::apply_deferred`] differs from `apply` only in when the
/// writes reach the disk: they are visible at once, checked against their
/// preconditions, atomic, and numbered like any other.
pub async fn a_deferred_apply_is_an_apply_visible_at_once(store: Store) {
    let collection = unique("deferred");
    let log = unique("deferred-log");
    let first = store
        .put(&collection, "k", b"durable".to_vec(), Precondition::None)
        .await
        .expect("put");
    let appended = Write::Append {
        log: log.clone(),
        value: b"e1".to_vec(),
        capacity: 10,
    };
    let applied = store
        .apply_deferred(vec![
            put(&collection, "k", b"deferred", Precondition::Revision(first)),
            appended.clone(),
        ])
        .await
        .expect("deferred apply");
    let [Applied::Put(second), Applied::Appended(1)] = applied.as_slice() else {
        panic!("a put's revision and the log's first cursor expected, got {applied:?}");
    };
    assert!(*second > first, "{second:?} after {first:?}");
    let read = must_get(&store, &collection, "k").await;
    assert_eq!(
        (read.value.as_slice(), read.revision),
        (b"deferred".as_slice(), *second),
        "a deferred write is read back at once"
    );
    let page = store.read_log(&log, 0, 10).await.expect("read log");
    assert_eq!(cursors(&page), [1]);

    // A stale precondition: nothing of the batch is written.
    let refused = store
        .apply_deferred(vec![
            appended,
            put(&collection, "k", b"stale", Precondition::Revision(first)),
        ])
        .await;
    assert_conflict(
        refused,
        &collection,
        "k",
        "a deferred batch with a stale revision",
    );
    assert_eq!(must_get(&store, &collection, "k").await.revision, *second);
    let page = store.read_log(&log, 0, 10).await.expect("read log");
    assert_eq!(cursors(&page), [1], "the refused batch appended nothing");
}

/// A successful batch applies every write and returns, in order, the new
/// revision of each put and `None` for each delete.
pub async fn apply_returns_one_result_per_write(store: Store) {
    let a = unique("batch-a");
    let b = unique("batch-b");
    let gone = store
        .put(&a, "gone", b"x".to_vec(), Precondition::None)
        .await
        .expect("put");
    let results = store
        .apply(vec![
            put(&a, "one", b"1", Precondition::Absent),
            delete(&a, "gone", Precondition::Revision(gone)),
            put(&b, "two", b"2", Precondition::None),
            delete(&b, "never", Precondition::None),
        ])
        .await
        .expect("batch whose preconditions hold");
    assert_eq!(results.len(), 4, "one result per write: {results:?}");
    assert!(
        results[1] == Applied::Deleted && results[3] == Applied::Deleted,
        "deletes say so: {results:?}"
    );
    let (Some(r_one), Some(r_two)) = (results[0].revision(), results[2].revision()) else {
        panic!("puts return their new revision: {results:?}");
    };
    assert_eq!(must_get(&store, &a, "one").await.revision, r_one);
    assert_eq!(must_get(&store, &b, "two").await.revision, r_two);
    assert_eq!(store.get(&a, "gone").await.expect("get"), None);
    assert_eq!(
        store.apply(Vec::new()).await.expect("empty batch"),
        Vec::<Applied>::new(),
        "an empty batch succeeds and returns nothing"
    );
}

/// A batch may append to a log: the entry is written with the batch's
/// records or not at all, and the batch returns its cursor.
pub async fn appends_in_a_batch_are_atomic_with_its_writes(store: Store) {
    let collection = unique("batch-log-records");
    let log = unique("batch-log");
    let append = |value: &[u8]| Write::Append {
        log: log.clone(),
        value: value.to_vec(),
        capacity: 3,
    };
    let before = store
        .append(&log, b"first".to_vec(), 3)
        .await
        .expect("append");
    let results = store
        .apply(vec![
            put(&collection, "k", b"v", Precondition::Absent),
            append(b"with k"),
        ])
        .await
        .expect("batch");
    assert_eq!(results[1], Applied::Appended(before + 1), "{results:?}");

    // A failing precondition later in the batch: the entry is not appended.
    let failed = store
        .apply(vec![
            append(b"must not stay"),
            put(&collection, "k", b"again", Precondition::Absent),
        ])
        .await;
    assert_conflict(failed, &collection, "k", "append then a failing put");
    let page = store.read_log(&log, 0, 10).await.expect("read");
    let values: Vec<&[u8]> = page.entries.iter().map(|(_, v)| v.as_slice()).collect();
    assert_eq!(values, vec![b"first".as_slice(), b"with k".as_slice()]);

    // Capacity applies to appends in batches too; cursors go on.
    for i in 0..3u8 {
        store.apply(vec![append(&[i])]).await.expect("append");
    }
    let page = store.read_log(&log, 0, 10).await.expect("read");
    assert_eq!(page.entries.len(), 3, "{page:?}");
    assert_eq!(page.newest, before + 4);
}

/// Deletes: a missing key with `None` succeeds and reports `false`; an
/// existing key reports `true` and is gone; unmet preconditions conflict
/// and keep the key.
pub async fn delete_semantics(store: Store) {
    let collection = unique("delete");
    assert!(
        !store
            .delete(&collection, "missing", Precondition::None)
            .await
            .expect("deleting a missing key with Precondition::None must succeed"),
        "deleting a missing key reports that it did not exist"
    );
    assert_conflict(
        store
            .delete(&collection, "missing", Precondition::Revision(Revision(1)))
            .await,
        &collection,
        "missing",
        "delete with a revision on a missing key",
    );

    let r1 = store
        .put(&collection, "k", b"v".to_vec(), Precondition::None)
        .await
        .expect("put");
    let r2 = store
        .put(&collection, "k", b"v2".to_vec(), Precondition::None)
        .await
        .expect("put");
    assert_conflict(
        store
            .delete(&collection, "k", Precondition::Revision(r1))
            .await,
        &collection,
        "k",
        "delete with a stale revision",
    );
    assert_conflict(
        store.delete(&collection, "k", Precondition::Absent).await,
        &collection,
        "k",
        "delete with Absent on an existing key",
    );
    assert_eq!(
        must_get(&store, &collection, "k").await.revision,
        r2,
        "a conflicting delete must keep the key"
    );

    assert!(
        store
            .delete(&collection, "k", Precondition::Revision(r2))
            .await
            .expect("delete with the current revision"),
        "deleting an existing key reports that it existed"
    );
    assert_eq!(store.get(&collection, "k").await.expect("get"), None);
    assert!(
        store.list(&collection).await.expect("list").is_empty(),
        "a deleted key must not be listed"
    );

    store
        .put(&collection, "k2", b"v".to_vec(), Precondition::None)
        .await
        .expect("put");
    assert!(store
        .delete(&collection, "k2", Precondition::None)
        .await
        .expect("unconditional delete"));
    assert!(
        !store
            .delete(&collection, "k2", Precondition::None)
            .await
            .expect("second delete"),
        "deleting twice reports the key missing the second time"
    );
}

/// `list` returns every key of exactly one collection, in key order, with
/// values and revisions; collections whose names share a prefix do not
/// leak into each other.
pub async fn list_returns_one_collection_in_key_order(store: Store) {
    let base = unique("list");
    let a = format!("{base}-a");
    let ab = format!("{base}-ab");
    let a_slash = format!("{base}-a/");
    assert!(
        store.list(&a).await.expect("list").is_empty(),
        "a collection never written lists nothing"
    );

    // Inserted out of order; includes keys that prefix each other.
    let keys = ["k2", "k10", "k", "a", "k1", "b/c", "z"];
    let mut revisions = std::collections::BTreeMap::new();
    for key in keys {
        let revision = store
            .put(&a, key, format!("a:{key}").into_bytes(), Precondition::None)
            .await
            .expect("put");
        revisions.insert(key.to_string(), revision);
    }
    for other in [&ab, &a_slash, &base] {
        store
            .put(other, "k", b"other".to_vec(), Precondition::None)
            .await
            .expect("put");
        store
            .put(other, "", b"other".to_vec(), Precondition::None)
            .await
            .expect("put");
    }

    let listed = store.list(&a).await.expect("list");
    let listed_keys: Vec<&str> = listed.iter().map(|(k, _)| k.as_str()).collect();
    let mut expected: Vec<&str> = keys.to_vec();
    expected.sort_unstable();
    assert_eq!(
        listed_keys, expected,
        "list must return exactly the collection's keys, in key order, and none of \
         collections {ab:?}, {a_slash:?}, {base:?}"
    );
    for (key, versioned) in &listed {
        assert_eq!(
            versioned.value,
            format!("a:{key}").into_bytes(),
            "value of {key}"
        );
        assert_eq!(
            Some(&versioned.revision),
            revisions.get(key),
            "revision of {key}"
        );
    }

    let listed_ab: Vec<String> = store
        .list(&ab)
        .await
        .expect("list")
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    assert_eq!(
        listed_ab,
        ["", "k"],
        "collection {ab:?} holds only its own keys"
    );
}

/// 8 tasks each increment one JSON counter 25 times with read,
/// compare-and-set, retry on conflict: the counter ends at exactly 200.
pub async fn concurrent_compare_and_set_loses_no_update(store: Store) {
    const TASKS: u64 = 8;
    const INCREMENTS: u64 = 25;
    const MAX_ATTEMPTS: u32 = 10_000;
    let collection = unique("counter");
    store
        .put_json(&collection, "n", &0u64, Precondition::Absent)
        .await
        .expect("create counter");

    let mut tasks = Vec::new();
    for task in 0..TASKS {
        let store = store.clone();
        let collection = collection.clone();
        tasks.push(tokio::spawn(async move {
            let mut conflicts = 0u32;
            for _ in 0..INCREMENTS {
                let mut attempts = 0u32;
                loop {
                    attempts += 1;
                    assert!(
                        attempts <= MAX_ATTEMPTS,
                        "task {task}: no increment succeeded after {MAX_ATTEMPTS} attempts"
                    );
                    let current = store
                        .get_json::<u64>(&collection, "n")
                        .await
                        .expect("get counter")
                        .expect("counter exists");
                    match store
                        .put_json(
                            &collection,
                            "n",
                            &(current.value + 1),
                            Precondition::Revision(current.revision),
                        )
                        .await
                    {
                        Ok(_) => break,
                        Err(StoreError::Conflict { .. }) => {
                            conflicts += 1;
                            tokio::task::yield_now().await;
                        }
                        Err(other) => panic!("task {task}: unexpected error {other}"),
                    }
                }
            }
            conflicts
        }));
    }
    for task in tasks {
        task.await.expect("counter task panicked");
    }
    let counter = store
        .get_json::<u64>(&collection, "n")
        .await
        .expect("get counter")
        .expect("counter exists");
    assert_eq!(
        counter.value,
        TASKS * INCREMENTS,
        "concurrent compare-and-set lost updates"
    );
}

/// Cursors of a new log are 1, 2, 3, …; `newest` is the last one and
/// entries come back oldest first with their values.
pub async fn log_cursors_start_at_one_and_increase(store: Store) {
    let log = unique("log-cursors");
    for expected in 1..=5u64 {
        let cursor = store
            .append(&log, format!("e{expected}").into_bytes(), 100)
            .await
            .expect("append");
        assert_eq!(cursor, expected, "cursors of a log are 1, 2, 3, …");
    }
    let page = store.read_log(&log, 0, 100).await.expect("read_log");
    assert_eq!(cursors(&page), [1, 2, 3, 4, 5]);
    for (cursor, value) in &page.entries {
        assert_eq!(
            value,
            &format!("e{cursor}").into_bytes(),
            "value of entry {cursor}"
        );
    }
    assert_eq!((page.oldest, page.newest), (1, 5), "oldest and newest");
}

/// A log keeps only its newest `capacity` entries; `oldest` moves up and
/// cursors are never reused.
pub async fn log_capacity_keeps_the_newest(store: Store) {
    let log = unique("log-capacity");
    for n in 1..=5u64 {
        assert_eq!(
            store
                .append(&log, format!("e{n}").into_bytes(), 3)
                .await
                .expect("append"),
            n
        );
    }
    let page = store.read_log(&log, 0, 100).await.expect("read_log");
    assert_eq!(
        cursors(&page),
        [3, 4, 5],
        "only the newest 3 entries are kept"
    );
    assert_eq!(page.entries[0].1, b"e3", "kept entries keep their values");
    assert_eq!((page.oldest, page.newest), (3, 5));

    assert_eq!(
        store.append(&log, b"e6".to_vec(), 3).await.expect("append"),
        6,
        "cursors keep counting after trimming"
    );
    let page = store.read_log(&log, 0, 100).await.expect("read_log");
    assert_eq!(cursors(&page), [4, 5, 6]);
    assert_eq!(
        (page.oldest, page.newest),
        (4, 6),
        "oldest moves as entries are dropped"
    );

    // A smaller capacity trims further; a larger one keeps what is left.
    assert_eq!(
        store.append(&log, b"e7".to_vec(), 1).await.expect("append"),
        7
    );
    let page = store.read_log(&log, 0, 100).await.expect("read_log");
    assert_eq!(cursors(&page), [7]);
    assert_eq!((page.oldest, page.newest), (7, 7));
    assert_eq!(
        store
            .append(&log, b"e8".to_vec(), 10)
            .await
            .expect("append"),
        8
    );
    let page = store.read_log(&log, 0, 100).await.expect("read_log");
    assert_eq!(cursors(&page), [7, 8]);
    assert_eq!((page.oldest, page.newest), (7, 8));

    // A reader that remembered cursor 2 learns it missed entries 3..=6.
    let page = store.read_log(&log, 2, 100).await.expect("read_log");
    assert!(
        page.oldest > 2 + 1,
        "oldest ({}) shows entries after cursor 2 were dropped",
        page.oldest
    );
    assert_eq!(cursors(&page), [7, 8]);
}

/// `after` skips entries up to and including that cursor; `limit` caps the
/// page, which always starts at the oldest matching entry.
pub async fn log_after_and_limit(store: Store) {
    let log = unique("log-page");
    for n in 1..=10u64 {
        store
            .append(&log, format!("e{n}").into_bytes(), 100)
            .await
            .expect("append");
    }
    let page = store.read_log(&log, 4, 100).await.expect("read_log");
    assert_eq!(cursors(&page), [5, 6, 7, 8, 9, 10], "after=4");
    let page = store.read_log(&log, 4, 3).await.expect("read_log");
    assert_eq!(cursors(&page), [5, 6, 7], "after=4, limit=3");
    assert_eq!(
        (page.oldest, page.newest),
        (1, 10),
        "a page reports the whole log's bounds"
    );

    // Paging through with the last cursor seen visits every entry once.
    let mut seen = Vec::new();
    let mut after = 0;
    loop {
        let page = store.read_log(&log, after, 4).await.expect("read_log");
        let Some((last, _)) = page.entries.last() else {
            break;
        };
        after = *last;
        seen.extend(cursors(&page));
    }
    assert_eq!(
        seen,
        (1..=10).collect::<Vec<u64>>(),
        "paging with after/limit"
    );

    let page = store.read_log(&log, 10, 100).await.expect("read_log");
    assert!(page.entries.is_empty(), "nothing after the newest cursor");
    assert_eq!((page.oldest, page.newest), (1, 10));
    let page = store.read_log(&log, 50, 100).await.expect("read_log");
    assert!(
        page.entries.is_empty(),
        "nothing after a cursor beyond the newest"
    );
    let page = store.read_log(&log, 0, 0).await.expect("read_log");
    assert!(page.entries.is_empty(), "limit 0 returns no entries");
    assert_eq!(
        (page.oldest, page.newest),
        (1, 10),
        "limit 0 still reports the bounds"
    );
}

/// A log never appended to has no entries and `oldest == newest == 0`.
pub async fn log_never_appended_is_empty(store: Store) {
    let log = unique("log-empty");
    for (after, limit) in [(0, 100), (5, 100), (0, 0)] {
        let page = store.read_log(&log, after, limit).await.expect("read_log");
        assert_eq!(
            page,
            LogPage {
                entries: Vec::new(),
                oldest: 0,
                newest: 0
            },
            "a log never appended (after={after}, limit={limit})"
        );
    }
}

/// Logs do not share cursors or entries, even when one name prefixes the
/// other.
pub async fn logs_are_independent(store: Store) {
    let a = unique("log-a");
    let ab = format!("{a}b");
    for _ in 0..3 {
        store.append(&a, b"a".to_vec(), 2).await.expect("append");
    }
    assert_eq!(
        store.append(&ab, b"ab".to_vec(), 2).await.expect("append"),
        1,
        "a new log starts at cursor 1 whatever other logs hold"
    );
    let page_a = store.read_log(&a, 0, 100).await.expect("read_log");
    assert_eq!(cursors(&page_a), [2, 3]);
    assert!(page_a.entries.iter().all(|(_, v)| v == b"a"), "{page_a:?}");
    assert_eq!((page_a.oldest, page_a.newest), (2, 3));
    let page_ab = store.read_log(&ab, 0, 100).await.expect("read_log");
    assert_eq!(cursors(&page_ab), [1]);
    assert_eq!((page_ab.oldest, page_ab.newest), (1, 1));
}
