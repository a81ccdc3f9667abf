//! PostgreSQL change data capture: an INSERT until its row is visible in
//! the query's results, under DRaaS and with the same runtime and
//! configuration started bare, side by side in one run.
//!
//! Method:
//! - a PostgreSQL cluster of the benchmark's own (Debian's package, the
//!   testkit's: `wal_level=logical`, `fsync=off`), one table with a primary
//!   key and a publication of it;
//! - the same configuration (a postgres source with a postgres bootstrap,
//!   one Cypher query over the table, a log reaction) run (a) by `draas up`
//!   on the Process platform and (b) by `draas-runtime` spawned directly;
//! - each sample: one `INSERT` over an open connection (autocommit); the
//!   clock starts when the database acknowledged the commit and stops when
//!   a poll (every 0.5 ms) of the query's results shows the row: on the
//!   server's own API (the data plane: what DRaaS adds is nothing), and,
//!   for (a), also through DRaaS's results route (the control plane and the
//!   worker in the path).

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use draas_testkit::postgres_server::{PostgresServer, DATABASE, PASSWORD, USER};
use serde_json::{json, Value};

use crate::control_plane::DraasUp;
use crate::stats::{ms, ratio, Summary};

fn configuration(pg_port: u16, slot: &str) -> Value {
    json!({
        "sources": [{
            "kind": "postgres", "id": "shop", "host": "127.0.0.1", "port": pg_port,
            "database": DATABASE, "user": USER, "password": "${PG_PASSWORD}",
            "tables": ["orders"], "slotName": slot,
            "bootstrapProvider": {"kind": "postgres"}
        }],
        "queries": [{
            "id": "orders", "autoStart": true, "queryLanguage": "Cypher",
            "query": "MATCH (o:orders) RETURN o.id AS id, o.total AS total",
            "sources": [{"sourceId": "shop"}]
        }],
        "reactions": [{"kind": "log", "id": "console", "queries": ["orders"]}]
    })
}

/// Polls `url` (a results endpoint answering `{data|rows: [...]}`) until a
/// row with `id` shows; the time from `since`.
async fn visible(
    client: &reqwest::Client,
    url: &str,
    id: i64,
    since: Instant,
) -> anyhow::Result<Duration> {
    let deadline = since + Duration::from_secs(30);
    let mut last = String::new();
    loop {
        if let Ok(response) = client.get(url).send().await {
            if let Ok(body) = response.json::<Value>().await {
                let rows = body["data"].as_array().or_else(|| body["rows"].as_array());
                if rows.is_some_and(|r| r.iter().any(|row| row["id"] == id)) {
                    return Ok(since.elapsed());
                }
                last = body.to_string();
            }
        }
        if Instant::now() > deadline {
            last.truncate(2000);
            bail!("row {id} never showed at {url}; the last answer: {last}");
        }
        tokio::time::sleep(Duration::from_micros(500)).await;
    }
}

