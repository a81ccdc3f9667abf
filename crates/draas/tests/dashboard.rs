//! The web dashboard in a real browser: Debian's headless Chromium, driven
//! through chromedriver (WebDriver), against a real `draas up
//! --require-auth` running real Drasi servers. An operator signs in with an
//! API key, creates an instance in the form, watches it become Running
//! without a reload, sees its query's results change, stops it, and gets a
//! validation error shown at its line in the configuration editor.
//! Screenshots are kept as artefacts (`$DRAAS_ARTEFACTS`, default
//! `<target dir>/artefacts`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::Draas;
use draas_testkit::process::TestProcess;
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::json;

/// How long the page may take to show what the test waits for.
const PATIENCE: Duration = Duration::from_secs(45);

/// A chromedriver on a free loopback port, started in `dir` (so the test's
/// reaper also ends the Chromium it starts, should the test fail).
fn chromedriver(dir: &Path) -> (TestProcess, u16) {
    let port = draas_testkit::free_port();
    let mut command = Command::new("chromedriver");
    command
        .arg(format!("--port={port}"))
        .arg("--allowed-ips=127.0.0.1")
        .current_dir(dir);
    let process = TestProcess::spawn(command, "chromedriver", dir)
        .expect("chromedriver (Debian package chromium-driver) runs");
    (process, port)
}

async fn browser(dir: &Path, port: u16) -> Client {
    let profile = dir.join("chromium-profile");
    std::fs::create_dir_all(&profile).unwrap();
    let mut capabilities = serde_json::Map::new();
    capabilities.insert(
        "goog:chromeOptions".into(),
        json!({
            "args": [
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--window-size=1400,1800",
                format!("--user-data-dir={}", profile.display()),
            ]
        }),
    );
    let url = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        match ClientBuilder::new(connector)
            .capabilities(capabilities.clone())
            .connect(&url)
            .await
        {
            Ok(client) => return client,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("no WebDriver session from chromedriver: {e}"),
        }
    }
}

/// The text of the first element `css` selects, once `done` accepts it.
async fn text_when(client: &Client, css: &str, what: &str, done: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + PATIENCE;
    let mut last = String::from("(no such element)");
    loop {
        if let Ok(element) = client.find(Locator::Css(css)).await {
            if let Ok(text) = element.text().await {
                if done(&text) {
                    return text;
                }
                last = text;
            }
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {PATIENCE:?} waiting for {what} ({css}); last seen: {last:?}"
        );
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
}

/// Clicks the first element `css` selects.
async fn click(client: &Client, css: &str) {
    client
        .find(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("no {css} to click: {e}"))
        .click()
        .await
        .unwrap();
}

fn artefacts() -> PathBuf {
    let dir = std::env::var_os("DRAAS_ARTEFACTS")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("CARGO_TARGET_DIR").map(|t| PathBuf::from(t).join("artefacts"))
        })
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/artefacts")
        });
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

