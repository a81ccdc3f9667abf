//! API tests against the real router, in process: embedded store (in
//! memory), in-process bus, Drasi's own validator, and (where a worker is
//! needed) the real generic worker over a scripted fake driver. The real
//! Process platform is tested end to end in the `draas` crate.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use axum::Router;
use draas_api::{router, ControlPlane, ControlPlaneSettings};
use draas_bus::InProcessBus;
use draas_core::instance::PlatformType;
use draas_core::messages::ErrorCode;
use draas_core::ports::{MessageBus, StateStore};
use draas_store::EmbeddedStore;
use draas_testkit::fake::FakeDriver;
use draas_worker::{Worker, WorkerContext, WorkerSettings};
use futures::StreamExt;
use http_body_util::BodyExt;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

// === harness ===

struct Api {
    router: Router,
    bus: Arc<dyn MessageBus>,
    store: Arc<dyn StateStore>,
    driver: FakeDriver,
    shutdown: CancellationToken,
}

impl Drop for Api {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// The router over fresh in-memory backends, with a fake Process worker
/// when `with_worker`.
async fn api(with_worker: bool) -> Api {
    let store: Arc<dyn StateStore> = Arc::new(EmbeddedStore::in_memory().unwrap());
    let bus: Arc<dyn MessageBus> = Arc::new(InProcessBus::new());
    let driver = FakeDriver::new(PlatformType::Process, "fake");
    let shutdown = CancellationToken::new();
    if with_worker {
        let context = WorkerContext::new(
            WorkerSettings {
                worker_id: "fake".into(),
                host: "test".into(),
                heartbeat_interval: Duration::from_millis(200),
                heartbeat_ttl: Duration::from_secs(5),
                concurrency: 4,
                capacity: None,
                orphan_sweep_every: std::time::Duration::from_secs(30),
            },
            store.clone(),
            bus.clone(),
        );
        let worker = Worker::new(context, Arc::new(driver.clone()));
        tokio::spawn(worker.run(shutdown.clone()));
        let probe = store.clone();
        draas_testkit::wait_for("fake worker heartbeat", Duration::from_secs(5), || {
            let probe = probe.clone();
            async move {
                probe
                    .get("workers", "fake")
                    .await
                    .ok()
                    .flatten()
                    .map(|_| ())
            }
        })
        .await;
    }
    let settings = ControlPlaneSettings {
        command_timeout: Duration::from_secs(5),
        port_range: 31000..=31099,
        ..ControlPlaneSettings::default()
    };
    let cp = Arc::new(ControlPlane::new(
        store.clone(),
        bus.clone(),
        Arc::new(draas_drasi::validate::DrasiValidator),
        settings,
    ));
    Api {
        router: router(cp, std::sync::Arc::new(draas_api::Auth::optional(None))),
        bus,
        store,
        driver,
        shutdown,
    }
}

struct Reply {
    status: StatusCode,
    headers: axum::http::HeaderMap,
    body: Value,
}

impl Api {
    async fn send(&self, request: Request<Body>) -> Reply {
        let response = self.router.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        if status.is_client_error() || status.is_server_error() {
            assert_eq!(
                headers
                    .get(header::CONTENT_TYPE)
                    .map(|v| v.to_str().unwrap()),
                Some("application/problem+json"),
                "errors are problem+json: {status} {body}"
            );
            assert_eq!(body["status"], status.as_u16(), "{body}");
            assert!(
                body["code"].is_string() && body["detail"].is_string(),
                "{body}"
            );
        }
        Reply {
            status,
            headers,
            body,
        }
    }

    async fn request(
        &self,
        method: &str,
        uri: &str,
        content_type: Option<&str>,
        body: impl Into<Body>,
    ) -> Reply {
        let mut builder = Request::builder().method(method).uri(uri);
        if let Some(ct) = content_type {
            builder = builder.header(header::CONTENT_TYPE, ct);
        }
        self.send(builder.body(body.into()).unwrap()).await
    }

    async fn get(&self, uri: &str) -> Reply {
        self.request("GET", uri, None, Body::empty()).await
    }

    async fn post(&self, uri: &str, body: Value) -> Reply {
        self.request("POST", uri, Some("application/json"), body.to_string())
            .await
    }

    async fn patch(&self, uri: &str, ops: &str, if_match: Option<&str>) -> Reply {
        let mut builder = Request::builder()
            .method("PATCH")
            .uri(uri)
            .header(header::CONTENT_TYPE, "application/json-patch+json");
        if let Some(tag) = if_match {
            builder = builder.header(header::IF_MATCH, tag);
        }
        self.send(builder.body(Body::from(ops.to_string())).unwrap())
            .await
    }

    async fn create(&self, name: &str) -> String {
        let reply = self
            .post(
                "/api/server/instances",
                json!({"name": name, "platformType": "Process"}),
            )
            .await;
        assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.body);
        reply.body["instance"]["id"].as_str().unwrap().to_string()
    }

    /// The whole observable state: every instance and configuration.
    async fn snapshot(&self) -> Value {
        let list = self.get("/api/server/instances").await.body;
        let mut configs = Vec::new();
        for item in list["items"].as_array().unwrap() {
            let id = item["id"].as_str().unwrap();
            configs.push(
                self.get(&format!("/api/configuration/instances/{id}"))
                    .await
                    .body,
            );
        }
        json!({"list": list, "configs": configs})
    }
}

// === creating instances ===

#[tokio::test]
async fn create_returns_201_with_the_instance_and_its_server_configuration() {
    let api = api(false).await;
    let reply = api
        .post(
            "/api/server/instances",
            json!({"name": "orders", "description": "EU orders", "platformType": "AKS",
                   "serverConfiguration": {"shutdownTimeoutSeconds": 5}}),
        )
        .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.body);
    let instance = &reply.body["instance"];
    let id = instance["id"].as_str().unwrap();
    assert_eq!(
        reply.headers[header::LOCATION],
        format!("/api/server/instances/{id}")
    );
    assert_eq!(instance["platformType"], "Kubernetes");
    assert_eq!(instance["status"]["state"], "Created");
    assert_eq!(instance["desiredState"], "Stopped");
    assert_eq!(instance["generation"], 1);
    assert_eq!(
        reply.body["serverConfiguration"]["shutdownTimeoutSeconds"],
        5
    );
    assert_eq!(
        reply.body["serverConfiguration"]["kubernetes"],
        json!({}),
        "its platform's section, ready to be patched"
    );
    assert_eq!(
        instance["configuration"]["port"], 8080,
        "a pod has its own ports: drasi-server's default, nothing reserved"
    );

    let got = api.get(&format!("/api/server/instances/{id}")).await;
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(&got.body, instance);
    let changes = api.get("/api/status/recent-changes").await.body;
    assert_eq!(changes["changes"][0]["new"], "Created");
    assert_eq!(changes["changes"][0]["cursor"], 1);

    // Process servers share their host's ports: one is allocated from the
    // range and reserved, so a second instance gets another.
    let mut ports = Vec::new();
    for name in ["p1", "p2"] {
        let reply = api
            .post(
                "/api/server/instances",
                json!({"name": name, "platformType": "Process"}),
            )
            .await;
        assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.body);
        let port = reply.body["instance"]["configuration"]["port"]
            .as_u64()
            .unwrap();
        assert!(
            (31000..=31099).contains(&port),
            "allocated from the range: {port}"
        );
        ports.push(port);
    }
    assert_ne!(ports[0], ports[1]);
    // Two Kubernetes instances may both use 8080.
    let again = api
        .post(
            "/api/server/instances",
            json!({"name": "orders-2", "platformType": "Kubernetes", "configuration": {"port": 8080}}),
        )
        .await;
    assert_eq!(again.status, StatusCode::CREATED, "{}", again.body);
}