/// Runs `samples` inserts, timing each until it shows at `url`.
async fn measure(
    db: &tokio_postgres::Client,
    url: &str,
    first_id: i64,
    samples: usize,
) -> anyhow::Result<Vec<Duration>> {
    let client = reqwest::Client::new();
    let mut out = Vec::with_capacity(samples);
    for i in 0..samples {
        let id = first_id + i as i64;
        db.execute(
            "INSERT INTO orders (id, total) VALUES ($1, $2)",
            &[&(id as i32), &(100 + (i as i32))],
        )
        .await?;
        let committed = Instant::now();
        out.push(visible(&client, url, id, committed).await?);
        // The same quiet moment before every sample.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(out)
}

/// Runs the benchmark and prints Markdown.
pub async fn run(draas: &Path, runtime: &Path, samples: usize) -> anyhow::Result<()> {
    let pg = PostgresServer::start();
    pg.sql(
        "CREATE TABLE orders (id integer PRIMARY KEY, total integer NOT NULL);
         INSERT INTO orders VALUES (0, 1);
         CREATE PUBLICATION drasi_publication FOR TABLE orders;",
    );
    let (db, connection) = tokio_postgres::Config::new()
        .host("127.0.0.1")
        .port(pg.port)
        .dbname(DATABASE)
        .user(USER)
        .password(PASSWORD)
        .connect(tokio_postgres::NoTls)
        .await
        .context("connect to the benchmark's PostgreSQL")?;
    tokio::spawn(connection);

    // (a) Under DRaaS.
    let up = DraasUp::start_with(draas, runtime, "23000-23099", &["--docker", "off"]).await?;
    let id = up
        .create(json!({
            "name": "cdc", "platformType": "Process",
            "serverConfiguration": {"environment": {"PG_PASSWORD": PASSWORD}},
            "configuration": configuration(pg.port, "bench_managed")
        }))
        .await?;
    let started = up
        .post(
            &format!("/api/server/instances/{id}/start?wait=Running&timeout=60"),
            json!({}),
        )
        .await?;
    let endpoint = started["runtime"]["endpoint"]
        .as_str()
        .context("endpoint")?
        .replace("localhost", "127.0.0.1");
    let server_url = format!("{endpoint}/api/v1/queries/orders/results");
    let route_url = up.url(&format!(
        "/api/server/instances/{id}/queries/orders/results"
    ));
    // Warm the path (and the slot) before measuring.
    measure(&db, &server_url, 1_000_000, 5).await?;
    let managed = measure(&db, &server_url, 1, samples).await?;
    let through_route = measure(&db, &route_url, 100_000, samples).await?;
    drop(up);

    // (b) Bare: the same runtime and configuration, spawned directly.
    let dir = tempfile::tempdir()?;
    let port = draas_testkit::free_port();
    let mut config = configuration(pg.port, "bench_bare");
    config["id"] = json!("bare");
    config["host"] = json!("127.0.0.1");
    config["port"] = json!(port);
    config["persistConfig"] = json!(false);
    std::fs::write(
        dir.path().join("server.yaml"),
        serde_json::to_string(&config)?,
    )?;
    let mut child = Command::new(runtime)
        .current_dir(dir.path())
        .args(["--config", "server.yaml"])
        .env("PG_PASSWORD", PASSWORD)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("spawn draas-runtime")?;
    let bare_url = format!("http://127.0.0.1:{port}/api/v1/queries/orders/results");
    let ready = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while ready
        .get(&bare_url)
        .send()
        .await
        .map(|r| !r.status().is_success())
        .unwrap_or(true)
    {
        if Instant::now() > deadline {
            let _ = child.kill();
            bail!("the bare runtime did not become ready");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    measure(&db, &bare_url, 2_000_000, 5).await?;
    let bare = measure(&db, &bare_url, 10_000, samples).await?;
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    );
    let _ = child.wait();

    let server = Summary::of(&managed);
    let route = Summary::of(&through_route);
    let bare = Summary::of(&bare);
    println!("### PostgreSQL INSERT → row in the query's results ({samples} inserts each)\n");
    println!("| path | p50 | p95 | p99 | max |");
    println!("|---|---|---|---|---|");
    for (what, s) in [
        ("under DRaaS, read on the server's own API", &server),
        (
            "under DRaaS, read through DRaaS (`GET .../queries/orders/results`)",
            &route,
        ),
        ("bare runtime, same configuration, its own API", &bare),
    ] {
        println!(
            "| {what} | {} ms | {} ms | {} ms | {} ms |",
            ms(s.p50),
            ms(s.p95),
            ms(s.p99),
            ms(s.max)
        );
    }
    println!(
        "\nRatios (p50): the data plane under DRaaS **{}** bare; through DRaaS's route **{}** bare.\n",
        ratio(server.p50, bare.p50),
        ratio(route.p50, bare.p50)
    );
    Ok(())
}
