//! The runtime image, built the documented way (scripts/build-runtime-image.sh
//! from the static binary, nothing pulled), runs under the real Docker Engine.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use draas_testkit::{free_port, get_json, wait_for};

const BIN: &str = env!("CARGO_BIN_EXE_draas-runtime");

/// Removes the container and image whatever the test's outcome.
struct Cleanup {
    container: String,
    image: String,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = Command::new("docker")
            .args(["rm", "-f", &self.container])
            .output();
        let _ = Command::new("docker")
            .args(["rmi", "-f", &self.image])
            .output();
    }
}

fn docker(args: &[&str]) -> String {
    let output = Command::new("docker")
        .args(args)
        .output()
        .expect("run docker");
    assert!(
        output.status.success(),
        "docker {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

#[tokio::test]
async fn the_runtime_image_runs_under_docker_and_stops_gracefully() {
    let suffix = uuid_suffix();
    let image = format!("draas-runtime:test-{suffix}");
    let container = format!("draas-runtime-test-{suffix}");
    let _cleanup = Cleanup {
        container: container.clone(),
        image: image.clone(),
    };

    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/build-runtime-image.sh");
    let built = Command::new(script)
        .args(["--binary", BIN, "--tag", &image])
        .output()
        .expect("run build script");
    assert!(
        built.status.success(),
        "image build failed: {}",
        String::from_utf8_lossy(&built.stderr)
    );

    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("server.yaml");
    std::fs::write(
        &config,
        r#"
id: in-a-container
host: 0.0.0.0
port: 8080
sources:
  - {kind: mock, id: counter, dataType: {type: counter}, intervalMs: 100}
queries:
  - {id: count, autoStart: true, queryLanguage: Cypher, query: "MATCH (c:Counter) RETURN c.value AS value", sources: [{sourceId: counter}]}
reactions:
  - {kind: log, id: console, queries: [count]}
"#,
    )
    .expect("write config");
    let port = free_port();
    docker(&[
        "run",
        "--detach",
        "--name",
        &container,
        "--publish",
        &format!("127.0.0.1:{port}:8080"),
        "--volume",
        &format!("{}:/etc/drasi/server.yaml:ro", config.display()),
        &image,
    ]);

    let base = format!("http://127.0.0.1:{port}");
    wait_for(
        "/health from the container",
        Duration::from_secs(30),
        || {
            let url = format!("{base}/health");
            async move {
                get_json(&url)
                    .await
                    .filter(|(s, b)| *s == 200 && b["status"] == "ok")
            }
        },
    )
    .await;
    wait_for(
        "query results from the container",
        Duration::from_secs(30),
        || {
            let url = format!("{base}/api/v1/queries/count/results");
            async move {
                let (_, body) = get_json(&url).await?;
                body["data"]
                    .as_array()
                    .filter(|rows| !rows.is_empty())
                    .map(|_| ())
            }
        },
    )
    .await;

    // STOPSIGNAL SIGINT: docker stop gets a graceful exit 0, not a SIGKILL (137).
    docker(&["stop", "--time", "20", &container]);
    let code = docker(&["inspect", "--format", "{{.State.ExitCode}}", &container]);
    assert_eq!(code, "0", "logs: {}", docker(&["logs", &container]));
}

fn uuid_suffix() -> String {
    format!("{}-{}", std::process::id(), free_port())
}