#[tokio::test]
async fn the_original_create_body_defaults_to_the_process_platform_and_names_address_instances() {
    let api = api(true).await;
    // The original design's body: a name and a description, nothing else.
    let reply = api
        .post(
            "/api/server/instances",
            json!({"name": "test1", "description": "from the original design"}),
        )
        .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.body);
    assert_eq!(reply.body["instance"]["platformType"], "Process");
    let id = reply.body["instance"]["id"].as_str().unwrap().to_string();

    // Wherever an id goes, the name does too.
    let by_name = api.get("/api/server/instances/test1").await;
    assert_eq!(by_name.status, StatusCode::OK, "{}", by_name.body);
    assert_eq!(by_name.body["id"], id.as_str());
    let started = api
        .post("/api/server/instances/test1/start", json!({}))
        .await;
    assert_eq!(started.status, StatusCode::OK, "{}", started.body);
    assert_eq!(started.body["status"]["state"], "Running");
    let status = api.get("/api/status/test1/status").await;
    assert_eq!(status.body["instanceId"], id.as_str());
    let config = api.get("/api/configuration/instances/test1").await;
    assert_eq!(config.status, StatusCode::OK);
    let patched = api
        .patch(
            "/api/configuration/instances/test1",
            r#"[{"op": "replace", "path": "/logLevel", "value": "debug"}]"#,
            None,
        )
        .await;
    assert_eq!(patched.status, StatusCode::OK, "{}", patched.body);
    let stopped = api
        .post("/api/server/instances/test1/stop", json!({}))
        .await;
    assert_eq!(stopped.body["status"]["state"], "Stopped");
    assert_eq!(api.driver.count(&format!("start {id}")), 1);

    // Unknown names are 404, malformed ones 400, before anything happens.
    let missing = api.get("/api/server/instances/no-such-instance").await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    let malformed = api.get("/api/server/instances/Not_A_Name").await;
    assert_eq!(malformed.status, StatusCode::BAD_REQUEST);
    let deleted = api
        .request("DELETE", "/api/server/instances/test1", None, Body::empty())
        .await;
    assert_eq!(deleted.status, StatusCode::NO_CONTENT);
    assert_eq!(
        api.get(&format!("/api/server/instances/{id}")).await.status,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn bad_creations_get_a_clear_4xx_and_change_nothing() {
    let api = api(false).await;
    api.create("taken").await;
    let before = api.snapshot().await;
    let cases: Vec<(Request<Body>, StatusCode, &str, &str)> = vec![
        (
            json_request("{\"name\": \"x\", ", "application/json"),
            StatusCode::BAD_REQUEST,
            "MALFORMED_JSON",
            "",
        ),
        (
            json_request(
                r#"{"name": "x", "platformType": "Process", "colour": "red"}"#,
                "application/json",
            ),
            StatusCode::BAD_REQUEST,
            "INVALID_BODY",
            "colour",
        ),
        (
            json_request(
                r#"{"name": "x", "platformType": "Mainframe"}"#,
                "application/json",
            ),
            StatusCode::BAD_REQUEST,
            "INVALID_BODY",
            "Mainframe",
        ),
        (
            json_request(r#"{"name": "x", "platformType": "Process"}"#, "text/plain"),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "UNSUPPORTED_MEDIA_TYPE",
            "",
        ),
        (
            json_request(
                r#"{"name": "../etc", "platformType": "Process"}"#,
                "application/json",
            ),
            StatusCode::UNPROCESSABLE_ENTITY,
            "INVALID_INSTANCE",
            "/name",
        ),
        (
            json_request(
                r#"{"name": "Big Name", "platformType": "Process"}"#,
                "application/json",
            ),
            StatusCode::UNPROCESSABLE_ENTITY,
            "INVALID_INSTANCE",
            "/name",
        ),
        (
            json_request(
                r#"{"name": "taken", "platformType": "Process"}"#,
                "application/json",
            ),
            StatusCode::CONFLICT,
            "NAME_TAKEN",
            "taken",
        ),
        (
            json_request(
                r#"{"name": "x", "platformType": "Process", "serverConfiguration": {"process": {"executablePath": "bin/../sh"}}}"#,
                "application/json",
            ),
            StatusCode::UNPROCESSABLE_ENTITY,
            "INVALID_INSTANCE",
            "/serverConfiguration/process/executablePath",
        ),
        (
            json_request(
                r#"{"name": "x", "platformType": "Process", "serverConfiguration": {"docker": {"image": "drasi:1"}}}"#,
                "application/json",
            ),
            StatusCode::UNPROCESSABLE_ENTITY,
            "INVALID_INSTANCE",
            "/serverConfiguration/docker",
        ),
        (
            json_request(
                r#"{"name": "x", "platformType": "Process", "serverConfiguration": {"executablePath": "/bin/sh"}}"#,
                "application/json",
            ),
            StatusCode::BAD_REQUEST,
            "INVALID_BODY",
            "executablePath",
        ),
        (
            json_request(
                r#"{"name": "x", "platformType": "Process", "configuration": {"queries": [{"id": "q", "query": "MATCH (n RETURN n"}]}}"#,
                "application/json",
            ),
            StatusCode::UNPROCESSABLE_ENTITY,
            "INVALID_CONFIGURATION",
            "/configuration/queries/0/query",
        ),
        (
            json_request(
                r#"{"name": "x", "platformType": "Process", "configuration": {"sources": [{"kind": "mock", "id": "s", "interval": 5}]}}"#,
                "application/json",
            ),
            StatusCode::UNPROCESSABLE_ENTITY,
            "INVALID_CONFIGURATION",
            "/configuration/sources/0/interval",
        ),
        (
            Request::builder()
                .method("POST")
                .uri("/api/server/instances")
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from(format!(
                    r#"{{"name": "x", "platformType": "Process", "description": "{}"}}"#,
                    "a".repeat(2 * 1024 * 1024)
                )))
                .unwrap(),
            StatusCode::PAYLOAD_TOO_LARGE,
            "BODY_TOO_LARGE",
            "",
        ),
        // Routes that take no configuration take small bodies only.
        (
            Request::builder()
                .method("POST")
                .uri("/api/status/updates")
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from(format!(
                    r#"{{"instanceId": "x", "state": "Running", "source": "s", "message": "{}"}}"#,
                    "a".repeat(100 * 1024)
                )))
                .unwrap(),
            StatusCode::PAYLOAD_TOO_LARGE,
            "BODY_TOO_LARGE",
            "",
        ),
    ];
    for (request, status, code, mention) in cases {
        let reply = api.send(request).await;
        assert_eq!(
            (reply.status, reply.body["code"].as_str().unwrap()),
            (status, code),
            "{}",
            reply.body
        );
        let text = reply.body.to_string();
        assert!(text.contains(mention), "{mention:?} in {text}");
    }
    assert_eq!(api.snapshot().await, before, "nothing changed");
}

fn json_request(body: &str, content_type: &str) -> Request<Body> {
    Request::builder()
        .method("POST")
        .uri("/api/server/instances")
        .header(header::CONTENT_TYPE, content_type)
        .body(Body::from(body.to_string()))
        .unwrap()
}

#[tokio::test]
async fn path_like_and_unknown_ids_are_refused() {
    let api = api(false).await;
    for (uri, status) in [
        (
            "/api/server/instances/..%2F..%2Fetc",
            StatusCode::BAD_REQUEST,
        ),
        ("/api/server/instances/UPPER", StatusCode::BAD_REQUEST),
        (
            "/api/configuration/instances/a%00b",
            StatusCode::BAD_REQUEST,
        ),
        ("/api/server/instances/i-0000", StatusCode::NOT_FOUND),
        ("/api/status/i-0000/status", StatusCode::NOT_FOUND),
        ("/api/server/instances?limit=0", StatusCode::BAD_REQUEST),
        ("/api/server/instances?colour=red", StatusCode::BAD_REQUEST),
        ("/api/nothing-here", StatusCode::NOT_FOUND),
    ] {
        let reply = api.get(uri).await;
        assert_eq!(reply.status, status, "{uri}: {}", reply.body);
    }
}

// === configuration ===

