//! The reconciler under faults, in distributed mode: `draas serve`,
//! `draas worker` and `draas reconcile` processes joined by a real
//! redis-server, real runtime processes, real kill -9s. Only the holder of
//! the lease acts, a stale fencing token is refused by the control plane
//! and by the worker, a restarted reconciler (or one whose control plane
//! was killed) replays what it missed from its cursor, an instance of a
//! dead worker is taken over by a live one, and a killed worker leaves no
//! duplicate and no orphan.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::cluster::{
    processes_in, reconciler, redis, serve, serve_with, wait_workers, workdir, WorkerProcess,
};
use common::{alive, kill9, port_range, server_pid, Api, Reaper};
use draas_core::lease::FENCING_TOKEN_HEADER;
use draas_core::messages::{Command, CommandEnvelope, ErrorCode, Outcome};
use draas_core::ports::MessageBus;
use draas_testkit::process::TestProcess;
use draas_testkit::{free_port, wait_for};
use nix::sys::signal::Signal;
use serde_json::{json, Value};

/// Creates Process instance `name` with the counter pipeline and starts it.
async fn running(api: &Api, name: &str) -> (String, Value) {
    api.running_pipeline(json!({"name": name, "platformType": "Process"}))
        .await
}

/// The reconciler lease as the control plane shows it.
async fn lease(api: &Api) -> Value {
    let (status, body) = api.get("/api/reconciler/lease").await;
    assert_eq!(status, 200, "{body}");
    body
}

/// Waits until `holder` holds the lease; returns it.
async fn held_by(api: &Api, holder: &str, limit: Duration) -> Value {
    wait_for(&format!("{holder} to hold the lease"), limit, || async {
        let (status, body) = api.get("/api/reconciler/lease").await;
        (status == 200 && body["holder"] == holder && body["live"] == true).then_some(body)
    })
    .await
}

/// SIGKILL, and wait until it is gone.
fn kill_now(process: &mut TestProcess) {
    process.signal(Signal::SIGKILL);
    process.wait_timeout(Duration::from_secs(10)).expect("dies");
}

/// Waits until reconciler `name` (started by `reconciler` in `dir`) has
/// saved an event cursor.
async fn wait_for_cursor(dir: &std::path::Path, name: &str) {
    let file = dir.join(format!("{name}.cursor"));
    wait_for(
        "the cursor to be saved",
        Duration::from_secs(10),
        || async {
            std::fs::read_to_string(&file)
                .ok()
                .filter(|c| !c.trim().is_empty())
        },
    )
    .await;
}

/// How many steps a reconciler's log says it carried out.
fn steps_taken(process: &TestProcess) -> usize {
    process.stderr().matches("reconciled").count()
}

