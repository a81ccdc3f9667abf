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
    common::kill9(pid);
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trace_id_travels_from_the_request_over_the_bus_to_the_worker_and_back() {
    use common::cluster;
    let dir = tempfile::tempdir().unwrap();
    let _reaper = common::Reaper(dir.path().to_path_buf());
    let redis = cluster::redis(dir.path());
    let range = common::port_range();
    let serve = cluster::serve_with(
        dir.path(),
        "serve",
        &redis,
        &range,
        draas_testkit::free_port(),
        &["--reconcile", "off", "--log-format", "json"],
    )
    .await;
    let worker =
        cluster::WorkerProcess::start(dir.path(), "worker", &redis, &["--log-format", "json"]);
    cluster::wait_workers(&serve.api, 1).await;
    let id = serve.create("traced", None).await;

    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let sent = format!("00-{trace}-00f067aa0ba902b7-01");
    let response = serve
        .client
        .post(serve.url(&format!(
            "/api/server/instances/{id}/start?wait=Running&timeout=60"
        )))
        .header("traceparent", &sent)
        .send()
        .await
        .unwrap();
    let status = response.status();
    let back = response.headers()["traceparent"]
        .to_str()
        .unwrap()
        .to_string();
    assert_eq!(status, 200, "{}", response.text().await.unwrap_or_default());
    // Back: the answer names the same trace, with the control plane's span.
    assert!(back.starts_with(&format!("00-{trace}-")), "{back}");
    assert_ne!(back, sent);

    // Through the bus: the worker's lines for the command carry the trace
    // id, as JSON lines.
    let logs = worker.process.stderr();
    let lines: Vec<serde_json::Value> = logs
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let traced: Vec<&serde_json::Value> = lines
        .iter()
        .filter(|l| l.to_string().contains(trace))
        .collect();
    assert!(
        !traced.is_empty(),
        "no worker line names the trace:\n{logs}"
    );
    assert!(
        traced
            .iter()
            .any(|l| l["spans"].to_string().contains("\"kind\":\"Start\"")),
        "{traced:?}"
    );
    // And the control plane's own lines for the request.
    assert!(serve.process.stderr().contains(trace));

    // A request without one starts a new trace.
    let fresh = serve
        .client
        .get(serve.url("/api/server/platforms"))
        .send()
        .await
        .unwrap();
    let header = fresh.headers()["traceparent"].to_str().unwrap().to_string();
    assert!(
        draas_core::trace::TraceParent::parse(&header).is_some(),
        "{header}"
    );
    assert!(!header.contains(trace));
}
