//! HTTPS for the API: `draas up --tls-cert --tls-key` answers HTTPS only
//! (checked with curl against the certificate as the only trusted root),
//! plain HTTP gets nothing, and the embedded reconciler still heals.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{runtime_binary, DRAAS};
use draas_testkit::process::TestProcess;
use serde_json::Value;

/// A self-signed certificate for 127.0.0.1 (openssl CLI).
fn certificate(dir: &Path) -> (String, String) {
    let (cert, key) = (dir.join("api.pem"), dir.join("api.key"));
    let status = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
        ])
        .args(["-nodes", "-days", "1", "-subj", "/CN=draas-test"])
        .args(["-addext", "subjectAltName=IP:127.0.0.1"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl");
    assert!(
        status.status.success(),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );
    (cert.display().to_string(), key.display().to_string())
}

/// `curl` with the certificate as its only root: status and JSON body.
fn curl(cert: &str, method: &str, url: &str) -> (u16, Value) {
    let output = Command::new("curl")
        .args(["-sS", "--max-time", "60", "--cacert", cert, "-X", method])
        .args(["-w", "\n%{http_code}", url])
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&output.stdout).to_string();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (
        code.trim().parse().unwrap_or(0),
        serde_json::from_str(body).unwrap_or(Value::Null),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_answers_https_only_and_the_reconciler_still_heals() {
    let dir = tempfile::tempdir().unwrap();
    let _reaper = common::Reaper(dir.path().to_path_buf());
    let (cert, key) = certificate(dir.path());
    let port = draas_testkit::free_port();
    let mut command = Command::new(DRAAS);
    command
        .args(["up", "--listen", &format!("127.0.0.1:{port}")])
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .arg("--runtime")
        .arg(runtime_binary())
        .args(["--port-range", &common::port_range()])
        .args(["--tls-cert", &cert, "--tls-key", &key])
        .args([
            "--docker",
            "off",
            "--kubernetes",
            "off",
            "--reconcile",
            "on",
        ])
        .env("RUST_LOG", "info");
    let mut process = TestProcess::spawn(command, "draas", dir.path()).unwrap();
    let base = format!("https://127.0.0.1:{port}");
    let platforms = format!("{base}/api/server/platforms");
    draas_testkit::wait_for("the HTTPS API", Duration::from_secs(30), || {
        assert!(process.is_running(), "{}", process.stderr());
        let (status, body) = curl(&cert, "GET", &platforms);
        let ready = status == 200 && body["platforms"][0]["available"] == true;
        async move { ready.then_some(()) }
    })
    .await;

    // Plain HTTP on the same port gets no answer.
    let plain = Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "5",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
        ])
        .arg(format!("http://127.0.0.1:{port}/healthz"))
        .output()
        .unwrap();
    assert_ne!(String::from_utf8_lossy(&plain.stdout).trim(), "200");

    // An instance started over HTTPS is healed by the reconciler after
    // kill -9 (it talks to the API over its own loopback listener).
    let created = Command::new("curl")
        .args([
            "-sS",
            "--cacert",
            &cert,
            "-H",
            "content-type: application/json",
        ])
        .args(["-d", r#"{"name": "secure", "platformType": "Process"}"#])
        .arg(format!("{base}/api/server/instances"))
        .output()
        .unwrap();
    let created: Value = serde_json::from_slice(&created.stdout).unwrap();
    let id = created["instance"]["id"]
        .as_str()
        .expect("created")
        .to_string();
    let (status, started) = curl(
        &cert,
        "POST",
        &format!("{base}/api/server/instances/{id}/start?wait=Running&timeout=60"),
    );
    assert_eq!(status, 200, "{started}");
    let pid = common::server_pid(&started).unwrap();
    common::kill9(pid);
    let instance = format!("{base}/api/server/instances/{id}");
    draas_testkit::wait_for("the reconciler to heal it", Duration::from_secs(30), || {
        let (_, body) = curl(&cert, "GET", &instance);
        let healed = body["status"]["state"] == "Running" && common::server_pid(&body) != Some(pid);
        async move { healed.then_some(()) }
    })
    .await;
}
