//! Distributed mode end to end: `draas serve` replicas and `draas worker`
//! processes joined by a real redis-server, real runtime processes, real
//! faults (kill -9 of workers, servers and Redis).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::cluster::{
    processes_in, redis, serve, serve_with, wait_workers, workdir, WorkerProcess,
};
use common::{alive, counter_pipeline, port_range, Api, Reaper};
use draas_testkit::redis_server::RedisServer;
use draas_testkit::wait_for;
use futures::StreamExt;
use reqwest::Method;
use serde_json::json;

/// Entries of a Redis stream.
async fn stream_length(redis: &RedisServer, key: &str) -> u64 {
    let client = redis::Client::open(redis.url()).unwrap();
    let mut connection = client.get_multiplexed_async_connection().await.unwrap();
    redis::cmd("XLEN")
        .arg(key)
        .query_async(&mut connection)
        .await
        .unwrap()
}

/// Waits until the Process worker persisted its record of `id`'s server.
async fn wait_for_process_record(api: &Api, redis: &RedisServer, id: &str) {
    use draas_core::ports::StateStore;
    let (_, platforms) = api.get("/api/server/platforms").await;
    let host = platforms["platforms"][0]["workers"][0]["host"]
        .as_str()
        .unwrap()
        .to_string();
    let store = draas_redis::RedisStore::connect(draas_redis::RedisSettings::new(redis.url()))
        .await
        .unwrap();
    let records =
        draas_core::keys::worker_records(draas_core::instance::PlatformType::Process, &host);
    wait_for("the process record", Duration::from_secs(10), || {
        let (store, records) = (store.clone(), records.clone());
        async move { store.get(&records, id).await.ok().flatten().map(|_| ()) }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lifecycle_runs_across_separate_processes_and_two_api_replicas_share_state() {
    let dir = tempfile::tempdir().unwrap();
    let _reaper = Reaper(dir.path().to_path_buf());
    let redis = redis(dir.path());
    let range = port_range();
    let a = serve(dir.path(), "serve-a", &redis, &range).await;
    let b = serve(dir.path(), "serve-b", &redis, &range).await;
    let worker = WorkerProcess::start(dir.path(), "worker-1", &redis, &[]);
    wait_workers(&a, 1).await;

    // Created on one replica, seen and configured on the other.
    let id = a.create("orders", None).await;
    let (status, instance) = b.get(&format!("/api/server/instances/{id}")).await;
    assert_eq!(status, 200, "{instance}");
    let (status, _, etag) = b
        .patch(
            &format!("/api/configuration/instances/{id}"),
            counter_pipeline(),
            Some("\"1\""),
        )
        .await;
    assert_eq!((status, etag.as_deref()), (200, Some("\"2\"")));

    // Start through replica A; the worker process runs the server.
    let (status, instance) = a
        .post(&format!("/api/server/instances/{id}/start"), None)
        .await;
    assert_eq!(status, 200, "{instance}");
    assert_eq!(instance["status"]["state"], "Running");
    assert_eq!(instance["runtime"]["workerId"], worker.id());
    let endpoint = instance["runtime"]["endpoint"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(!a.rows(&endpoint, "values").await.is_empty());
    let pid = instance["runtime"]["handle"]["pid"].as_u64().unwrap();
    assert_eq!(processes_in(&workdir(&worker, &id)), vec![pid as i32]);

    // Restart through B, stop through A.
    let (status, instance) = b
        .post(&format!("/api/server/instances/{id}/restart"), None)
        .await;
    assert_eq!(status, 200, "{instance}");
    let new_pid = instance["runtime"]["handle"]["pid"].as_u64().unwrap();
    assert!(new_pid != pid && !alive(pid));
    let (status, live) = b
        .get(&format!("/api/server/instances/{id}/runtime-status"))
        .await;
    assert_eq!(
        (status, &live["live"]["healthy"]),
        (200, &json!(true)),
        "{live}"
    );
    let (status, instance) = a
        .post(&format!("/api/server/instances/{id}/stop"), None)
        .await;
    assert_eq!(
        (status, &instance["status"]["state"]),
        (200, &json!("Stopped"))
    );
    assert!(!alive(new_pid));

    // A crash is seen by both replicas.
    let (_, instance) = b
        .post(&format!("/api/server/instances/{id}/start"), None)
        .await;
    let pid = instance["runtime"]["handle"]["pid"].as_u64().unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let failed = a.wait_state(&id, "Failed", Duration::from_secs(2)).await;
    assert_eq!(failed["status"]["reason"], "KilledBySignal");
    assert_eq!(b.state(&id).await, "Failed");

    // Logs come from the worker; delete removes everything.
    let (status, logs) = a
        .get(&format!("/api/server/instances/{id}/logs?tail=5"))
        .await;
    assert_eq!(status, 200, "{logs}");
    let (status, letters) = a.get("/api/server/dead-letters?platformType=Process").await;
    assert_eq!((status, &letters["deadLetters"]), (200, &json!([])));
    let (status, _) = b
        .call(Method::DELETE, &format!("/api/server/instances/{id}"), None)
        .await;
    assert_eq!(status, 204);
    assert_eq!(a.get(&format!("/api/server/instances/{id}")).await.0, 404);
    assert!(!workdir(&worker, &id).exists());

    // The replayable event stream kept the story.
    let (status, history) = a.get("/api/events/history?limit=1000").await;
    assert_eq!(status, 200);
    let kinds: Vec<&str> = history["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["event"]["event"]["type"].as_str())
        .collect();
    for kind in [
        "ConfigurationChanged",
        "InstanceStarted",
        "InstanceStopped",
        "InstanceFailed",
        "InstanceDeleted",
    ] {
        assert!(kinds.contains(&kind), "{kind} in {kinds:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_worker_makes_its_instances_unknown_and_its_return_readopts_them() {
    let dir = tempfile::tempdir().unwrap();
    let _reaper = Reaper(dir.path().to_path_buf());
    let redis = redis(dir.path());
    // With its reconciler: a stop pending while the worker is gone is
    // finished by it.
    let api = serve_with(
        dir.path(),
        "serve",
        &redis,
        &port_range(),
        draas_testkit::free_port(),
        &["--reconcile", "on"],
    )
    .await;
    let mut worker = WorkerProcess::start(dir.path(), "worker", &redis, &[]);
    wait_workers(&api, 1).await;
    let id = api.create("watched", None).await;
    let (_, instance) = api
        .post(&format!("/api/server/instances/{id}/start"), None)
        .await;
    let pid = instance["runtime"]["handle"]["pid"].as_u64().unwrap();

    worker.kill();
    let unknown = api
        .wait_state(&id, "Unknown", Duration::from_secs(10))
        .await;
    assert_eq!(unknown["status"]["reason"], "WorkerUnavailable");
    assert!(alive(pid), "the server itself still runs");
    // A stop while no worker can reach the server: accepted, pending.
    let started = Instant::now();
    let (status, body) = api
        .post(&format!("/api/server/instances/{id}/stop"), None)
        .await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["desiredState"], "Stopped", "{body}");
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "answers at once"
    );
    assert!(alive(pid), "nothing could stop it yet");

    // The worker returns and re-adopts its server; the reconciler then
    // stops it, as was asked, without anyone asking again.
    worker.restart();
    let stopped = api
        .wait_state(&id, "Stopped", Duration::from_secs(30))
        .await;
    assert_eq!(stopped["desiredState"], "Stopped", "{stopped}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while alive(pid) {
        assert!(Instant::now() < deadline, "the server {pid} still runs");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_execute_each_of_200_start_commands_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let _reaper = Reaper(dir.path().to_path_buf());
    let redis = redis(dir.path());
    let range = common::port_block(1000);
    // 600 requests in a few seconds from one key: the rate limit is not
    // what this test is about.
    let api = serve_with(
        dir.path(),
        "serve",
        &redis,
        &range,
        draas_testkit::free_port(),
        &["--reconcile", "off", "--rate-limit", "0"],
    )
    .await;
    let w1 = WorkerProcess::start(dir.path(), "w1", &redis, &[]);
    let w2 = WorkerProcess::start(dir.path(), "w2", &redis, &[]);
    wait_workers(&api, 2).await;

    let mut ids = Vec::new();
    for i in 0..200 {
        ids.push(api.create(&format!("i{i}"), None).await);
    }
    let starts = futures::stream::iter(ids.clone())
        .map(|id| {
            let api = api.api.clone();
            async move {
                let (status, instance) = api
                    .post(&format!("/api/server/instances/{id}/start"), None)
                    .await;
                assert_eq!(status, 200, "{id}: {instance}");
                assert_eq!(instance["status"]["state"], "Running", "{instance}");
                (
                    id,
                    instance["runtime"]["workerId"]
                        .as_str()
                        .unwrap()
                        .to_string(),
                )
            }
        })
        .buffer_unordered(40)
        .collect::<Vec<_>>()
        .await;

    let (id1, id2) = (w1.id(), w2.id());
    let by_w1 = starts.iter().filter(|(_, w)| *w == id1).count();
    let by_w2 = starts.iter().filter(|(_, w)| *w == id2).count();
    assert_eq!(
        by_w1 + by_w2,
        200,
        "every command executed by one of the two"
    );
    assert!(by_w1 > 0 && by_w2 > 0, "both took part: {by_w1} / {by_w2}");
    for (id, owner) in &starts {
        let (mine, other) = if *owner == id1 {
            (&w1, &w2)
        } else {
            (&w2, &w1)
        };
        assert_eq!(
            processes_in(&workdir(mine, id)).len(),
            1,
            "{id}: exactly one server"
        );
        assert!(
            !workdir(other, id).exists(),
            "{id}: the other worker never executed it"
        );
    }

    let stops = futures::stream::iter(ids)
        .map(|id| {
            let api = api.api.clone();
            async move {
                api.post(&format!("/api/server/instances/{id}/stop"), None)
                    .await
                    .0
            }
        })
        .buffer_unordered(40)
        .collect::<Vec<_>>()
        .await;
    assert!(stops.iter().all(|s| *s == 200), "{stops:?}");
    for (id, owner) in &starts {
        let mine = if *owner == id1 { &w1 } else { &w2 };
        assert!(processes_in(&workdir(mine, id)).is_empty(), "{id} stopped");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_whose_worker_is_killed_midway_is_reclaimed_and_completed_by_the_other() {
    let dir = tempfile::tempdir().unwrap();
    let _reaper = Reaper(dir.path().to_path_buf());
    let redis = redis(dir.path());
    // A slow server: three seconds pass before the runtime even starts.
    let allow = common::runtime_wrapper(&dir.path().join("slow-runtime"), "sleep 3\n");
    let api = serve(dir.path(), "serve", &redis, &port_range()).await;
    let mut workers = [
        WorkerProcess::start(dir.path(), "wa", &redis, &["--allow-executable", &allow]),
        WorkerProcess::start(dir.path(), "wb", &redis, &["--allow-executable", &allow]),
    ];
    wait_workers(&api, 2).await;

    let (status, created) = api
        .post(
            "/api/server/instances",
            Some(json!({"name": "slow", "platformType": "Process",
                        "serverConfiguration": {"process": {"executablePath": allow}, "startTimeoutSeconds": 30}})),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    let id = created["instance"]["id"].as_str().unwrap().to_string();
    let start = tokio::spawn({
        let api = api.api.clone();
        let id = id.clone();
        async move {
            api.post(&format!("/api/server/instances/{id}/start"), None)
                .await
        }
    });

    // Whichever worker took the command has launched the (still sleeping)
    // server: kill that worker.
    let (taker, dirs) = wait_for(
        "a worker to launch the server",
        Duration::from_secs(20),
        || {
            let dirs: Vec<PathBuf> = workers.iter().map(|w| workdir(w, &id)).collect();
            async move {
                let taker = dirs.iter().position(|d| !processes_in(d).is_empty())?;
                Some((taker, dirs))
            }
        },
    )
    .await;
    let launched = processes_in(&dirs[taker]);
    // Kill it only once it has persisted the server's record (right after
    // the launch), as a worker dying later in the start would have.
    wait_for_process_record(&api, &redis, &id).await;
    workers[taker].kill();
    let survivor = workers[1 - taker].id();

    let (status, instance) = start.await.unwrap();
    assert_eq!(status, 200, "{instance}");
    assert_eq!(instance["status"]["state"], "Running");
    assert_eq!(
        instance["runtime"]["workerId"],
        survivor.as_str(),
        "completed by the other worker"
    );
    assert_eq!(
        instance["runtime"]["handle"]["pid"].as_u64(),
        Some(launched[0] as u64),
        "the server already launched was adopted, not launched twice"
    );
    assert_eq!(processes_in(&dirs[taker]).len(), 1, "one server");
    assert!(processes_in(&dirs[1 - taker]).is_empty());

    // The adopter finds the server's files where the dead worker put them:
    // its logs, and everything on delete.
    let (status, logs) = api
        .get(&format!("/api/server/instances/{id}/logs?tail=50"))
        .await;
    assert_eq!(status, 200, "{logs}");
    assert!(
        !logs["lines"].as_array().unwrap().is_empty(),
        "the server's own output, from the first worker's directory: {logs}"
    );
    let (status, _) = api
        .call(Method::DELETE, &format!("/api/server/instances/{id}"), None)
        .await;
    assert_eq!(status, 204);
    assert!(
        !dirs[taker].exists(),
        "the server's working directory is removed, though another worker launched it"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_restart_is_survived_with_clear_503s_meanwhile_and_no_accepted_command_lost() {
    let dir = tempfile::tempdir().unwrap();
    let _reaper = Reaper(dir.path().to_path_buf());
    let mut redis = redis(dir.path());
    let api = serve(dir.path(), "serve", &redis, &port_range()).await;
    let mut worker = WorkerProcess::start(dir.path(), "worker", &redis, &[]);
    wait_workers(&api, 1).await;
    let id = api.create("steady", None).await;
    let (status, _) = api
        .post(&format!("/api/server/instances/{id}/start"), None)
        .await;
    assert_eq!(status, 200);

    // Redis down: clear 503s, nothing hangs.
    redis.kill();
    let started = Instant::now();
    let (status, body) = api.get(&format!("/api/server/instances/{id}")).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["code"], "STORE_UNAVAILABLE");
    let (status, _) = api
        .post(
            "/api/server/instances",
            Some(json!({"name": "during-outage", "platformType": "Process"})),
        )
        .await;
    assert_eq!(status, 503);
    assert!(
        started.elapsed() < Duration::from_secs(12),
        "answered in {:?}",
        started.elapsed()
    );

    // Back: everything reconnects by itself, state intact.
    redis.restart();
    wait_for("the API to reconnect", Duration::from_secs(30), || async {
        let (status, body) = api.get(&format!("/api/server/instances/{id}")).await;
        (status == 200).then_some(body)
    })
    .await;
    // The worker beats again within its interval; its server never
    // stopped being Running.
    wait_workers(&api, 1).await;
    api.wait_state(&id, "Running", Duration::from_secs(10))
        .await;
    let (status, instance) = api
        .post(&format!("/api/server/instances/{id}/stop"), None)
        .await;
    assert_eq!(status, 200, "commands flow again: {instance}");

    // A command accepted just before the worker and Redis both go down is
    // executed once they are back.
    worker.kill();
    let stream = draas_redis::RedisSettings::new(redis.url())
        .key(&draas_core::instance::PlatformType::Process.worker_channel(&worker.id()));
    let queued_before = stream_length(&redis, &stream).await;
    let accepted = tokio::spawn({
        let api = api.api.clone();
        let id = id.clone();
        async move {
            api.post(&format!("/api/server/instances/{id}/start"), None)
                .await
        }
    });
    // Accepted: the command is in the worker's stream.
    wait_for(
        "the command to be queued",
        Duration::from_secs(10),
        || async { (stream_length(&redis, &stream).await > queued_before).then_some(()) },
    )
    .await;
    redis.restart();
    worker.restart();
    let (status, instance) = accepted.await.unwrap();
    assert_eq!(status, 200, "{instance}");
    assert_eq!(instance["status"]["state"], "Running");
    assert_eq!(instance["runtime"]["workerId"], worker.id());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_api_replicas_patching_one_instance_lose_no_update() {
    let dir = tempfile::tempdir().unwrap();
    let redis = redis(dir.path());
    let range = port_range();
    let a = serve(dir.path(), "serve-a", &redis, &range).await;
    let b = serve(dir.path(), "serve-b", &redis, &range).await;
    let id = a.create("contended", None).await;
    let path = format!("/api/configuration/instances/{id}");

    // Both replicas change generation 1 at once: exactly one wins.
    let patch = |api: Api, level: &'static str| {
        let path = path.clone();
        async move {
            let ops = json!([{"op": "replace", "path": "/logLevel", "value": level}]);
            let (status, _, _) = api.patch(&path, ops, Some("\"1\"")).await;
            (status, level)
        }
    };
    let (ra, rb) = tokio::join!(patch(a.api.clone(), "debug"), patch(b.api.clone(), "warn"));
    let mut statuses = vec![ra.0, rb.0];
    statuses.sort();
    assert_eq!(statuses, vec![200, 412]);
    let winner = if ra.0 == 200 { ra.1 } else { rb.1 };
    let (_, config) = b.get(&path).await;
    assert_eq!(config["logLevel"], winner);

    // Without If-Match, concurrent changes through both replicas all land.
    let adds = (0..20).map(|i| {
        let api = if i % 2 == 0 { a.api.clone() } else { b.api.clone() };
        let path = path.clone();
        async move {
            let ops = json!([{"op": "add", "path": "/sources/-", "value": {"kind": "mock", "id": format!("s{i}")}}]);
            api.patch(&path, ops, None).await.0
        }
    });
    let statuses: Vec<u16> = futures::future::join_all(adds).await;
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    let (_, config) = a.get(&path).await;
    assert_eq!(config["sources"].as_array().unwrap().len(), 20);
    let (_, instance) = a.get(&format!("/api/server/instances/{id}")).await;
    assert_eq!(instance["generation"], 22);
}
