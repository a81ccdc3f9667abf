//! PostgreSQL change data capture end to end, through the DRaaS API: a real
//! PostgreSQL (Debian's package, a cluster of the test's own with
//! `wal_level=logical`), `draas up`, and bundled runtime processes.
//!
//! - bootstrap rows appear in the query's results; INSERT, UPDATE and
//!   DELETE are reflected; the log reaction prints its templates for each
//!   change;
//! - a second instance reading the same database starts too (ports it
//!   connects to are not reserved; each gets its own replication slot);
//! - the database restarted: the instance is `Degraded` naming the
//!   source, and `Running` again once the source reconnected;
//! - deleting an instance drops the replication slot its source created,
//!   whether its server runs (the server drops it) or not (the worker runs
//!   the runtime once to drop it: a process, or a container of its image).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::Draas;
use draas_testkit::postgres_server::{PostgresServer, DATABASE, PASSWORD, USER};
use serde_json::{json, Value};

/// A shop's orders, and a publication of them.
fn shop(pg: &PostgresServer) {
    pg.sql(
        "CREATE TABLE orders (id integer PRIMARY KEY, customer text NOT NULL, total integer NOT NULL);
         INSERT INTO orders VALUES (1, 'ada', 250), (2, 'bob', 40), (3, 'cy', 120);
         CREATE PUBLICATION drasi_publication FOR TABLE orders;",
    );
}

/// A drasi-server file as a user would write it: the database's address
/// and secret from the environment, a bootstrap provider that inherits the
/// source's connection, a log reaction with templates.
fn configuration() -> Value {
    json!({
        "apiVersion": "drasi.io/v1",
        "persistConfig": false,
        "sources": [{
            "kind": "postgres", "id": "shop",
            "host": "${PG_HOST:-127.0.0.1}", "port": "${PG_PORT}",
            "database": DATABASE, "user": USER, "password": "${PG_PASSWORD}",
            "tables": ["orders"],
            "bootstrapProvider": {"kind": "postgres"}
        }],
        "queries": [{
            "id": "big-orders", "autoStart": true, "queryLanguage": "Cypher",
            "query": "MATCH (o:orders) WHERE o.total > 100 RETURN o.id AS id, o.customer AS customer, o.total AS total",
            "sources": [{"sourceId": "shop"}]
        }],
        "reactions": [{
            "kind": "log", "id": "audit", "queries": ["big-orders"],
            "defaultTemplate": {
                "added": {"template": "NEW ORDER {{after.id}} by {{after.customer}}"},
                "updated": {"template": "CHANGED ORDER {{after.id}} to {{after.total}}"},
                "deleted": {"template": "GONE ORDER {{before.id}}"}
            }
        }]
    })
}

fn create_body(name: &str, pg: &PostgresServer) -> Value {
    json!({
        "name": name,
        "platformType": "Process",
        "configuration": configuration(),
        "serverConfiguration": {"environment": {
            "PG_PORT": pg.port.to_string(), "PG_PASSWORD": PASSWORD
        }}
    })
}