/// Waits until a reconciler's log says it carried out a step (it logs
/// after the control plane's answer, which may come after what a test
/// observes).
async fn wait_for_a_step(process: &TestProcess) {
    wait_for(
        "a step in the reconciler's log",
        Duration::from_secs(10),
        || async { (steps_taken(process) >= 1).then_some(()) },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_fencing_token_is_refused_by_the_control_plane_and_by_the_worker() {
    let dir = tempfile::tempdir().unwrap();
    let _reaper = Reaper(dir.path().to_path_buf());
    let redis = redis(dir.path());
    let api = serve(dir.path(), "serve", &redis, &port_range()).await;
    let worker = WorkerProcess::start(dir.path(), "worker", &redis, &[]);
    wait_workers(&api, 1).await;

    // Term 1 for "old", refused to "new" while it lasts, then term 2.
    let (status, first) = api
        .post(
            "/api/reconciler/lease",
            Some(json!({"holder": "old", "ttlSeconds": 1})),
        )
        .await;
    assert_eq!(status, 200, "{first}");
    let old_token = first["token"].as_u64().unwrap();
    let (status, refused) = api
        .post(
            "/api/reconciler/lease",
            Some(json!({"holder": "new", "ttlSeconds": 30})),
        )
        .await;
    assert_eq!(
        (status, refused["code"].as_str()),
        (409, Some("LEASE_HELD"))
    );
    wait_for(
        "the first term to run out",
        Duration::from_secs(5),
        || async {
            let (_, lease) = api.get("/api/reconciler/lease").await;
            (lease["live"] == false).then_some(())
        },
    )
    .await;
    let (status, second) = api
        .post(
            "/api/reconciler/lease",
            Some(json!({"holder": "new", "ttlSeconds": 30})),
        )
        .await;
    assert_eq!(status, 200, "{second}");
    let new_token = second["token"].as_u64().unwrap();
    assert_eq!(new_token, old_token + 1);

    // Bad lease requests change nothing.
    for (bad, status_code, code) in [
        (
            json!({"holder": "a b", "ttlSeconds": 5}),
            422,
            "INVALID_LEASE",
        ),
        (
            json!({"holder": "x", "ttlSeconds": 0}),
            422,
            "INVALID_LEASE",
        ),
        (json!({"holder": "x"}), 400, "INVALID_BODY"),
    ] {
        let (status, body) = api.post("/api/reconciler/lease", Some(bad)).await;
        assert_eq!(
            (status, body["code"].as_str()),
            (status_code, Some(code)),
            "{body}"
        );
    }
    assert_eq!(lease(&api).await["token"], new_token);

    // A server that crashed, with no reconciler about: a `recover` step
    // would start it again.
    let (id, instance) = running(&api, "fenced").await;
    kill9(server_pid(&instance).unwrap());
    api.wait_state(&id, "Failed", Duration::from_secs(10)).await;
    let step = |token: String| {
        let id = id.clone();
        let api = &api;
        async move {
            api.call_with(
                reqwest::Method::POST,
                &format!("/api/server/instances/{id}/reconcile"),
                Some(json!({"action": "recover", "restartCount": 0})),
                &[(FENCING_TOKEN_HEADER, token)],
            )
            .await
        }
    };
    // The control plane refuses the old term's step: nothing happens.
    let (status, body) = step(old_token.to_string()).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (409, Some("STALE_FENCE")),
        "{body}"
    );
    assert_eq!(api.state(&id).await, "Failed");

    // A command that carries the old token past the control plane (sent
    // while the old term was live, delivered after) is refused by the
    // worker itself.
    let bus = draas_redis::RedisBus::connect(
        draas_redis::RedisSettings::new(redis.url()),
        draas_redis::BusOptions::default(),
    )
    .await
    .unwrap();
    let (_, instance) = api.get(&format!("/api/server/instances/{id}")).await;
    let spec: draas_core::messages::StartSpec = serde_json::from_value(json!({
        "name": "fenced",
        "generation": instance["generation"],
        "configurationYaml": "id: x\n",
        "apiHost": "127.0.0.1",
        "apiPort": instance["configuration"]["port"],
        "listeningPorts": [],
        "serverConfiguration": instance["serverConfiguration"],
    }))
    .unwrap();
    let envelope = CommandEnvelope::new(
        id.parse().unwrap(),
        Command::Start(spec),
        Duration::from_secs(10),
    )
    .fenced(Some(old_token));
    let reply = bus
        .request(
            &draas_core::instance::PlatformType::Process.worker_channel(&worker.id()),
            envelope,
            Duration::from_secs(10),
        )
        .await
        .unwrap();
    match reply.outcome {
        Outcome::Error { code, message } => {
            assert_eq!(code, ErrorCode::StaleFence, "{message}");
            assert!(message.contains(&format!("term {new_token}")), "{message}");
        }
        other => panic!("a stale command ran: {other:?}"),
    }
    assert_eq!(api.state(&id).await, "Failed");
    assert!(processes_in(&workdir(&worker, &id)).is_empty());

    // A malformed token is a 400, not a step.
    let (status, body) = step("soon".to_string()).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (400, Some("INVALID_FENCE"))
    );
    assert_eq!(api.state(&id).await, "Failed");

    // The live term's token is admitted, and its command carried out.
    let (status, body) = step(new_token.to_string()).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"]["state"], "Running");
    assert_eq!(body["status"]["restartCount"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_lease_holder_of_two_reconcilers_acts_and_the_other_takes_over_when_it_dies() {
    let dir = tempfile::tempdir().unwrap();
    let _reaper = Reaper(dir.path().to_path_buf());
    let redis = redis(dir.path());
    let api = serve(dir.path(), "serve", &redis, &port_range()).await;
    let _worker = WorkerProcess::start(dir.path(), "worker", &redis, &[]);
    wait_workers(&api, 1).await;
    let lease_args = ["--lease-ttl", "2", "--reconcile-interval", "1"];
    let mut first = reconciler(dir.path(), "first", &api, 0, &lease_args);
    held_by(&api, "first", Duration::from_secs(10)).await;
    let second = reconciler(dir.path(), "second", &api, 0, &lease_args);
    let (id, instance) = running(&api, "contested").await;

    // A crash is repaired once, by the holder only.
    kill9(server_pid(&instance).unwrap());
    let healed = api
        .until(&id, Duration::from_secs(10), |i| {
            i["status"]["state"] == "Running" && i["status"]["restartCount"] == 1
        })
        .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (_, now) = api.get(&format!("/api/server/instances/{id}")).await;
    assert_eq!(now["status"]["restartCount"], 1, "restarted once: {now}");
    assert_eq!(server_pid(&now), server_pid(&healed));
    wait_for_a_step(&first).await;
    assert_eq!(steps_taken(&second), 0, "{}", second.stderr());
    let term = lease(&api).await["token"].as_u64().unwrap();

    // The holder dies without a word: the other takes over after its term.
    kill_now(&mut first);
    let taken = held_by(&api, "second", Duration::from_secs(10)).await;
    assert!(taken["token"].as_u64().unwrap() > term, "{taken}");
    kill9(server_pid(&healed).unwrap());
    let again = api
        .until(&id, Duration::from_secs(15), |i| {
            i["status"]["state"] == "Running"
                && server_pid(i).is_some_and(|p| Some(p) != server_pid(&healed))
        })
        .await;
    assert_eq!(again["status"]["restartCount"], 2, "{again}");
    wait_for_a_step(&second).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_reconciler_replays_what_it_missed_from_its_cursor() {
    let dir = tempfile::tempdir().unwrap();
    let _reaper = Reaper(dir.path().to_path_buf());
    let redis = redis(dir.path());
    let api = serve(dir.path(), "serve", &redis, &port_range()).await;
    let _worker = WorkerProcess::start(dir.path(), "worker", &redis, &[]);
    wait_workers(&api, 1).await;
    // Full passes an hour apart: only the event stream can bring it back.
    let args = ["--lease-ttl", "2", "--reconcile-interval", "3600"];
    let mut first = reconciler(dir.path(), "keeper", &api, 0, &args);
    held_by(&api, "keeper", Duration::from_secs(10)).await;
    let (id, instance) = running(&api, "resumed").await;
    wait_for_cursor(dir.path(), "keeper").await;

    // The reconciler dies; meanwhile the server crashes.
    kill_now(&mut first);
    kill9(server_pid(&instance).unwrap());
    api.wait_state(&id, "Failed", Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(api.state(&id).await, "Failed", "nobody else heals it");

    // Started again, it replays the crash from its cursor and heals it
    // (once its dead self's lease term has run out).
    let second = reconciler(dir.path(), "keeper", &api, 1, &args);
    let healed = api
        .until(&id, Duration::from_secs(15), |i| {
            i["status"]["state"] == "Running"
        })
        .await;
    assert_eq!(healed["status"]["restartCount"], 1, "{healed}");
    assert!(
        second
            .stderr()
            .contains("resumes the event stream from its saved cursor"),
        "{}",
        second.stderr()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_control_plane_is_survived_and_the_reconciler_resumes_from_its_cursor() {
    let dir = tempfile::tempdir().unwrap();
    let _reaper = Reaper(dir.path().to_path_buf());
    let redis = redis(dir.path());
    let range = port_range();
    let port = free_port();
    let off = ["--reconcile", "off"];
    let mut api = serve_with(dir.path(), "serve-0", &redis, &range, port, &off).await;
    let _worker = WorkerProcess::start(dir.path(), "worker", &redis, &[]);
    wait_workers(&api, 1).await;
    // A long term, so the lease outlives the outage; full passes an hour
    // apart, so only the resumed event stream can bring the server back.
    let args = ["--lease-ttl", "60", "--reconcile-interval", "3600"];
    let reconciler = reconciler(dir.path(), "survivor", &api, 0, &args);
    held_by(&api, "survivor", Duration::from_secs(10)).await;
    let (id, instance) = running(&api, "outage").await;
    // It has followed the stream (it has a cursor to resume from).
    wait_for_cursor(dir.path(), "survivor").await;

    // kill -9 the control plane; the server crashes while it is down (the
    // worker records it in Redis).
    kill_now(&mut api.process);
    kill9(server_pid(&instance).unwrap());
    // Long enough for the worker to record the crash while nobody serves
    // the API (it writes to Redis directly).
    tokio::time::sleep(Duration::from_secs(1)).await;

    api = serve_with(dir.path(), "serve-1", &redis, &range, port, &off).await;
    let healed = api
        .until(&id, Duration::from_secs(15), |i| {
            i["status"]["state"] == "Running" && server_pid(i) != server_pid(&instance)
        })
        .await;
    assert_eq!(healed["status"]["restartCount"], 1, "{healed}");
    wait_for_a_step(&reconciler).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_of_a_dead_worker_is_taken_over_by_a_live_one_within_two_seconds() {
    let dir = tempfile::tempdir().unwrap();
    let _reaper = Reaper(dir.path().to_path_buf());
    let redis = redis(dir.path());
    let on = ["--reconcile", "on", "--reconcile-interval", "5"];
    let api = serve_with(dir.path(), "serve", &redis, &port_range(), free_port(), &on).await;
    let a = WorkerProcess::start(dir.path(), "worker-a", &redis, &[]);
    let b = WorkerProcess::start(dir.path(), "worker-b", &redis, &[]);
    wait_workers(&api, 2).await;
    let (id, instance) = running(&api, "orphaned").await;
    let server = server_pid(&instance).unwrap();
    let mut workers = [a, b];
    let owner = workers
        .iter()
        .position(|w| instance["runtime"]["workerId"] == w.id())
        .expect("one of the two runs it");
    let live = workers[1 - owner].id();

    workers[owner].kill();
    // Declared dead (Unknown), then taken over (Running): the reconciler
    // may be faster than a poll, so the status history tells.
    let (unknown, taken_over) = wait_for(
        "Unknown, then Running again",
        Duration::from_secs(20),
        || async {
            let (_, recent) = api.get("/api/status/recent-changes").await;
            let changes: Vec<Value> = recent["changes"]
                .as_array()?
                .iter()
                .filter(|c| c["instanceId"] == id.as_str())
                .cloned()
                .collect();
            let unknown = changes.iter().position(|c| c["new"] == "Unknown")?;
            let running = changes[unknown..].iter().find(|c| c["new"] == "Running")?;
            Some((changes[unknown].clone(), running.clone()))
        },
    )
    .await;
    assert_eq!(unknown["reason"], "WorkerUnavailable", "{unknown}");
    let at = |change: &Value| {
        chrono::DateTime::parse_from_rfc3339(change["timestamp"].as_str().unwrap()).unwrap()
    };
    let took = (at(&taken_over) - at(&unknown)).to_std().unwrap();
    assert!(
        took <= Duration::from_secs(2),
        "taken over {took:?} after Unknown"
    );
    let (_, taken) = api.get(&format!("/api/server/instances/{id}")).await;
    assert_eq!(taken["runtime"]["workerId"], live, "{taken}");
    assert_eq!(
        server_pid(&taken),
        Some(server),
        "the same server, adopted: {taken}"
    );
    assert!(alive(server));
    assert_eq!(taken["status"]["restartCount"], 0, "not a restart: {taken}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_and_restarted_worker_leaves_no_duplicate_and_no_orphan() {
    let dir = tempfile::tempdir().unwrap();
    let _reaper = Reaper(dir.path().to_path_buf());
    let redis = redis(dir.path());
    let on = ["--reconcile", "on", "--reconcile-interval", "1"];
    let api = serve_with(dir.path(), "serve", &redis, &port_range(), free_port(), &on).await;
    let mut worker = WorkerProcess::start(dir.path(), "worker", &redis, &[]);
    wait_workers(&api, 1).await;
    let mut servers = Vec::new();
    for n in 0..4 {
        servers.push(running(&api, &format!("fleet-{n}")).await);
    }
    // One more, deleted with force while the worker is dead: its server
    // is left behind until the worker returns.
    let (doomed, doomed_instance) = running(&api, "doomed").await;

    worker.kill();
    // While the worker is dead, one server crashes too.
    let crashed = server_pid(&servers[0].1).unwrap();
    kill9(crashed);
    api.wait_state(&servers[1].0, "Unknown", Duration::from_secs(15))
        .await;
    let (status, body) = api
        .call(
            reqwest::Method::DELETE,
            &format!("/api/server/instances/{doomed}?force=true"),
            None,
        )
        .await;
    assert_eq!(status, 204, "{body}");
    assert!(
        alive(server_pid(&doomed_instance).unwrap()),
        "left behind for now"
    );

    worker.restart();
    for (n, (id, before)) in servers.iter().enumerate() {
        let after = api
            .until(id, Duration::from_secs(20), |i| {
                i["status"]["state"] == "Running"
            })
            .await;
        if n == 0 {
            // Running again means its worker takes commands about it: at
            // once, not after its first heartbeat.
            let (status, body) = api
                .call(
                    reqwest::Method::GET,
                    &format!("/api/server/instances/{id}/logs?tail=1"),
                    None,
                )
                .await;
            assert_eq!(status, 200, "{body}");
        }
        // Exactly one server per instance, in its own directory.
        let pids = processes_in(&workdir(&worker, id));
        assert_eq!(pids.len(), 1, "{id}: {pids:?}");
        assert_eq!(Some(pids[0] as u64), server_pid(&after), "{after}");
        if server_pid(before) != Some(crashed) {
            assert_eq!(
                server_pid(&after),
                server_pid(before),
                "re-adopted, not restarted"
            );
        }
    }
    wait_for(
        "the orphan to be removed",
        Duration::from_secs(10),
        || async { (!alive(server_pid(&doomed_instance).unwrap())).then_some(()) },
    )
    .await;
    assert!(processes_in(&workdir(&worker, &doomed)).is_empty());
}
