//! What operators see: `/metrics` of a real `draas up` after real work.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::{server_pid, Draas};

/// The value of the sample whose line starts with `series` (name and
/// labels as exposed).
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_requests_commands_instances_workers_and_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let _reaper = common::Reaper(dir.path().to_path_buf());
    let draas = Draas::up_with_args(dir.path(), &["--reconcile", "on"]).await;
    let id = draas.create("measured", None).await;
    let (status, started) = draas
        .post(
            &format!("/api/server/instances/{id}/start?wait=Running&timeout=60"),
            None,
        )
        .await;
    assert_eq!(status, 200, "{started}");
    let pid = server_pid(&started).unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    draas
        .until(&id, Duration::from_secs(30), |i| {
            i["status"]["state"] == "Running" && server_pid(i) != Some(pid)
        })
        .await;

    let response = draas
        .client
        .get(draas.url("/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let text = response.text().await.unwrap();
    let get = |series: &str| sample(&text, series).unwrap_or_else(|| panic!("{series} in\n{text}"));
    // Requests, by route template (never the instance's id).
    assert!(
        get(
            r#"draas_http_request_duration_seconds_count{route="/api/server/instances/{id}/start",method="POST",code="200"}"#
        ) >= 1.0
    );
    assert!(!text.contains(&id), "no series per instance");
    // Commands by kind and outcome: the user's start and the reconciler's.
    assert!(get(r#"draas_command_duration_seconds_count{kind="Start",outcome="ok"}"#) >= 2.0);
    assert_eq!(get(r#"draas_restarts_total{platform="Process"}"#), 1.0);
    assert_eq!(
        get(r#"draas_instances{platform="Process",state="Running"}"#),
        1.0
    );
    assert_eq!(get(r#"draas_workers{platform="Process"}"#), 1.0);
    assert_eq!(get(r#"draas_workers{platform="Kubernetes"}"#), 0.0);
    let age = text
        .lines()
        .find(|l| l.starts_with("draas_worker_heartbeat_age_seconds{platform=\"Process\""))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok())
        .expect("a heartbeat age");
    assert!((0.0..5.0).contains(&age), "{age}");
    assert_eq!(
        get(r#"draas_bus_backlog{channel="instance.commands.process"}"#),
        0.0
    );
    assert_eq!(get(r#"draas_bus_dead_letters{platform="Process"}"#), 0.0);
    let (status, ready) = draas.get("/readyz").await;
    assert_eq!(status, 200, "{ready}");
    assert_eq!(ready["store"], "ok");
}
