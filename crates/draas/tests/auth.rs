//! API keys end to end: a real `draas up --require-auth` and `draas serve`
//! (auth on by default), keys made and revoked with `draas keys`, every
//! route of the router's own table tried without a key and with each role.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::Command;
use std::time::Duration;

use common::{cluster, create_key, Api, Draas, DRAAS};
use draas_core::auth::{Access, Role};
use reqwest::Method;
use serde_json::{json, Value};

/// A request to `path` with `method` (and a plausible body) as `api`; the
/// status only (an event stream is dropped once its headers came).
async fn status_of(api: &Api, method: &Method, path: &str) -> (u16, Value, Option<String>) {
    let mut request = api
        .client
        .request(method.clone(), api.url(path))
        .timeout(Duration::from_secs(30));
    if *method == Method::PATCH {
        request = request
            .header("content-type", "application/json-patch+json")
            .body("[]");
    } else if *method == Method::POST {
        request = request.json(&json!({}));
    }
    let response = request.send().await.expect("request");
    let status = response.status().as_u16();
    let challenge = response
        .headers()
        .get("www-authenticate")
        .map(|v| v.to_str().unwrap().to_string());
    let body = if status == 200 && path.starts_with("/api/events") && !path.contains("history") {
        Value::Null
    } else {
        response.json().await.unwrap_or(Value::Null)
    };
    (status, body, challenge)
}