#[tokio::test]
async fn configuration_patches_are_validated_whole_and_atomic() {
    let api = api(false).await;
    let id = api.create("patched").await;
    let other = api.create("neighbour").await;
    let path = format!("/api/configuration/instances/{id}");
    let neighbour_port = api
        .get(&format!("/api/configuration/instances/{other}"))
        .await
        .body["port"]
        .clone();

    let good = r#"[{"op": "add", "path": "/sources/-", "value": {"kind": "mock", "id": "s"}},
                   {"op": "add", "path": "/queries/-", "value": {"id": "q", "autoStart": true, "queryLanguage": "Cypher",
                     "query": "MATCH (n:Generic) RETURN n.value AS v", "sources": [{"sourceId": "s"}]}}]"#;
    let reply = api.patch(&path, good, Some("\"1\"")).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert_eq!(reply.headers[header::ETAG], "\"2\"");
    assert_eq!(reply.body["queries"][0]["id"], "q");

    let before = api.snapshot().await;
    let cases = [
        ("{", StatusCode::BAD_REQUEST, "INVALID_PATCH", ""),
        (
            r#"[{"op": "explode", "path": "/port"}]"#,
            StatusCode::BAD_REQUEST,
            "INVALID_PATCH",
            "explode",
        ),
        (
            r#"[{"op": "remove", "path": "/queries/7"}]"#,
            StatusCode::UNPROCESSABLE_ENTITY,
            "PATCH_NOT_APPLICABLE",
            "/queries/7",
        ),
        (
            r#"[{"op": "test", "path": "/logLevel", "value": "debug"}]"#,
            StatusCode::CONFLICT,
            "PATCH_TEST_FAILED",
            "/logLevel",
        ),
        (
            r#"[{"op": "add", "path": "/colour", "value": 1}]"#,
            StatusCode::UNPROCESSABLE_ENTITY,
            "INVALID_CONFIGURATION",
            "colour",
        ),
        (
            r#"[{"op": "replace", "path": "/port", "value": "eighty"}]"#,
            StatusCode::UNPROCESSABLE_ENTITY,
            "INVALID_CONFIGURATION",
            "/port",
        ),
        (
            r#"[{"op": "replace", "path": "/queries/0/query", "value": "MATCH (n RETURN"}]"#,
            StatusCode::UNPROCESSABLE_ENTITY,
            "INVALID_CONFIGURATION",
            "/queries/0/query",
        ),
        (
            r#"[{"op": "replace", "path": "/queries/0/sources/0/sourceId", "value": "ghost"}]"#,
            StatusCode::UNPROCESSABLE_ENTITY,
            "INVALID_CONFIGURATION",
            "ghost",
        ),
        (
            r#"[{"op": "add", "path": "/sources/0/intervalMS", "value": 5}]"#,
            StatusCode::UNPROCESSABLE_ENTITY,
            "INVALID_CONFIGURATION",
            "/sources/0/intervalMS",
        ),
        (
            r#"[{"op": "add", "path": "/reactions/-", "value": {"kind": "log", "id": "q", "queries": ["q"]}}]"#,
            StatusCode::UNPROCESSABLE_ENTITY,
            "INVALID_CONFIGURATION",
            "duplicate id",
        ),
        (
            r#"[{"op": "add", "path": "/reactions/-", "value": {"kind": "teleport", "id": "t", "queries": ["q"]}}]"#,
            StatusCode::UNPROCESSABLE_ENTITY,
            "INVALID_CONFIGURATION",
            "teleport",
        ),
    ];
    for (ops, status, code, mention) in cases {
        let reply = api.patch(&path, ops, None).await;
        assert_eq!(
            (reply.status, reply.body["code"].as_str().unwrap()),
            (status, code),
            "{ops}: {}",
            reply.body
        );
        assert!(
            reply.body.to_string().contains(mention),
            "{mention:?} in {}",
            reply.body
        );
    }
    // A port another instance holds.
    let clash = format!(r#"[{{"op": "replace", "path": "/port", "value": {neighbour_port}}}]"#);
    let reply = api.patch(&path, &clash, None).await;
    assert_eq!(
        reply.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        reply.body
    );
    assert_eq!(reply.body["code"], "PORT_CONFLICT");
    assert_eq!(reply.body["errors"][0]["path"], "/port");
    assert!(
        reply.body["detail"]
            .as_str()
            .unwrap()
            .contains("'neighbour'"),
        "{}",
        reply.body
    );
    // A stale If-Match, a wrong media type.
    let reply = api
        .patch(
            &path,
            r#"[{"op": "replace", "path": "/logLevel", "value": "debug"}]"#,
            Some("\"1\""),
        )
        .await;
    assert_eq!(
        (reply.status, reply.body["code"].as_str()),
        (StatusCode::PRECONDITION_FAILED, Some("STALE_GENERATION"))
    );
    let reply = api.request("PATCH", &path, Some("text/plain"), "[]").await;
    assert_eq!(reply.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let reply = api.patch(&path, "[]", Some("yesterday")).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);

    assert_eq!(api.snapshot().await, before, "nothing changed");
    let reply = api.get(&path).await;
    assert_eq!(reply.headers[header::ETAG], "\"2\"");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_patches_lose_no_update_and_if_match_lets_exactly_one_win() {
    let api = Arc::new(api(false).await);
    let id = api.create("busy").await;
    let path = format!("/api/configuration/instances/{id}");
    let patches = (0..20).map(|i| {
        let api = api.clone();
        let path = path.clone();
        async move {
            let op = format!(r#"[{{"op": "add", "path": "/sources/-", "value": {{"kind": "mock", "id": "s{i}"}}}}]"#);
            api.patch(&path, &op, None).await.status
        }
    });
    let statuses = futures::future::join_all(patches).await;
    assert!(
        statuses.iter().all(|s| *s == StatusCode::OK),
        "{statuses:?}"
    );
    let reply = api.get(&path).await;
    assert_eq!(
        reply.body["sources"].as_array().unwrap().len(),
        20,
        "every add kept"
    );
    assert_eq!(reply.headers[header::ETAG], "\"21\"");

    let racers = (0..2).map(|i| {
        let api = api.clone();
        let path = path.clone();
        async move {
            let op = format!(
                r#"[{{"op": "replace", "path": "/logLevel", "value": "{}"}}]"#,
                ["debug", "warn"][i]
            );
            api.patch(&path, &op, Some("\"21\"")).await.status
        }
    });
    let mut statuses = futures::future::join_all(racers).await;
    statuses.sort();
    assert_eq!(
        statuses,
        vec![StatusCode::OK, StatusCode::PRECONDITION_FAILED]
    );
}

#[tokio::test]
async fn server_configuration_has_get_and_patch_with_etags() {
    let api = api(false).await;
    let id = api.create("served").await;
    let path = format!("/api/server/instances/{id}/server-configuration");
    let reply = api.get(&path).await;
    assert_eq!(reply.body["startTimeoutSeconds"], 20);
    let reply = api
        .patch(
            &path,
            r#"[{"op": "add", "path": "/environment", "value": {"DB_PASSWORD": "x"}}]"#,
            Some("\"1\""),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert_eq!(reply.headers[header::ETAG], "\"2\"");
    let reply = api
        .patch(
            &path,
            r#"[{"op": "replace", "path": "/shutdownTimeoutSeconds", "value": 0}]"#,
            None,
        )
        .await;
    assert_eq!(reply.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(reply.body["errors"][0]["path"], "/shutdownTimeoutSeconds");
}

// === lifecycle through a worker ===

#[tokio::test]
async fn start_stop_restart_and_delete_go_through_the_worker() {
    let api = api(true).await;
    let id = api.create("cycled").await;
    let reply = api
        .post(&format!("/api/server/instances/{id}/start"), json!({}))
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert_eq!(reply.body["status"]["state"], "Running");
    assert_eq!(reply.body["desiredState"], "Running");
    let reply = api
        .post(&format!("/api/server/instances/{id}/restart"), json!({}))
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    let reply = api
        .post(&format!("/api/server/instances/{id}/stop"), json!({}))
        .await;
    assert_eq!(reply.body["status"]["state"], "Stopped");
    let reply = api
        .get(&format!("/api/server/instances/{id}/logs?tail=3"))
        .await;
    assert_eq!(reply.body["lines"], json!(["line 0", "line 1", "line 2"]));
    let reply = api
        .request(
            "DELETE",
            &format!("/api/server/instances/{id}"),
            None,
            Body::empty(),
        )
        .await;
    assert_eq!(reply.status, StatusCode::NO_CONTENT);
    let calls = api.driver.calls();
    assert_eq!(
        calls,
        vec![
            format!("start {id} g1"),
            format!("stop {id}"),
            format!("start {id} g1"),
            format!("stop {id}"),
            format!("logs {id}"),
            format!("delete {id}")
        ]
    );
    // The name is free again.
    api.create("cycled").await;
}

#[tokio::test]
async fn worker_errors_map_to_http_statuses_and_missing_workers_fail_fast() {
    let api = api(true).await;
    let id = api.create("doomed").await;
    api.driver.script.lock().unwrap().fail_start = Some(ErrorCode::PortInUse);
    let reply = api
        .post(&format!("/api/server/instances/{id}/start"), json!({}))
        .await;
    assert_eq!(
        (reply.status, reply.body["code"].as_str()),
        (StatusCode::CONFLICT, Some("PORT_IN_USE"))
    );
    let status = api.get(&format!("/api/status/{id}/status")).await.body;
    assert_eq!(status["status"]["state"], "Failed");
    assert_eq!(status["status"]["reason"], "PortInUse");

    let docker = api
        .post(
            "/api/server/instances",
            json!({"name": "boxed", "platformType": "Docker"}),
        )
        .await
        .body["instance"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let started = std::time::Instant::now();
    let reply = api
        .post(&format!("/api/server/instances/{docker}/start"), json!({}))
        .await;
    assert_eq!(
        (reply.status, reply.body["code"].as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, Some("NO_LIVE_WORKER"))
    );
    assert!(started.elapsed() < Duration::from_secs(1), "fails fast");
    let platforms = api.get("/api/server/platforms").await.body;
    assert_eq!(platforms["platforms"][0]["available"], true);
    assert_eq!(platforms["platforms"][0]["workers"][0]["workerId"], "fake");
    assert_eq!(platforms["platforms"][1]["available"], false);
}

// === status ===

#[tokio::test]
async fn external_status_updates_are_checked_and_buffered() {
    let api = api(false).await;
    let id = api.create("watched").await;
    let now = chrono::Utc::now();
    let update = |state: &str, at: chrono::DateTime<chrono::Utc>| json!({"instanceId": id, "state": state, "source": "probe-1", "observedAt": at, "message": "seen by probe"});
    let reply = api
        .post("/api/status/updates", update("Running", now))
        .await;
    assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.body);
    assert_eq!(reply.body["source"], "external:probe-1");
    let cursor = reply.body["cursor"].as_u64().unwrap();
    let reply = api
        .post(
            "/api/status/updates",
            update("Failed", now - chrono::Duration::seconds(10)),
        )
        .await;
    assert_eq!(
        (reply.status, reply.body["code"].as_str()),
        (StatusCode::CONFLICT, Some("OUT_OF_ORDER"))
    );
    let mut unknown = update("Running", now);
    unknown["instanceId"] = json!("i-nope");
    let reply = api.post("/api/status/updates", unknown).await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    let mut bad = update("Running", now);
    bad["source"] = json!("../../x");
    assert_eq!(
        api.post("/api/status/updates", bad).await.status,
        StatusCode::UNPROCESSABLE_ENTITY
    );

    let status = api.get(&format!("/api/status/{id}/status")).await.body;
    assert_eq!(status["status"]["state"], "Running");
    let page = api
        .get(&format!("/api/status/recent-changes?since={}", cursor - 1))
        .await
        .body;
    assert_eq!(page["changes"].as_array().unwrap().len(), 1, "{page}");
    assert_eq!(page["changes"][0]["new"], "Running");
    assert_eq!(page["cursor"], cursor);
    let empty = api
        .get(&format!("/api/status/recent-changes?since={cursor}"))
        .await
        .body;
    assert_eq!(empty["changes"], json!([]));
    assert_eq!(empty["cursor"], cursor);
}

#[tokio::test]
async fn the_event_stream_carries_configuration_and_status_changes() {
    let api = api(false).await;
    let id = api.create("streamed").await;
    let mut events = api
        .bus
        .subscribe(&draas_core::messages::EVENT_CHANNELS)
        .await
        .unwrap();
    let response = api
        .router
        .clone()
        .oneshot(
            Request::builder()
                .uri("/api/events")
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(
        response.headers()[header::CONTENT_TYPE],
        "text/event-stream"
    );
    let mut body = response.into_body().into_data_stream();
    let reply = api
        .patch(
            &format!("/api/configuration/instances/{id}"),
            r#"[{"op": "replace", "path": "/logLevel", "value": "warn"}]"#,
            None,
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    let chunk = tokio::time::timeout(Duration::from_secs(5), body.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&chunk);
    assert!(text.contains("event: ConfigurationChanged"), "{text}");
    assert!(
        text.contains(&id) && text.contains("\"generation\":2"),
        "{text}"
    );
    let bus_event = tokio::time::timeout(Duration::from_secs(5), events.next())
        .await
        .unwrap()
        .unwrap();
    assert!(matches!(
        bus_event.envelope.event,
        draas_core::messages::Event::ConfigurationChanged { generation: 2, .. }
    ));
}

#[tokio::test]
async fn secrets_in_the_environment_reach_the_worker_but_never_a_response() {
    let api = api(true).await;
    let reply = api
        .post(
            "/api/server/instances",
            json!({"name": "secretive", "platformType": "Process",
                   "serverConfiguration": {"environment": {"DB_PASSWORD": "hunter2"}}}),
        )
        .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.body);
    let id = reply.body["instance"]["id"].as_str().unwrap().to_string();
    let responses = vec![
        reply.body.to_string(),
        api.get(&format!("/api/server/instances/{id}"))
            .await
            .body
            .to_string(),
        api.get("/api/server/instances").await.body.to_string(),
        api.get(&format!("/api/server/instances/{id}/server-configuration"))
            .await
            .body
            .to_string(),
        api.patch(
            &format!("/api/server/instances/{id}/server-configuration"),
            r#"[{"op": "add", "path": "/environment/API_TOKEN", "value": "s3cr3t"}]"#,
            None,
        )
        .await
        .body
        .to_string(),
        api.post(&format!("/api/server/instances/{id}/start"), json!({}))
            .await
            .body
            .to_string(),
    ];
    for text in &responses {
        assert!(
            !text.contains("hunter2") && !text.contains("s3cr3t"),
            "leaked: {text}"
        );
    }
    assert!(
        responses[3].contains(r#""DB_PASSWORD":"********""#),
        "{}",
        responses[3]
    );
    assert!(
        responses[5].contains(r#""state":"Running""#),
        "{}",
        responses[5]
    );
    let seen = api.driver.script.lock().unwrap().environment.clone();
    assert_eq!(
        seen.get("DB_PASSWORD").map(String::as_str),
        Some("hunter2"),
        "the worker gets the real value: {seen:?}"
    );
    assert_eq!(seen.get("API_TOKEN").map(String::as_str), Some("s3cr3t"));
}

#[tokio::test]
async fn no_json_patch_operation_reads_a_secret_back_out() {
    let api = api(false).await;
    let reply = api
        .post(
            "/api/server/instances",
            json!({"name": "vault", "platformType": "Process",
                   "serverConfiguration": {"environment": {"PW": "hunter2"}}}),
        )
        .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.body);
    let id = reply.body["instance"]["id"].as_str().unwrap().to_string();
    let path = format!("/api/server/instances/{id}/server-configuration");
    let before = api.snapshot().await;

    // Each op that would read the secret: refused, naming the op member,
    // and nothing changes (a later op does not sneak through either).
    let attacks = [
        (
            r#"[{"op": "test", "path": "/environment/PW", "value": "hunter2"}]"#,
            "/0/path",
        ),
        (
            r#"[{"op": "test", "path": "/environment/PW", "value": "wrong"}]"#,
            "/0/path",
        ),
        (
            r#"[{"op": "test", "path": "/environment", "value": {"PW": "hunter2"}}]"#,
            "/0/path",
        ),
        (r#"[{"op": "test", "path": "", "value": {}}]"#, "/0/path"),
        (
            r#"[{"op": "copy", "from": "/environment/PW", "path": "/process/executablePath"}]"#,
            "/0/from",
        ),
        (
            r#"[{"op": "copy", "from": "/environment/PW", "path": "/process/arguments/-"}]"#,
            "/0/from",
        ),
        (
            r#"[{"op": "move", "from": "/environment/PW", "path": "/process/arguments/0"}]"#,
            "/0/from",
        ),
        (
            r#"[{"op": "copy", "from": "/environment", "path": "/process/arguments"}]"#,
            "/0/from",
        ),
        (
            r#"[{"op": "copy", "from": "", "path": "/process/arguments/-"}]"#,
            "/0/from",
        ),
        (
            r#"[{"op": "add", "path": "/startTimeoutSeconds", "value": 30},
             {"op": "move", "from": "/environment/PW", "path": "/shutdownTimeoutSeconds"}]"#,
            "/1/from",
        ),
    ];
    for (ops, member) in attacks {
        let reply = api.patch(&path, ops, None).await;
        assert_eq!(
            reply.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{ops}: {}",
            reply.body
        );
        assert_eq!(reply.body["code"], "SECRET_NOT_READABLE", "{ops}");
        assert_eq!(
            reply.body["errors"][0]["path"], member,
            "{ops}: {}",
            reply.body
        );
        assert!(
            !reply.body.to_string().contains("hunter2"),
            "{}",
            reply.body
        );
    }
    assert_eq!(api.snapshot().await, before, "nothing changed");

    // A secret moved or copied within the environment onto a place of
    // another type: refused, and the refusal never quotes it.
    for ops in [
        r#"[{"op": "copy", "from": "/environment/PW", "path": "/environment"}]"#,
        r#"[{"op": "move", "from": "/environment/PW", "path": "/environment"}]"#,
    ] {
        let reply = api.patch(&path, ops, None).await;
        assert_eq!(
            reply.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{ops}: {}",
            reply.body
        );
        assert!(
            !reply.body.to_string().contains("hunter2"),
            "{ops}: {}",
            reply.body
        );
    }
    assert_eq!(api.snapshot().await, before, "nothing changed");

    // What may be done with a secret: add, replace, rename, remove.
    for ops in [
        r#"[{"op": "add", "path": "/environment/TOKEN", "value": "t0k3n"}]"#,
        r#"[{"op": "replace", "path": "/environment/PW", "value": "new-pw"}]"#,
        r#"[{"op": "move", "from": "/environment/TOKEN", "path": "/environment/API_TOKEN"}]"#,
        r#"[{"op": "remove", "path": "/environment/API_TOKEN"}]"#,
        r#"[{"op": "add", "path": "/process/arguments", "value": ["--verbose"]},
            {"op": "test", "path": "/process/arguments/0", "value": "--verbose"}]"#,
    ] {
        let reply = api.patch(&path, ops, None).await;
        assert_eq!(reply.status, StatusCode::OK, "{ops}: {}", reply.body);
        let text = reply.body.to_string();
        assert!(
            !text.contains("new-pw") && !text.contains("t0k3n"),
            "{text}"
        );
    }
    let shown = api.get(&path).await.body;
    assert_eq!(shown["environment"], json!({"PW": "********"}));
    assert_eq!(shown["process"]["arguments"], json!(["--verbose"]));
}

/// Reads server-sent events from `body` until `n` have arrived: (id, event
/// type, data) each.
async fn sse_events(
    body: &mut (impl futures::Stream<Item = Result<bytes::Bytes, axum::Error>> + Unpin),
    n: usize,
) -> Vec<(String, String, Value)> {
    let mut text = String::new();
    let mut events = Vec::new();
    while events.len() < n {
        let chunk = tokio::time::timeout(Duration::from_secs(5), body.next())
            .await
            .expect("an event in time")
            .expect("the stream is open")
            .expect("a chunk");
        text.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = text.find("\n\n") {
            let frame: String = text.drain(..end + 2).collect();
            let field = |name: &str| {
                frame
                    .lines()
                    .find_map(|l| l.strip_prefix(name))
                    .map(|v| v.trim().to_string())
            };
            if let (Some(id), Some(kind), Some(data)) =
                (field("id:"), field("event:"), field("data:"))
            {
                events.push((id, kind, serde_json::from_str(&data).expect("JSON data")));
            }
        }
    }
    events
}

#[tokio::test]
async fn a_client_that_reconnects_with_last_event_id_misses_nothing_and_gets_nothing_twice() {
    let api = api(false).await;
    let id = api.create("resumed").await;
    let path = format!("/api/configuration/instances/{id}");
    let level = |generation: u64| {
        let value = if generation.is_multiple_of(2) {
            "warn"
        } else {
            "debug"
        };
        format!(r#"[{{"op": "replace", "path": "/logLevel", "value": "{value}"}}]"#)
    };
    let open = |last: Option<String>| {
        let router = api.router.clone();
        async move {
            let mut request = Request::builder().uri("/api/events");
            if let Some(last) = last {
                request = request.header("last-event-id", last);
            }
            router
                .oneshot(request.body(Body::empty()).unwrap())
                .await
                .unwrap()
        }
    };
    let configuration_generation = |data: &Value| data["event"]["generation"].as_u64();

    let first = open(None).await;
    let mut body = first.into_body().into_data_stream();
    assert_eq!(
        api.patch(&path, &level(2), None).await.status,
        StatusCode::OK
    );
    let seen = sse_events(&mut body, 1).await;
    assert_eq!(seen[0].1, "ConfigurationChanged");
    assert_eq!(configuration_generation(&seen[0].2), Some(2));
    let last_id = seen[0].0.clone();
    drop(body);

    // Disconnected: two changes happen.
    for generation in [3, 4] {
        assert_eq!(
            api.patch(&path, &level(generation), None).await.status,
            StatusCode::OK
        );
    }
    let resumed = open(Some(last_id.clone())).await;
    assert_eq!(resumed.status(), StatusCode::OK);
    let mut body = resumed.into_body().into_data_stream();
    let missed = sse_events(&mut body, 2).await;
    assert_eq!(
        missed
            .iter()
            .map(|e| configuration_generation(&e.2))
            .collect::<Vec<_>>(),
        vec![Some(3), Some(4)],
        "the missed events first, in order"
    );
    assert!(
        missed.iter().all(|e| e.0 != last_id),
        "each with its own cursor"
    );
    // Then live ones, none twice.
    assert_eq!(
        api.patch(&path, &level(5), None).await.status,
        StatusCode::OK
    );
    let live = sse_events(&mut body, 1).await;
    assert_eq!(configuration_generation(&live[0].2), Some(5));
    assert!(!missed.iter().any(|e| e.0 == live[0].0));

    let bad = api
        .send(
            Request::builder()
                .uri("/api/events")
                .header("last-event-id", "yesterday")
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    assert_eq!(bad.body["code"], "INVALID_CURSOR");
}

#[tokio::test]
async fn readiness_checks_the_store_and_the_bus() {
    let api = api(false).await;
    let ready = api.get("/readyz").await;
    assert_eq!(ready.status, StatusCode::OK);
    assert_eq!(
        ready.body,
        json!({"status": "ready", "store": "ok", "bus": "ok"})
    );
}

/// An instance record owned by worker `owner`, running.
async fn running_instance(
    store: &Arc<dyn StateStore>,
    name: &str,
    platform: PlatformType,
    owner: &str,
) -> String {
    use draas_core::instance::*;
    let id = InstanceId::generate();
    let now = chrono::Utc::now();
    let instance = Instance {
        id: id.clone(),
        name: name.into(),
        description: String::new(),
        platform_type: platform,
        created_at: now,
        updated_at: now,
        desired_state: DesiredState::Running,
        generation: 1,
        server_configuration: ServerConfiguration::for_platform(platform),
        configuration: draas_core::config::DrasiServerConfig::empty("0.0.0.0", 8080),
        restart_policy: Default::default(),
        update_strategy: Default::default(),
        status: InstanceStatus {
            state: ActualState::Running,
            ..InstanceStatus::created(now)
        },
        runtime: Some(RuntimeInfo {
            worker_id: owner.into(),
            scope: "host-a".into(),
            handle: None,
            host: "host-a".into(),
            port: 8080,
            endpoint: "http://host-a:8080".into(),
            started_at: None,
            last_exit_code: None,
        }),
        deleted_at: None,
    };
    store
        .apply(draas_core::records::create_writes(&instance).unwrap())
        .await
        .unwrap();
    id.to_string()
}

#[tokio::test(start_paused = true)]
async fn the_watchdog_makes_a_silent_workers_instances_unknown_only_where_the_platform_says_so() {
    use draas_core::ports::store::{JsonStore, Precondition};
    let api = api(false).await;
    // A worker whose last heartbeat is a minute old.
    let silent = draas_core::messages::WorkerInfo {
        worker_id: "silent".into(),
        platform: PlatformType::Process,
        host: "host-a".into(),
        scope: "host-a".into(),
        version: "test".into(),
        platform_version: None,
        started_at: chrono::Utc::now() - chrono::Duration::minutes(10),
        last_heartbeat: chrono::Utc::now() - chrono::Duration::minutes(1),
        ttl_seconds: 6,
        instances: 2,
        capacity: None,
    };
    api.store
        .put_json("workers", "silent", &silent, Precondition::None)
        .await
        .unwrap();
    let process = running_instance(&api.store, "proc", PlatformType::Process, "silent").await;
    let docker = running_instance(&api.store, "cont", PlatformType::Docker, "silent").await;
    let pod = running_instance(&api.store, "pod", PlatformType::Kubernetes, "silent").await;

    let control = Arc::new(ControlPlane::new(
        api.store.clone(),
        api.bus.clone(),
        Arc::new(draas_drasi::validate::DrasiValidator),
        ControlPlaneSettings::default(),
    ));
    let stop = CancellationToken::new();
    let watchdog = tokio::spawn(draas_api::watchdog::run(
        control,
        Duration::from_secs(2),
        stop.clone(),
    ));
    // Paused time: this sleep lets the watchdog tick a few times at once.
    tokio::time::sleep(Duration::from_secs(5)).await;
    stop.cancel();
    watchdog.await.unwrap();

    let state = |id: String| {
        let api = &api;
        async move { api.get(&format!("/api/status/{id}/status")).await.body }
    };
    let process = state(process).await;
    assert_eq!(process["status"]["state"], "Unknown", "{process}");
    assert_eq!(process["status"]["reason"], "WorkerUnavailable");
    assert_eq!(state(docker).await["status"]["state"], "Unknown");
    let pod = state(pod).await;
    assert_eq!(
        pod["status"]["state"], "Running",
        "a Deployment does not depend on its worker: {pod}"
    );
}

#[tokio::test]
async fn allocation_skips_ports_held_on_the_workers_host_when_the_control_plane_can_see_it() {
    let store: Arc<dyn StateStore> = Arc::new(EmbeddedStore::in_memory().unwrap());
    let bus: Arc<dyn MessageBus> = Arc::new(InProcessBus::new());
    // As `draas up` wires it, with a host where 31000 and 31001 are taken.
    let settings = ControlPlaneSettings {
        port_range: 31000..=31099,
        process_port_probe: Some(Arc::new(|port| port > 31001)),
        ..ControlPlaneSettings::default()
    };
    let cp = Arc::new(ControlPlane::new(
        store,
        bus,
        Arc::new(draas_drasi::validate::DrasiValidator),
        settings,
    ));
    let response = router(cp, std::sync::Arc::new(draas_api::Auth::optional(None)))
        .oneshot(
            Request::builder()
                .method("POST")
                .uri("/api/server/instances")
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from(r#"{"name": "probed"}"#))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    let body: Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(body["instance"]["configuration"]["port"], 31002);
}

/// Bodies a person writes may be YAML: the same document, the same checks,
/// and every problem names its line in the text sent.
#[tokio::test]
async fn yaml_bodies_are_accepted_and_their_problems_name_lines() {
    let api = api(false).await;

    // A create in YAML; the refusal points at line 7 (the query).
    let bad = "name: from-yaml\nplatformType: Process\nconfiguration:\n  queries:\n  - id: q\n    sources: [{sourceId: nowhere}]\n    query: MATCH (n) RETURN n\n";
    let reply = api
        .request(
            "POST",
            "/api/server/instances",
            Some("application/yaml"),
            bad,
        )
        .await;
    assert_eq!(
        reply.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        reply.body
    );
    let errors = reply.body["errors"].as_array().unwrap();
    assert!(
        errors.iter().any(|e| e["path"]
            .as_str()
            .unwrap()
            .starts_with("/configuration/queries/0")
            && e["line"].as_u64().is_some_and(|l| (5..=7).contains(&l))),
        "{}",
        reply.body
    );
    assert_eq!(api.get("/api/server/instances").await.body["total"], 0);

    // Not YAML at all: 400 with the line.
    let reply = api
        .request(
            "POST",
            "/api/server/instances",
            Some("application/yaml"),
            "name: x\n  bad: [indent\n",
        )
        .await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{}", reply.body);
    assert_eq!(reply.body["code"], "MALFORMED_YAML");
    assert!(
        reply.body["errors"][0]["line"].as_u64().is_some(),
        "{}",
        reply.body
    );
    // An unknown field: its line too.
    let reply = api
        .request(
            "POST",
            "/api/server/instances",
            Some("application/yaml"),
            "name: x\nplatfromType: Docker\n",
        )
        .await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{}", reply.body);
    assert_eq!(reply.body["errors"][0]["line"], 2, "{}", reply.body);

    // A good create in YAML.
    let good = "name: from-yaml\nplatformType: Process\nconfiguration:\n  sources:\n  - kind: mock\n    id: counter\n    dataType: {type: counter}\n  queries:\n  - id: q\n    sources: [{sourceId: counter}]\n    query: MATCH (c:Counter) RETURN c.value AS value\n";
    let reply = api
        .request(
            "POST",
            "/api/server/instances",
            Some("application/yaml"),
            good,
        )
        .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.body);
    let id = reply.body["instance"]["id"].as_str().unwrap().to_string();

    // The configuration as YAML, with its ETag; it parses back to the JSON.
    let response = api
        .router
        .clone()
        .oneshot(
            Request::builder()
                .uri(format!("/api/configuration/instances/{id}"))
                .header(header::ACCEPT, "application/yaml")
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()[header::CONTENT_TYPE], "application/yaml");
    let etag = response.headers()[header::ETAG]
        .to_str()
        .unwrap()
        .to_string();
    let text = String::from_utf8(
        response
            .into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .to_vec(),
    )
    .unwrap();
    let as_json = api
        .get(&format!("/api/configuration/instances/{id}"))
        .await
        .body;
    let parsed: Value = draas_core::config::parse_yaml_as(&text).unwrap();
    assert_eq!(parsed, as_json, "{text}");

    // PUT replaces it: a refused one names its line and changes nothing...
    let put = |body: String, tag: Option<String>| {
        let mut builder = Request::builder()
            .method("PUT")
            .uri(format!("/api/configuration/instances/{id}"))
            .header(header::CONTENT_TYPE, "application/yaml");
        if let Some(tag) = tag {
            builder = builder.header(header::IF_MATCH, tag);
        }
        builder.body(Body::from(body)).unwrap()
    };
    let refused = text.replace(
        "MATCH (c:Counter) RETURN c.value AS value",
        "THIS IS NOT CYPHER",
    );
    assert_ne!(refused, text, "the query is in the YAML as written");
    let reply = api.send(put(refused.clone(), Some(etag.clone()))).await;
    assert_eq!(
        reply.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        reply.body
    );
    let line = reply.body["errors"][0]["line"].as_u64().unwrap() as usize;
    assert!(
        refused.lines().nth(line - 1).unwrap().contains("query:"),
        "line {line} of\n{refused}\n{}",
        reply.body
    );
    assert_eq!(
        api.get(&format!("/api/configuration/instances/{id}"))
            .await
            .body,
        as_json
    );
    // ...an accepted one is the next generation; a stale ETag is refused.
    let changed = text.replace("AS value", "AS counted");
    let reply = api.send(put(changed.clone(), Some(etag.clone()))).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert_eq!(reply.headers[header::ETAG], "\"2\"");
    assert!(reply.body["queries"][0]["query"]
        .as_str()
        .unwrap()
        .contains("AS counted"));
    let reply = api.send(put(changed, Some(etag))).await;
    assert_eq!(
        reply.status,
        StatusCode::PRECONDITION_FAILED,
        "{}",
        reply.body
    );
    // Query results: only queries of the configuration, only when it runs.
    let reply = api
        .get(&format!("/api/server/instances/{id}/queries/nope/results"))
        .await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND, "{}", reply.body);
    assert_eq!(reply.body["code"], "NO_SUCH_QUERY");
    let reply = api
        .get(&format!("/api/server/instances/{id}/queries/q/results"))
        .await;
    assert_eq!(reply.status, StatusCode::CONFLICT, "{}", reply.body);
    assert_eq!(reply.body["code"], "INVALID_STATE");
    let reply = api
        .get(&format!("/api/server/instances/{id}/queries/a%2Fb/results"))
        .await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{}", reply.body);
    assert_eq!(reply.body["code"], "INVALID_QUERY_ID");

    // A document without host and port keeps the ones chosen before.
    let reply = api.send(put("logLevel: debug\n".into(), None)).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert_eq!(reply.body["port"], as_json["port"]);
    assert_eq!(reply.body["host"], as_json["host"]);
    assert_eq!(reply.body["logLevel"], "debug");
    assert_eq!(reply.body["queries"], json!([]));
}

/// The dashboard's files: public, with a policy that allows no inline code
/// and no other origin.
#[tokio::test]
async fn the_dashboard_is_served_with_a_strict_content_security_policy() {
    let api = api(false).await;
    for (path, media) in [
        ("/", "text/html"),
        ("/instances/some-name", "text/html"),
        ("/ui/app.js", "text/javascript"),
        ("/ui/app.css", "text/css"),
    ] {
        let response = api
            .router
            .clone()
            .oneshot(Request::builder().uri(path).body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{path}");
        let headers = response.headers();
        assert!(
            headers[header::CONTENT_TYPE]
                .to_str()
                .unwrap()
                .starts_with(media),
            "{path}"
        );
        let policy = headers[header::CONTENT_SECURITY_POLICY].to_str().unwrap();
        assert!(
            policy.contains("script-src 'self'") && !policy.contains("unsafe"),
            "{policy}"
        );
        assert!(policy.contains("frame-ancestors 'none'"), "{policy}");
        assert_eq!(headers[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
    }
    let page = api
        .router
        .clone()
        .oneshot(Request::builder().uri("/").body(Body::empty()).unwrap())
        .await
        .unwrap();
    let html = String::from_utf8(
        page.into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .to_vec(),
    )
    .unwrap();
    assert!(html.contains(r#"<script src="/ui/app.js""#), "{html}");
    assert!(!html.contains("<script>"), "no inline script: {html}");
}

/// A rolling upgrade: an instance record a newer control plane wrote, with
/// fields this version does not know, is read, started and changed; a
/// request from a user with such a field is refused, naming it.
#[tokio::test]
async fn a_record_of_a_newer_version_is_served_and_a_users_unknown_field_is_refused() {
    use draas_core::ports::store::{JsonStore, Precondition};
    let api = api(true).await;
    let created = api
        .post("/api/server/instances", json!({"name": "newer"}))
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
    let id = created.body["instance"]["id"].as_str().unwrap().to_string();
    let mut record = api
        .store
        .get_json::<Value>("instances", &id)
        .await
        .unwrap()
        .unwrap()
        .value;
    for pointer in ["", "/serverConfiguration", "/configuration"] {
        record
            .pointer_mut(pointer)
            .and_then(Value::as_object_mut)
            .unwrap()
            .insert("addedInANewerVersion".into(), json!(true));
    }
    api.store
        .put_json("instances", &id, &record, Precondition::None)
        .await
        .unwrap();
    let mut status = api
        .store
        .get_json::<Value>("instance-status", &id)
        .await
        .unwrap()
        .unwrap()
        .value;
    status
        .as_object_mut()
        .unwrap()
        .insert("addedInANewerVersion".into(), json!(true));
    api.store
        .put_json("instance-status", &id, &status, Precondition::None)
        .await
        .unwrap();

    let read = api.get(&format!("/api/server/instances/{id}")).await;
    assert_eq!(read.status, StatusCode::OK, "{}", read.body);
    let started = api
        .post(&format!("/api/server/instances/{id}/start"), json!({}))
        .await;
    assert_eq!(started.status, StatusCode::OK, "{}", started.body);
    assert_eq!(
        started.body["status"]["state"], "Running",
        "{}",
        started.body
    );
    let patched = api
        .patch(
            &format!("/api/configuration/instances/{id}"),
            r#"[{"op": "replace", "path": "/logLevel", "value": "debug"}]"#,
            None,
        )
        .await;
    assert_eq!(patched.status, StatusCode::OK, "{}", patched.body);

    // From a user, the same kind of field is an error naming where it is.
    let refused = api
        .post(
            "/api/server/instances",
            json!({"name": "user", "serverConfiguration": {"addedInANewerVersion": true}}),
        )
        .await;
    assert_eq!(refused.status, StatusCode::BAD_REQUEST, "{}", refused.body);
    assert_eq!(
        refused.body["errors"][0]["path"], "/serverConfiguration/addedInANewerVersion",
        "{}",
        refused.body
    );
    let refused = api
        .patch(
            &format!("/api/configuration/instances/{id}"),
            r#"[{"op": "add", "path": "/queryTypo", "value": 1}]"#,
            None,
        )
        .await;
    assert_eq!(
        refused.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        refused.body
    );
    assert!(
        refused.body.to_string().contains("/queryTypo"),
        "{}",
        refused.body
    );
}

/// A wait the command itself leads away from (a stop waiting for
/// `Running`) is answered at once, not after the whole timeout.
#[tokio::test]
async fn a_wait_for_a_state_the_command_leads_away_from_is_refused_at_once() {
    let api = api(true).await;
    let id = api.create("contrary").await;
    let started = api
        .post(&format!("/api/server/instances/{id}/start"), json!({}))
        .await;
    assert_eq!(started.status, StatusCode::OK, "{}", started.body);
    let asked = std::time::Instant::now();
    let stopped = api
        .post(
            &format!("/api/server/instances/{id}/stop?wait=Running&timeout=60"),
            json!({}),
        )
        .await;
    assert_eq!(stopped.status, StatusCode::CONFLICT, "{}", stopped.body);
    assert_eq!(
        stopped.body["code"], "STATE_NOT_EXPECTED",
        "{}",
        stopped.body
    );
    assert!(
        asked.elapsed() < Duration::from_secs(10),
        "{:?}",
        asked.elapsed()
    );
    // The stop itself was carried out.
    let read = api.get(&format!("/api/server/instances/{id}")).await;
    assert_eq!(read.body["status"]["state"], "Stopped", "{}", read.body);
    // A wait the command leads to still waits and answers.
    let started = api
        .post(
            &format!("/api/server/instances/{id}/start?wait=Running&timeout=10"),
            json!({}),
        )
        .await;
    assert_eq!(started.status, StatusCode::OK, "{}", started.body);
}

/// Spec and status apart: a worker's status changes write the status record
/// only (the spec, with its configuration, keeps its revision), and a
/// configuration PATCH writes the spec only (the status keeps its
/// revision). The API still shows one instance with both.
#[tokio::test]
async fn status_changes_never_rewrite_the_spec_and_a_patch_never_rewrites_the_status() {
    let api = api(true).await;
    let id = api.create("apart").await;
    let revision = |collection: &'static str| {
        let store = api.store.clone();
        let id = id.clone();
        async move { store.get(collection, &id).await.unwrap().unwrap().revision }
    };
    // A start as a user asks for it writes the spec once (desired Running).
    let started = api
        .post(&format!("/api/server/instances/{id}/start"), json!({}))
        .await;
    assert_eq!(started.status, StatusCode::OK, "{}", started.body);
    let spec_after_start = revision("instances").await;
    // Restarts and status reports from the worker: statuses only.
    let status_before = revision("instance-status").await;
    let restarted = api
        .post(&format!("/api/server/instances/{id}/restart"), json!({}))
        .await;
    assert_eq!(restarted.status, StatusCode::OK, "{}", restarted.body);
    assert!(revision("instance-status").await > status_before);
    assert_eq!(
        revision("instances").await,
        spec_after_start,
        "a status change rewrote the spec"
    );
    // A configuration change: the spec only.
    let status_before = revision("instance-status").await;
    let patched = api
        .patch(
            &format!("/api/configuration/instances/{id}"),
            r#"[{"op": "replace", "path": "/logLevel", "value": "debug"}]"#,
            None,
        )
        .await;
    assert_eq!(patched.status, StatusCode::OK, "{}", patched.body);
    assert!(revision("instances").await > spec_after_start);
    assert_eq!(revision("instance-status").await, status_before);
    // One instance as before: spec and status fields together.
    let read = api.get(&format!("/api/server/instances/{id}")).await;
    assert_eq!(read.body["status"]["state"], "Running", "{}", read.body);
    assert_eq!(read.body["generation"], 2, "{}", read.body);
    assert_eq!(
        read.body["configuration"]["logLevel"], "debug",
        "{}",
        read.body
    );
    assert!(
        read.body["runtime"]["workerId"].is_string(),
        "{}",
        read.body
    );
    // Neither record holds the other's fields.
    let spec = api.store.get("instances", &id).await.unwrap().unwrap();
    let spec: Value = serde_json::from_slice(&spec.value).unwrap();
    assert!(
        spec.get("status").is_none() && spec.get("runtime").is_none(),
        "{spec}"
    );
    assert_eq!(spec["version"], 1, "{spec}");
    let status = api
        .store
        .get("instance-status", &id)
        .await
        .unwrap()
        .unwrap();
    let status: Value = serde_json::from_slice(&status.value).unwrap();
    assert!(status.get("configuration").is_none(), "{status}");
    assert_eq!(status["state"], "Running", "{status}");
}

/// A record written before spec and status were apart (one record with
/// `status` and `runtime` inside, no version) is served as it was, and the
/// first write stores its status apart without losing it.
#[tokio::test]
async fn a_record_of_before_the_split_is_served_and_moved_apart_on_its_first_write() {
    use draas_core::ports::store::{JsonStore, Precondition};
    let api = api(true).await;
    let id = draas_core::instance::InstanceId::generate();
    let legacy = json!({
        "id": id.as_str(), "name": "legacy", "description": "", "platformType": "Process",
        "createdAt": "2026-01-01T00:00:00Z", "updatedAt": "2026-01-01T00:00:00Z",
        "desiredState": "Stopped", "generation": 3,
        "serverConfiguration": {"environment": {}, "shutdownTimeoutSeconds": 5, "startTimeoutSeconds": 30},
        "configuration": {"host": "127.0.0.1", "port": 31050},
        "status": {"state": "Stopped", "reason": "Requested", "observedGeneration": 3,
                   "restartCount": 2, "updatedAt": "2026-01-01T00:05:00Z"},
        "runtime": {"workerId": "gone", "host": "test", "port": 31050,
                    "endpoint": "http://127.0.0.1:31050"}
    });
    api.store
        .put_json("instances", id.as_str(), &legacy, Precondition::Absent)
        .await
        .unwrap();
    api.store
        .put(
            "instance-names",
            "legacy",
            id.as_str().as_bytes().to_vec(),
            Precondition::Absent,
        )
        .await
        .unwrap();
    let read = api.get(&format!("/api/server/instances/{id}")).await;
    assert_eq!(read.status, StatusCode::OK, "{}", read.body);
    assert_eq!(read.body["status"]["state"], "Stopped", "{}", read.body);
    assert_eq!(read.body["status"]["restartCount"], 2, "{}", read.body);
    assert_eq!(read.body["runtime"]["workerId"], "gone", "{}", read.body);
    let listed = api.get("/api/server/instances").await;
    assert_eq!(
        listed.body["items"][0]["status"]["state"], "Stopped",
        "{}",
        listed.body
    );

    // The first write (a configuration change) moves the status apart.
    let patched = api
        .patch(
            "/api/configuration/instances/legacy",
            r#"[{"op": "replace", "path": "/logLevel", "value": "debug"}]"#,
            None,
        )
        .await;
    assert_eq!(patched.status, StatusCode::OK, "{}", patched.body);
    let status = api
        .store
        .get_json::<Value>("instance-status", id.as_str())
        .await
        .unwrap()
        .expect("the status is stored apart");
    assert_eq!(status.value["state"], "Stopped", "{}", status.value);
    assert_eq!(
        status.value["runtime"]["workerId"], "gone",
        "{}",
        status.value
    );
    let spec = api
        .store
        .get_json::<Value>("instances", id.as_str())
        .await
        .unwrap()
        .unwrap()
        .value;
    assert!(spec.get("status").is_none(), "{spec}");
    assert_eq!(spec["recovery"]["restartCount"], 2, "{spec}");
    // And it runs as any other.
    let started = api
        .post(&format!("/api/server/instances/{id}/start"), json!({}))
        .await;
    assert_eq!(started.status, StatusCode::OK, "{}", started.body);
    assert_eq!(
        started.body["status"]["state"], "Running",
        "{}",
        started.body
    );
    assert_eq!(started.body["generation"], 4, "{}", started.body);
}

/// Delete in two phases: the tombstone first, so a start asked for while
/// the delete runs (here, queued behind a start the worker still holds) is
/// refused and leaves no server behind the deleted instance.
#[tokio::test]
async fn a_start_asked_for_while_a_delete_runs_is_refused_and_leaves_nothing_running() {
    let api = api(true).await;
    let id = api.create("doomed").await;
    api.driver.script.lock().unwrap().hold_starts = true;
    let start_uri = format!("/api/server/instances/{id}/start");
    let instance_uri = format!("/api/server/instances/{id}");
    let held_start = api.post(&start_uri, json!({}));
    let delete = async {
        draas_testkit::wait_for("the held start", Duration::from_secs(5), || async {
            (api.driver.count("start") > 0).then_some(())
        })
        .await;
        api.request("DELETE", &instance_uri, None, Body::empty())
            .await
    };
    let later_start = async {
        draas_testkit::wait_for("the tombstone", Duration::from_secs(5), || async {
            let read = api.get(&instance_uri).await;
            read.body["deletedAt"].is_string().then_some(())
        })
        .await;
        let refused = api.post(&start_uri, json!({})).await;
        api.driver.release();
        refused
    };
    let (_, deleted, refused) = tokio::join!(held_start, delete, later_start);
    assert_eq!(refused.status, StatusCode::CONFLICT, "{}", refused.body);
    assert!(
        refused.body["detail"]
            .as_str()
            .unwrap()
            .contains("being deleted"),
        "{}",
        refused.body
    );
    assert_eq!(deleted.status, StatusCode::NO_CONTENT, "{}", deleted.body);
    assert_eq!(api.get(&instance_uri).await.status, StatusCode::NOT_FOUND);
    let script = api.driver.script.lock().unwrap();
    assert!(
        script.running.is_empty(),
        "left running: {:?}",
        script.calls
    );
    assert_eq!(
        script
            .calls
            .iter()
            .filter(|c| c.starts_with("start"))
            .count(),
        1,
        "{:?}",
        script.calls
    );
}

/// The attack: anonymous requests with invented HTTP methods, each meant to
/// add a metric series (the `method` label was taken from the request as
/// it came: 300 such requests made 6,300 series). Every invented method is
/// counted as `other`: the series stay as few as HTTP's methods.
#[tokio::test]
async fn invented_methods_add_no_metric_series() {
    let api = api(false).await;
    for n in 0..50 {
        let request = Request::builder()
            .method(format!("INVENTED{n}").as_str())
            .uri("/api/server/instances")
            .body(Body::empty())
            .unwrap();
        let response = api.router.clone().oneshot(request).await.unwrap();
        assert!(response.status().is_client_error(), "{}", response.status());
    }
    let response = api
        .router
        .clone()
        .oneshot(
            Request::builder()
                .uri("/metrics")
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let text = String::from_utf8(
        response
            .into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .to_vec(),
    )
    .unwrap();
    let methods: std::collections::BTreeSet<&str> = text
        .lines()
        .filter(|l| l.starts_with("draas_http_request"))
        .filter_map(|l| l.split("method=\"").nth(1))
        .filter_map(|rest| rest.split('"').next())
        .collect();
    assert!(methods.contains("other"), "{methods:?}\n{text}");
    assert!(
        !methods.iter().any(|m| m.starts_with("INVENTED")),
        "{methods:?}"
    );
    assert!(methods.len() <= 8, "{methods:?}");
}