/// Waits until the query's rows are `expected` (as `(id, total)`).
async fn rows_become(draas: &Draas, id: &str, expected: &[(i64, i64)]) {
    draas
        .query_rows(id, "big-orders", |rows| {
            let mut got: Vec<(i64, i64)> = rows
                .iter()
                .map(|r| {
                    (
                        r["id"].as_i64().unwrap_or(-1),
                        r["total"].as_i64().unwrap_or(-1),
                    )
                })
                .collect();
            got.sort_unstable();
            got == expected
        })
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_source_follows_its_table_through_restarts_and_leaves_no_slot() {
    let dir = tempfile::tempdir().unwrap();
    // Servers outlive their control plane by design: none outlives the test.
    let _reaper = common::Reaper(dir.path().to_path_buf());
    let mut pg = PostgresServer::start();
    shop(&pg);
    let draas = Draas::up(dir.path()).await;

    let (status, created) = draas
        .post("/api/server/instances", Some(create_body("shop", &pg)))
        .await;
    assert_eq!(status, 201, "{created}");
    let id = created["instance"]["id"].as_str().unwrap().to_string();
    let slot = created["instance"]["configuration"]["sources"][0]["slotName"]
        .as_str()
        .expect("DRaaS gives the source a slot of its own")
        .to_string();
    assert!(
        created["warnings"]
            .as_array()
            .unwrap()
            .iter()
            .any(|w| w["path"] == "/sources/0/slotName"),
        "the slot name is said: {created}"
    );

    let (status, started) = draas
        .post(
            &format!("/api/server/instances/{id}/start?wait=Running&timeout=60"),
            None,
        )
        .await;
    assert_eq!(status, 200, "{started}");
    // Running: the slot exists already (the runtime reserves it before the
    // source starts), so a row committed now is not lost between the
    // bootstrap snapshot and the source's first replication.
    assert!(
        pg.slots().contains(&slot),
        "the slot is reserved: {:?}",
        pg.slots()
    );
    pg.sql("INSERT INTO orders VALUES (4, 'dee', 500)");
    // The bootstrap (the rows already in the table) and the insert.
    // (A reaction starts from the query's current results: the bootstrap
    // rows are its starting point, not changes it prints.)
    rows_become(&draas, &id, &[(1, 250), (3, 120), (4, 500)]).await;

    // Changes: insert, update, delete.
    draas.logged(&id, "NEW ORDER 4 by dee").await;
    pg.sql("UPDATE orders SET total = 300 WHERE id = 3");
    rows_become(&draas, &id, &[(1, 250), (3, 300), (4, 500)]).await;
    draas.logged(&id, "CHANGED ORDER 3 to 300").await;
    pg.sql("DELETE FROM orders WHERE id = 1");
    rows_become(&draas, &id, &[(3, 300), (4, 500)]).await;
    draas.logged(&id, "GONE ORDER 1").await;

    // A second instance reading the same database starts too.
    let (status, second) = draas
        .post("/api/server/instances", Some(create_body("shop-copy", &pg)))
        .await;
    assert_eq!(status, 201, "{second}");
    let second_id = second["instance"]["id"].as_str().unwrap().to_string();
    let second_slot = second["instance"]["configuration"]["sources"][0]["slotName"]
        .as_str()
        .unwrap()
        .to_string();
    assert_ne!(slot, second_slot);
    let (status, body) = draas
        .post(
            &format!("/api/server/instances/{second_id}/start?wait=Running&timeout=60"),
            None,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    rows_become(&draas, &second_id, &[(3, 300), (4, 500)]).await;

    // The database goes away: the instance is degraded, naming its source.
    pg.stop();
    let degraded = draas
        .wait_state(&id, "Degraded", Duration::from_secs(60))
        .await;
    let message = degraded["status"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("source 'shop'"), "{degraded}");
    // It comes back: the source reconnects by itself.
    pg.start_again();
    draas
        .wait_state(&id, "Running", Duration::from_secs(90))
        .await;
    pg.sql("INSERT INTO orders VALUES (5, 'eve', 900)");
    rows_become(&draas, &id, &[(3, 300), (4, 500), (5, 900)]).await;

    // Deleting a running instance drops its slot (the server does).
    let (status, body) = draas
        .call(
            reqwest::Method::DELETE,
            &format!("/api/server/instances/{id}"),
            None,
        )
        .await;
    assert_eq!(status, 204, "{body}");
    assert!(!pg.slots().contains(&slot), "{:?}", pg.slots());

    // Deleting a stopped one too (the worker runs the runtime to drop it).
    stop_then_delete(&draas, &pg, &second_id, &second_slot).await;
    assert!(pg.slots().is_empty(), "{:?}", pg.slots());
}

/// Stops instance `id` (its slot stays: a stopped instance resumes where it
/// stopped), then deletes it (its slot is dropped without a running server).
async fn stop_then_delete(draas: &Draas, pg: &PostgresServer, id: &str, slot: &str) {
    let (status, body) = draas
        .post(&format!("/api/server/instances/{id}/stop"), None)
        .await;
    assert_eq!(status, 200, "{body}");
    assert!(
        pg.slots().iter().any(|s| s == slot),
        "a stopped instance keeps its slot"
    );
    let (status, body) = draas
        .call(
            reqwest::Method::DELETE,
            &format!("/api/server/instances/{id}"),
            None,
        )
        .await;
    assert_eq!(status, 204, "{body}");
    assert!(!pg.slots().iter().any(|s| s == slot), "{:?}", pg.slots());
}

/// The Docker bridge's gateway: the host address a container reaches (the
/// network's gateway when the engine says it, else the bridge interface's
/// address).
fn bridge_gateway() -> String {
    let output = std::process::Command::new("docker")
        .args([
            "network",
            "inspect",
            "bridge",
            "--format",
            "{{range .IPAM.Config}}{{.Gateway}}{{end}}",
        ])
        .output()
        .expect("docker network inspect");
    let gateway = String::from_utf8_lossy(&output.stdout).trim().to_string();
    if !gateway.is_empty() {
        return gateway;
    }
    let output = std::process::Command::new("ip")
        .args(["-4", "-o", "addr", "show", "dev", "docker0"])
        .output()
        .expect("ip addr");
    let text = String::from_utf8_lossy(&output.stdout);
    text.split_whitespace()
        .skip_while(|w| *w != "inet")
        .nth(1)
        .and_then(|cidr| cidr.split('/').next())
        .map(str::to_string)
        .expect("the docker0 bridge's address")
}

/// Removes the containers and volume of instance `id` when dropped (a
/// failing test leaves nothing running).
struct Containers(String);

impl Drop for Containers {
    fn drop(&mut self) {
        let listed = std::process::Command::new("docker")
            .args([
                "ps",
                "-aq",
                "--filter",
                &format!("label=draas.instanceId={}", self.0),
            ])
            .output();
        if let Ok(listed) = listed {
            for container in String::from_utf8_lossy(&listed.stdout).split_whitespace() {
                let _ = std::process::Command::new("docker")
                    .args(["rm", "-f", container])
                    .output();
            }
        }
        let _ = std::process::Command::new("docker")
            .args(["volume", "rm", "-f", &format!("draas-{}-data", self.0)])
            .output();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_container_follows_a_database_on_its_host_and_leaves_no_slot() {
    let dir = tempfile::tempdir().unwrap();
    // Servers outlive their control plane by design: none outlives the test.
    let _reaper = common::Reaper(dir.path().to_path_buf());
    let gateway = bridge_gateway();
    let pg = PostgresServer::start_listening_on(&[&gateway]);
    shop(&pg);
    let draas = Draas::up_with_args(
        dir.path(),
        &["--docker", "on", "--docker-image", "draas-runtime:e2e"],
    )
    .await;
    let mut body = create_body("shop-box", &pg);
    body["platformType"] = json!("Docker");
    body["serverConfiguration"]["environment"]["PG_HOST"] = json!(gateway);
    let (status, created) = draas.post("/api/server/instances", Some(body)).await;
    assert_eq!(status, 201, "{created}");
    let id = created["instance"]["id"].as_str().unwrap().to_string();
    let _cleanup = Containers(id.clone());
    let slot = created["instance"]["configuration"]["sources"][0]["slotName"]
        .as_str()
        .unwrap()
        .to_string();
    let (status, started) = draas
        .post(
            &format!("/api/server/instances/{id}/start?wait=Running&timeout=90"),
            None,
        )
        .await;
    assert_eq!(status, 200, "{started}");
    assert!(pg.slots().contains(&slot), "reserved: {:?}", pg.slots());
    pg.sql("INSERT INTO orders VALUES (7, 'gil', 700)");
    rows_become(&draas, &id, &[(1, 250), (3, 120), (7, 700)]).await;
    draas.logged(&id, "NEW ORDER 7 by gil").await;

    // Stopped, then deleted: the worker runs the runtime's image once to
    // drop the slot.
    stop_then_delete(&draas, &pg, &id, &slot).await;
}