async fn screenshot(client: &Client, name: &str) -> PathBuf {
    let png = client.screenshot().await.expect("a screenshot");
    assert!(png.starts_with(b"\x89PNG"), "the screenshot is a PNG");
    assert!(
        png.len() > 10_000,
        "the screenshot shows a page ({} bytes)",
        png.len()
    );
    let path = artefacts().join(name);
    std::fs::write(&path, png).unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_runs_an_instance_from_the_dashboard() {
    let dir = tempfile::tempdir().unwrap();
    let _reaper = common::Reaper(dir.path().to_path_buf());
    let server = Draas::up_with_args(dir.path(), &["--require-auth"]).await;
    let operator = common::create_key(
        &["--data-dir", &server.data.display().to_string()],
        "operator",
        "browser-operator",
    );
    let (_driver, driver_port) = chromedriver(dir.path());
    let client = browser(dir.path(), driver_port).await;

    // The page is public, the data is not: without a key it asks for one.
    client.goto(&server.url("/")).await.unwrap();
    let token_box = client
        .wait()
        .at_most(PATIENCE)
        .for_element(Locator::Css("#token"))
        .await
        .expect("a sign-in form");
    token_box.send_keys(&operator).await.unwrap();
    click(&client, "#sign-in").await;
    client
        .wait()
        .at_most(PATIENCE)
        .for_element(Locator::Css("#instances"))
        .await
        .expect("the instance list after signing in");
    text_when(&client, "#live", "the event stream", |t| t == "live").await;
    text_when(&client, "#platforms", "the Process worker", |t| {
        t.contains("Process") && t.contains("s ago")
    })
    .await;

    // A mark in the page: if the page were reloaded, it would be gone.
    client
        .execute("window.draasTestMark = 'still here'; return true;", vec![])
        .await
        .unwrap();

    // Create it in the form (the example configuration: a counter source, a
    // Cypher query over it, a log reaction), started at once.
    client
        .find(Locator::Css("#create-name"))
        .await
        .unwrap()
        .send_keys("browser-made")
        .await
        .unwrap();
    click(&client, "#create-submit").await;
    let row = r#"tr[data-name="browser-made"] td.state"#;
    text_when(&client, row, "the new row", |t| !t.is_empty()).await;
    text_when(&client, row, "Running in the list", |t| t == "Running").await;
    let mark = client
        .execute("return window.draasTestMark || null;", vec![])
        .await
        .unwrap();
    assert_eq!(
        mark,
        json!("still here"),
        "the list changed without a reload"
    );
    let (code, instance) = server.get("/api/server/instances/browser-made").await;
    assert_eq!(code, 200, "{instance}");
    assert_eq!(instance["status"]["state"], "Running");
    assert_eq!(instance["platformType"], "Process");
    assert!(
        instance["configuration"]["queries"][0]["query"]
            .as_str()
            .unwrap()
            .contains("MATCH (c:Counter)"),
        "{instance}"
    );
    text_when(&client, "#timeline", "the change in the timeline", |t| {
        t.contains("browser-made") && t.contains("Running")
    })
    .await;
    screenshot(&client, "dashboard-list.png").await;

    // Its page: status, runtime, and the query's rows, which change as the
    // counter counts.
    click(&client, r#"tr[data-name="browser-made"] a"#).await;
    text_when(&client, "#state", "Running on the instance page", |t| {
        t == "Running"
    })
    .await;
    text_when(&client, "#runtime", "the runtime info", |t| {
        t.contains("http://")
    })
    .await;
    let first = text_when(&client, "#results tbody", "query rows", |t| {
        !t.trim().is_empty()
    })
    .await;
    let later = text_when(&client, "#results tbody", "the rows to change", |t| {
        !t.trim().is_empty() && t != first
    })
    .await;
    assert_ne!(first, later);
    // The data plane: the query runs, with its result rows counted.
    text_when(
        &client,
        r#"#data-plane tr[data-component="values"]"#,
        "the query in the data plane",
        |t| t.contains("Running") && t.contains("query"),
    )
    .await;
    text_when(
        &client,
        r#"#data-plane tr[data-component="values"] td.results"#,
        "the query's result count",
        |t| t.trim().parse::<u64>().is_ok_and(|n| n > 0),
    )
    .await;
    text_when(&client, "#logs", "the log tail", |t| !t.trim().is_empty()).await;
    text_when(&client, "#history", "the restart history", |t| {
        t.contains("Running")
    })
    .await;

    // Stop it from the page: the badge follows without a reload.
    client
        .execute(
            "window.draasTestMark = 'instance page'; return true;",
            vec![],
        )
        .await
        .unwrap();
    client
        .find(Locator::Css(
            r#"#instance-actions button[data-action="stop"]"#,
        ))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    text_when(&client, "#state", "Stopped", |t| t == "Stopped").await;
    let mark = client
        .execute("return window.draasTestMark || null;", vec![])
        .await
        .unwrap();
    assert_eq!(mark, json!("instance page"));
    let (_, instance) = server.get("/api/server/instances/browser-made").await;
    assert_eq!(instance["status"]["state"], "Stopped", "{instance}");

    // A configuration the server refuses: the problem is shown at its line
    // (line 9: the query), and nothing changes.
    let generation = instance["generation"].as_u64().unwrap();
    let bad = "sources:\n- kind: mock\n  id: counter\n  dataType:\n    type: counter\n  intervalMs: 1000\nqueries:\n- id: values\n  query: THIS IS NOT CYPHER\n  sources:\n  - sourceId: counter\n";
    let editor = client.find(Locator::Css("#config-editor")).await.unwrap();
    text_when(&client, "#config-note", "the loaded configuration", |t| {
        t.starts_with("Generation")
    })
    .await;
    editor.clear().await.unwrap();
    editor.send_keys(bad).await.unwrap();
    click(&client, "#config-save").await;
    let problem = text_when(
        &client,
        r#"#config-problems li[data-line="9"]"#,
        "the problem at line 9",
        |t| !t.is_empty(),
    )
    .await;
    assert!(problem.contains("/queries/0/query"), "{problem}");
    let marked = client
        .find(Locator::Css(r#".gutter span.error[data-line="9"]"#))
        .await
        .expect("line 9 marked in the gutter");
    assert_eq!(marked.text().await.unwrap(), "9");
    let (_, after) = server.get("/api/server/instances/browser-made").await;
    assert_eq!(
        after["generation"].as_u64(),
        Some(generation),
        "nothing changed"
    );
    let shot = screenshot(&client, "dashboard-instance.png").await;
    eprintln!("screenshots in {}", shot.parent().unwrap().display());

    // A fixed configuration is accepted and becomes the next generation.
    let fixed = bad.replace(
        "THIS IS NOT CYPHER",
        "MATCH (c:Counter) RETURN c.value AS value",
    );
    editor.clear().await.unwrap();
    editor.send_keys(&fixed).await.unwrap();
    click(&client, "#config-save").await;
    text_when(&client, "#config-note", "the save", |t| {
        t.starts_with("Saved")
    })
    .await;
    let (_, after) = server.get("/api/server/instances/browser-made").await;
    assert_eq!(
        after["generation"].as_u64(),
        Some(generation + 1),
        "{after}"
    );
    let problems = client
        .find_all(Locator::Css("#config-problems li"))
        .await
        .unwrap();
    assert!(problems.is_empty(), "the problems are cleared");

    client.close().await.unwrap();
}