fn keys(data: &std::path::Path, args: &[&str]) -> (bool, String, String) {
    let output = Command::new(DRAAS)
        .arg("keys")
        .args(args)
        .arg("--data-dir")
        .arg(data)
        .output()
        .expect("draas keys");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).to_string(),
        String::from_utf8_lossy(&output.stderr).to_string(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_needs_a_key_whose_role_allows_it() {
    let dir = tempfile::tempdir().unwrap();
    let draas = Draas::up_with_args(dir.path(), &["--require-auth"]).await;
    let data = draas.data.display().to_string();
    let ring = ["--data-dir", data.as_str()];
    let token =
        |role: &str| Api::with_token(draas.port, create_key(&ring, role, &format!("t-{role}")));
    let (viewer, operator, agent) = (token("viewer"), token("operator"), token("agent"));
    let anonymous = Api::new(draas.port);
    // One instance, so routes with {id} name a real one.
    let id = draas.create("guarded", None).await;

    let routes = draas_api::routes();
    assert!(routes.len() >= 20, "the table lists every route");
    for route in &routes {
        let path = route.path.replace("{id}", &id);
        let path = match path.as_str() {
            "/api/server/dead-letters" => format!("{path}?platformType=Process"),
            "/api/reconciler/lease" if route.method == Method::DELETE => format!("{path}?holder=x"),
            _ => path,
        };
        let what = format!("{} {}", route.method, route.path);

        let (status, body, challenge) = status_of(&anonymous, &route.method, &path).await;
        if route.access == Access::Public {
            assert!(status < 400, "{what} is public: {status} {body}");
        } else {
            assert_eq!(status, 401, "{what} without a key: {body}");
            assert_eq!(body["code"], "UNAUTHENTICATED", "{what}");
            assert!(
                challenge.unwrap_or_default().starts_with("Bearer"),
                "{what}"
            );
        }

        for (role, api) in [
            (Role::Viewer, &viewer),
            (Role::Operator, &operator),
            (Role::Agent, &agent),
        ] {
            // Mutations are tried only where they must be refused: the
            // allowed ones would change the state this test checks.
            let mutation = route.method != Method::GET;
            if mutation && role.may(route.access) {
                continue;
            }
            let (status, body, _) = status_of(api, &route.method, &path).await;
            if role.may(route.access) {
                assert!(
                    status != 401 && status != 403,
                    "{what} as {role}: {status} {body}"
                );
            } else {
                assert_eq!(status, 403, "{what} as {role}: {body}");
                assert_eq!(body["code"], "FORBIDDEN", "{what} as {role}");
                assert!(
                    body["detail"].as_str().unwrap().contains(role.as_str()),
                    "{what}: {body}"
                );
            }
        }
    }

    // Nothing the refused requests asked for happened.
    let (status, instance) = draas.get(&format!("/api/server/instances/{id}")).await;
    assert_eq!(status, 200);
    assert_eq!(instance["desiredState"], "Stopped", "{instance}");
    assert_eq!(instance["status"]["state"], "Created", "{instance}");
    assert_eq!(instance["generation"], 1, "{instance}");

    // The agent may push status, and nothing else.
    let (status, body) = agent
        .call(
            Method::POST,
            "/api/status/updates",
            Some(json!({
                "instanceId": id,
                "state": "Stopped",
                "source": "agent-test",
                "observedAt": chrono::Utc::now(),
            })),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    let (status, _) = agent.get("/api/server/instances").await;
    assert_eq!(status, 403);

    // A wrong secret for a real id, a malformed key, a basic header: 401.
    let mut forged = operator.token.clone().unwrap();
    forged.replace_range(forged.len() - 6.., "000000");
    for header in [
        format!("Bearer {forged}"),
        "Bearer draas_nothing".to_string(),
        "Basic YWRtaW46YWRtaW4=".to_string(),
    ] {
        let (status, body) = anonymous
            .call_with(
                Method::GET,
                "/api/server/instances",
                None,
                &[("authorization", header.clone())],
            )
            .await;
        assert_eq!(status, 401, "{header}: {body}");
        assert!(
            !body.to_string().contains(&forged[forged.len() - 20..]),
            "never echoed"
        );
    }

    // Every mutation is in the audit log: who, what, when, the result.
    let (status, audit) = draas.get("/api/audit?limit=1000").await;
    assert_eq!(status, 200, "{audit}");
    let entries = audit["entries"].as_array().unwrap();
    let has = |key: &str, method: &str, path: &str, status: u64, outcome: &str| {
        entries.iter().any(|e| {
            e["key"] == key
                && e["method"] == method
                && e["path"].as_str().unwrap().starts_with(path)
                && e["status"] == status
                && e["outcome"] == outcome
                && e["at"].is_string()
        })
    };
    assert!(
        has("test-admin-0", "POST", "/api/server/instances", 201, "ok"),
        "{audit}"
    );
    assert!(
        has(
            "t-viewer",
            "POST",
            &format!("/api/server/instances/{id}/start"),
            403,
            "refused"
        ),
        "{audit}"
    );
    assert!(
        has(
            "unauthenticated",
            "DELETE",
            &format!("/api/server/instances/{id}"),
            401,
            "refused"
        ),
        "{audit}"
    );
    assert!(
        has("t-agent", "POST", "/api/status/updates", 202, "ok"),
        "{audit}"
    );
    assert!(
        entries.iter().all(|e| e["method"] != "GET"),
        "reads are not audited"
    );
    let last = entries.last().unwrap()["cursor"].as_u64().unwrap();
    let (_, later) = draas.get(&format!("/api/audit?since={last}")).await;
    assert_eq!(later["entries"].as_array().unwrap().len(), 0, "{later}");
    let (status, _) = draas.get("/api/audit?since=yesterday").await;
    assert_eq!(status, 400);
    let (_, recent) = draas
        .get("/api/audit?since=2000-01-01T00:00:00Z&limit=1")
        .await;
    assert_eq!(recent["entries"].as_array().unwrap().len(), 1, "{recent}");

    // Listing shows names and roles, never secrets; revoking works at once.
    let (ok, listed, _) = keys(&draas.data, &["list"]);
    assert!(ok);
    for name in ["t-viewer", "t-operator", "t-agent", "test-admin-0"] {
        assert!(listed.contains(name), "{listed}");
    }
    let secret = operator
        .token
        .as_deref()
        .unwrap()
        .rsplit('_')
        .next()
        .unwrap();
    assert!(!listed.contains(secret));
    let stored = std::fs::read_to_string(draas.data.join("api-keys.json")).unwrap();
    assert!(!stored.contains(secret), "only hashes are stored");
    let (status, _) = viewer.get("/api/server/instances").await;
    assert_eq!(status, 200);
    let (ok, out, err) = keys(&draas.data, &["revoke", "t-viewer"]);
    assert!(ok, "{out}{err}");
    let (status, body) = viewer.get("/api/server/instances").await;
    assert_eq!(status, 401, "a revoked key stops working at once: {body}");
    let (ok, _, err) = keys(&draas.data, &["revoke", "t-viewer"]);
    assert!(!ok && err.contains("no API key"), "{err}");
    // Names are unique; bad names and roles are refused.
    let (ok, _, err) = keys(
        &draas.data,
        &["create", "--role", "viewer", "--name", "t-agent"],
    );
    assert!(!ok && err.contains("exists"), "{err}");
    let (ok, _, err) = keys(&draas.data, &["create", "--role", "root"]);
    assert!(!ok && err.contains("role"), "{err}");
    let (ok, _, err) = keys(
        &draas.data,
        &["create", "--role", "viewer", "--name", "Bad Name"],
    );
    assert!(!ok && err.contains("key name"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_requires_keys_by_default_and_its_reconciler_needs_none() {
    let dir = tempfile::tempdir().unwrap();
    // Servers outlive their worker: killed when the test ends.
    let _reaper = common::Reaper(dir.path().to_path_buf());
    let redis = cluster::redis(dir.path());
    let range = common::port_range();
    // The embedded reconciler calls its control plane in-process: no key.
    let serve = cluster::serve_with(
        dir.path(),
        "serve",
        &redis,
        &range,
        draas_testkit::free_port(),
        &["--reconcile", "on"],
    )
    .await;
    let (status, body) = Api::new(serve.api.port).get("/api/server/instances").await;
    assert_eq!(status, 401, "{body}");
    let (status, _) = Api::new(serve.api.port).get("/healthz").await;
    assert_eq!(status, 200);
    // Keys in Redis; each is held to its rate (100/s by default, bursts
    // of 200): a flood gets 429s with Retry-After, other keys do not.
    let flood = Api::with_token(
        serve.api.port,
        create_key(&["--redis", &redis.url()], "viewer", "flood"),
    );
    let answers = futures::future::join_all((0..400).map(|_| {
        let flood = flood.clone();
        async move {
            let response = flood
                .client
                .get(flood.url("/api/server/platforms"))
                .send()
                .await
                .unwrap();
            let retry = response.headers().get("retry-after").cloned();
            (response.status().as_u16(), retry)
        }
    }))
    .await;
    let limited: Vec<_> = answers.iter().filter(|(s, _)| *s == 429).collect();
    assert!(!limited.is_empty(), "a flood of 400 is limited");
    assert!(limited.iter().all(|(_, retry)| retry.is_some()));
    assert!(answers.iter().filter(|(s, _)| *s == 200).count() >= 150);
    let (status, _) = serve.get("/api/server/platforms").await;
    assert_eq!(status, 200, "another key is not held back");

    let _worker = cluster::WorkerProcess::start(dir.path(), "worker", &redis, &[]);
    cluster::wait_workers(&serve.api, 1).await;
    let id = serve.create("healed", None).await;
    let (status, body) = serve
        .post(
            &format!("/api/server/instances/{id}/start?wait=Running&timeout=60"),
            None,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let pid = common::server_pid(&body).expect("a pid");
    common::kill9(pid);
    // Within a few seconds: the event stream, not the 10 s full pass.
    let healed = serve
        .until(&id, Duration::from_secs(5), |i| {
            i["status"]["state"] == "Running" && common::server_pid(i) != Some(pid)
        })
        .await;
    assert_eq!(healed["status"]["restartCount"], 1, "{healed}");
    // Its step is in the audit log as the API would have recorded it. The
    // entry is written when the step's request ends, which may be after
    // the worker already reported the server running again.
    let step = format!("/api/server/instances/{id}/reconcile");
    draas_testkit::wait_for("the step in the audit log", Duration::from_secs(10), || {
        let (serve, step) = (&serve, &step);
        async move {
            let (status, audit) = serve.get("/api/audit?limit=1000").await;
            assert_eq!(status, 200, "{audit}");
            audit["entries"]
                .as_array()?
                .iter()
                .any(|e| {
                    e["key"] == "embedded-reconciler"
                        && e["role"] == "operator"
                        && e["method"] == "POST"
                        && e["path"] == step.as_str()
                        && e["status"] == 200
                        && e["outcome"] == "ok"
                })
                .then_some(())
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_request_with_an_idempotency_key_gets_the_first_answer() {
    let dir = tempfile::tempdir().unwrap();
    let draas = Draas::up(dir.path()).await;
    let send = |method: Method, path: &str, key: &str, body: Option<Value>| {
        let mut request = draas
            .client
            .request(method, draas.url(path))
            .header("idempotency-key", key);
        if let Some(body) = body {
            request = request.json(&body);
        }
        async move {
            let response = request.send().await.unwrap();
            let replayed = response.headers().get("idempotent-replayed").is_some();
            let status = response.status().as_u16();
            (
                status,
                response.json::<Value>().await.unwrap_or(Value::Null),
                replayed,
            )
        }
    };
    let body = json!({"name": "once", "platformType": "Process"});
    let (status, first, replayed) = send(
        Method::POST,
        "/api/server/instances",
        "create-once-1",
        Some(body.clone()),
    )
    .await;
    assert_eq!((status, replayed), (201, false), "{first}");
    let (status, again, replayed) = send(
        Method::POST,
        "/api/server/instances",
        "create-once-1",
        Some(body.clone()),
    )
    .await;
    assert_eq!((status, replayed), (201, true), "{again}");
    assert_eq!(again["instance"]["id"], first["instance"]["id"]);
    // Without the key the same body is a new request: the name is taken.
    let (status, _) = draas.post("/api/server/instances", Some(body)).await;
    assert_eq!(status, 409);
    // The key with another request is refused.
    let other = json!({"name": "twice", "platformType": "Process"});
    let (status, refused, _) = send(
        Method::POST,
        "/api/server/instances",
        "create-once-1",
        Some(other),
    )
    .await;
    assert_eq!(status, 422, "{refused}");
    assert_eq!(refused["code"], "IDEMPOTENCY_KEY_REUSED");
    let (_, list) = draas.get("/api/server/instances").await;
    assert_eq!(list["items"].as_array().unwrap().len(), 1, "{list}");

    // Lifecycle calls: a repeated start is answered, not executed again.
    let id = first["instance"]["id"].as_str().unwrap().to_string();
    let start = format!("/api/server/instances/{id}/start?wait=Running&timeout=60");
    let (status, started, _) = send(Method::POST, &start, "start-1", None).await;
    assert_eq!(status, 200, "{started}");
    let (status, again, replayed) = send(Method::POST, &start, "start-1", None).await;
    assert_eq!((status, replayed), (200, true));
    assert_eq!(again["runtime"], started["runtime"]);
    let (status, bad, _) = send(Method::POST, &start, &"x".repeat(300), None).await;
    assert_eq!(status, 400, "{bad}");
    assert_eq!(bad["code"], "INVALID_IDEMPOTENCY_KEY");
    let (status, _) = draas
        .post(
            &format!("/api/server/instances/{id}/stop?wait=Stopped&timeout=60"),
            None,
        )
        .await;
    assert_eq!(status, 200);
}
