//! What happens inside a server, seen through DRaaS: an instance is
//! `Starting` while its queries bootstrap (the status says which, how far),
//! `Running` once they did, and the data plane's numbers reach
//! `runtime-status` and `/metrics`.
//!
//! Against: real `draas up` and bundled runtime processes; the bootstrap
//! reads an HTTP upstream the test runs and holds until it lets it answer.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::Draas;
use draas_testkit::receiver::Receiver;
use draas_testkit::wait_for;
use serde_json::{json, Value};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_is_starting_while_its_queries_bootstrap_and_its_numbers_reach_metrics() {
    let dir = tempfile::tempdir().unwrap();
    // Servers outlive their control plane by design: none outlives the test.
    let _reaper = common::Reaper(dir.path().to_path_buf());
    let draas = Draas::up(dir.path()).await;
    let upstream = Receiver::holding(
        json!({"items": [{"id": "a", "name": "Ann"}, {"id": "b", "name": "Ben"}]}).to_string(),
    )
    .await;
    let create = json!({
        "name": "boot",
        "serverConfiguration": {
            "startTimeoutSeconds": 2,
            "environment": {"UPSTREAM": format!("http://127.0.0.1:{}", upstream.port)}
        },
        "configuration": {
            // One of bootstrapProviders: an inline provider of the
            // source's own kind would inherit the source's fields.
            "bootstrapProviders": [{
                "kind": "http", "id": "upstream",
                "timeoutSeconds": 120,
                "endpoints": [{
                    "url": "${UPSTREAM}",
                    "method": "GET",
                    "response": {
                        "itemsPath": "$.items",
                        "mappings": [{
                            "elementType": "node", "operation": "insert",
                            "template": {"id": "{{item.id}}", "labels": ["Person"],
                                         "properties": {"name": "{{item.name}}"}}
                        }]
                    }
                }]
            }],
            "sources": [{
                "kind": "http", "id": "people-feed", "host": "127.0.0.1",
                "bootstrapProvider": "upstream"
            }],
            "queries": [{
                "id": "people", "autoStart": true, "queryLanguage": "Cypher",
                "query": "MATCH (p:Person) RETURN p.name AS name",
                "sources": [{"sourceId": "people-feed"}]
            }],
            "reactions": [{"kind": "log", "id": "console", "queries": ["people"]}]
        }
    });
    let (status, created) = draas.post("/api/server/instances", Some(create)).await;
    assert_eq!(status, 201, "{created}");
    let id = created["instance"]["id"].as_str().unwrap().to_string();

    // The bootstrap outlasts the start timeout: the server is up and
    // loading, not failed, and the answer says so.
    let (status, started) = draas
        .post(&format!("/api/server/instances/{id}/start"), None)
        .await;
    assert_eq!(status, 200, "{started}");
    assert_eq!(started["status"]["state"], "Starting", "{started}");
    assert_eq!(started["status"]["reason"], "Bootstrapping", "{started}");
    let message = started["status"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("query 'people'"), "{started}");
    let (_, live) = draas
        .get(&format!("/api/server/instances/{id}/runtime-status"))
        .await;
    let plane = &live["live"]["dataPlane"]["instances"][0];
    assert_eq!(plane["queries"][0]["status"], "Starting", "{live}");
    assert_eq!(
        plane["queries"][0]["bootstrap"]["state"], "Bootstrapping",
        "{live}"
    );
    assert_eq!(
        plane["reactions"][0]["status"], "Starting",
        "the reaction waits for its query: {live}"
    );

    // The upstream answers: the bootstrap finishes, the instance runs.
    upstream.release();
    let running = draas
        .wait_state(&id, "Running", Duration::from_secs(60))
        .await;
    assert_eq!(running["status"]["reason"], "Ready", "{running}");
    let (_, results) = draas
        .get(&format!(
            "/api/server/instances/{id}/queries/people/results"
        ))
        .await;
    let mut names: Vec<&str> = results["rows"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r["name"].as_str())
        .collect();
    names.sort();
    assert_eq!(names, vec!["Ann", "Ben"]);
    let (_, live) = draas
        .get(&format!("/api/server/instances/{id}/runtime-status"))
        .await;
    let query = &live["live"]["dataPlane"]["instances"][0]["queries"][0];
    assert_eq!(query["bootstrap"]["state"], "Done", "{live}");
    assert_eq!(query["bootstrap"]["elements"], 2, "{live}");
    assert_eq!(query["metrics"]["resultCount"], 2, "{live}");

    // The numbers on /metrics, by instance name, component and kind.
    let metrics: Value = wait_for("data plane metrics", Duration::from_secs(30), || async {
        let text = reqwest::get(draas.url("/metrics")).await.ok()?.text().await.ok()?;
        let has = |line: &str| text.lines().any(|l| l == line);
        (has(r#"draas_query_results{instance="boot",component="people",kind="query"} 2"#)
            && has(r#"draas_component_running{instance="boot",component="console",kind="reaction"} 1"#)
            && has(r#"draas_query_bootstrap_elements{instance="boot",component="people",kind="query"} 2"#))
        .then_some(Value::String(text))
    })
    .await;
    assert!(metrics.as_str().unwrap().contains(
        r#"draas_reaction_checkpoint_lag{instance="boot",component="console",kind="reaction"}"#
    ));
}
