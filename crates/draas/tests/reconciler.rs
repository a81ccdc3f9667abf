//! The reconciler of `draas up`, end to end with real runtime processes:
//! a killed server comes back by itself, a crash loop backs off and stops
//! at its limit, a configuration change reaches a running server.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use common::{alive, server_pid, Draas, Reaper};
use serde_json::json;

const RECONCILE: &[&str] = &["--reconcile", "on", "--reconcile-interval", "1"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_server_runs_again_without_anyone_asking() {
    let dir = tempfile::tempdir().expect("tempdir");
    let _reaper = Reaper(dir.path().to_path_buf());
    let draas = Draas::up_with_args(dir.path(), RECONCILE).await;
    let (id, instance) = draas
        .running_pipeline(json!({"name": "healing", "platformType": "Process"}))
        .await;
    let first = server_pid(&instance).expect("pid");
    assert_eq!(instance["status"]["restartCount"], 0);

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(first as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill");
    let healed = draas
        .until(&id, Duration::from_secs(10), |i| {
            i["status"]["state"] == "Running" && server_pid(i).is_some_and(|p| p != first)
        })
        .await;
    assert!(!alive(first));
    assert_eq!(healed["status"]["restartCount"], 1, "{healed}");
    assert!(healed["status"].get("nextRetryAt").is_none(), "{healed}");
    let failure = &healed["status"]["lastFailure"];
    assert!(
        failure["reason"] == "KilledBySignal" || failure["reason"] == "ExitedWithCode",
        "{healed}"
    );
    // It is the same instance, doing its work again.
    let endpoint = healed["runtime"]["endpoint"].as_str().unwrap();
    assert!(!draas.rows(endpoint, "values").await.is_empty());

    // A user's stop is respected: nothing restarts what should not run.
    let (status, stopped) = draas
        .post(&format!("/api/server/instances/{id}/stop"), None)
        .await;
    assert_eq!(status, 200, "{stopped}");
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    assert_eq!(draas.state(&id).await, "Stopped");
}

/// What a worker observes of its servers is recorded without waiting for
/// the disk (durable with the next durable write, or 50 ms later), so a
/// crash of `draas up` itself may lose a server's crash it had just seen.
/// Nothing is lost for good: the worker sees it again when it starts, and
/// the reconciler heals it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_crash_seen_just_before_draas_itself_is_killed_is_seen_again_and_healed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let _reaper = Reaper(dir.path().to_path_buf());
    // No reconciler yet: the crash stays as the worker recorded it.
    let draas = Draas::up_with_args(dir.path(), &["--reconcile", "off"]).await;
    let (id, instance) = draas
        .running_pipeline(json!({"name": "seen-twice", "platformType": "Process"}))
        .await;
    let first = server_pid(&instance).expect("pid");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(first as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill");
    draas
        .wait_state(&id, "Failed", Duration::from_secs(2))
        .await;
    // kill -9 draas as soon as it has shown the crash.
    let draas = draas.crash_and_restart_with(RECONCILE).await;
    assert!(
        draas
            .process
            .stderr()
            .contains("was not closed by its last process"),
        "the store noticed the crash: {}",
        draas.process.stderr()
    );
    let healed = draas
        .until(&id, Duration::from_secs(10), |i| {
            i["status"]["state"] == "Running" && server_pid(i).is_some_and(|p| p != first)
        })
        .await;
    assert_eq!(healed["status"]["restartCount"], 1, "{healed}");
    assert!(
        healed["status"]["lastFailure"]["reason"].is_string(),
        "{healed}"
    );
    let endpoint = healed["runtime"]["endpoint"].as_str().unwrap();
    assert!(!draas.rows(endpoint, "values").await.is_empty());
}

/// A restart step that the instance's restart policy, as stored, does not
/// allow is refused, whoever sends it: a reconciler may plan a crash from a
/// copy of the instance it kept, and the control plane has the last word.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_its_policy_does_not_allow_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let _reaper = Reaper(dir.path().to_path_buf());
    let draas = Draas::up_with_args(dir.path(), RECONCILE).await;
    let (id, instance) = draas.running_pipeline(
        json!({"name": "never", "platformType": "Process", "restartPolicy": {"policy": "never"}}),
    )
    .await;
    let pid = server_pid(&instance).expect("pid");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill");
    draas
        .until(&id, Duration::from_secs(10), |i| {
            i["status"]["state"] == "Failed"
        })
        .await;
    let (status, refused) = draas
        .post(
            &format!("/api/server/instances/{id}/reconcile"),
            Some(json!({"action": "recover", "restartCount": 0})),
        )
        .await;
    assert_eq!(
        (status, refused["code"].as_str()),
        (409, Some("STALE_PLAN")),
        "{refused}"
    );
    assert!(
        refused["detail"]
            .as_str()
            .unwrap()
            .contains("restart policy"),
        "{refused}"
    );
    let (_, after) = draas.get(&format!("/api/server/instances/{id}")).await;
    assert_eq!(after["status"]["state"], "Failed", "{after}");
    assert_eq!(after["status"]["restartCount"], 0, "{after}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_loop_backs_off_longer_each_time_and_stops_at_the_limit() {
    let dir = tempfile::tempdir().expect("tempdir");
    let _reaper = Reaper(dir.path().to_path_buf());
    let draas = Draas::up_with_args(dir.path(), RECONCILE).await;
    // A server that exits during startup, every time: its database is
    // not there.
    let (status, created) = draas
        .post(
            "/api/server/instances",
            Some(json!({
                "name": "looping",
                "platformType": "Process",
                "restartPolicy": {"policy": "on-failure", "maxRestarts": 3,
                                  "initialBackoffMs": 400, "maxBackoffMs": 2000},
                "configuration": {"sources": [{"kind": "postgres", "id": "pg", "host": "127.0.0.1",
                    "port": draas_testkit::free_port(), "database": "d", "user": "u"}]}
            })),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    let id = created["instance"]["id"].as_str().unwrap().to_string();
    let (status, body) = draas
        .post(&format!("/api/server/instances/{id}/start"), None)
        .await;
    assert_eq!(status, 502, "{body}");

    // Watch the bookkeeping: each scheduled retry, with the restarts in a
    // row it follows.
    let mut scheduled: Vec<(u64, i64)> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    let last = loop {
        let (_, instance) = draas.get(&format!("/api/server/instances/{id}")).await;
        let status = &instance["status"];
        let count = status["restartCount"].as_u64().unwrap();
        if let Some(at) = status["nextRetryAt"].as_str() {
            let at: DateTime<Utc> = at.parse().unwrap();
            let since: DateTime<Utc> = status["updatedAt"].as_str().unwrap().parse().unwrap();
            if scheduled.last().is_none_or(|(c, _)| *c != count) {
                scheduled.push((count, (at - since).num_milliseconds()));
            }
        }
        if count == 3 && status["state"] == "Failed" && status.get("nextRetryAt").is_none() {
            break instance;
        }
        assert!(
            Instant::now() < deadline,
            "no end to the loop: {instance} {scheduled:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    // The first restart was immediate; the second and third waited about
    // 400 ms and 800 ms (less up to a fifth of jitter).
    let waits: Vec<i64> = scheduled.iter().map(|(_, w)| *w).collect();
    assert_eq!(
        scheduled.iter().map(|(c, _)| *c).collect::<Vec<_>>(),
        vec![1, 2],
        "{scheduled:?}"
    );
    assert!((300..=450).contains(&waits[0]), "{waits:?}");
    assert!((620..=850).contains(&waits[1]), "{waits:?}");
    assert!(waits[1] > waits[0]);
    assert_eq!(last["status"]["lastFailure"]["reason"], "ExitedWithCode");

    // At the limit it stays failed.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (_, after) = draas.get(&format!("/api/server/instances/{id}")).await;
    assert_eq!(after["status"]["state"], "Failed", "{after}");
    assert_eq!(after["status"]["restartCount"], 3, "{after}");

    // A user's start begins the count again.
    let (status, _) = draas
        .post(&format!("/api/server/instances/{id}/start"), None)
        .await;
    assert_eq!(status, 502);
    draas
        .until(&id, Duration::from_secs(5), |i| {
            i["status"]["restartCount"]
                .as_u64()
                .is_some_and(|c| (1..3).contains(&c))
        })
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configuration_change_reaches_the_running_server_unless_manual() {
    let dir = tempfile::tempdir().expect("tempdir");
    let _reaper = Reaper(dir.path().to_path_buf());
    let draas = Draas::up_with_args(dir.path(), RECONCILE).await;
    let (auto, _) = draas
        .running_pipeline(json!({"name": "auto", "platformType": "Process"}))
        .await;
    let (manual, _) = draas
        .running_pipeline(
            json!({"name": "manual", "platformType": "Process", "updateStrategy": "manual"}),
        )
        .await;
    let change = json!([{"op": "replace", "path": "/sources/0/intervalMs", "value": 50}]);
    for id in [&auto, &manual] {
        let (status, body, _) = draas
            .patch(
                &format!("/api/configuration/instances/{id}"),
                change.clone(),
                None,
            )
            .await;
        assert_eq!(status, 200, "{body}");
    }
    let applied = draas
        .until(&auto, Duration::from_secs(10), |i| {
            i["status"]["state"] == "Running"
                && i["status"]["observedGeneration"] == i["generation"]
        })
        .await;
    assert_eq!(applied["generation"], 3, "{applied}");
    let (_, untouched) = draas.get(&format!("/api/server/instances/{manual}")).await;
    assert_eq!(untouched["status"]["state"], "Running");
    assert_eq!(untouched["status"]["observedGeneration"], 2, "{untouched}");
}
