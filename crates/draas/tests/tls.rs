//! HTTPS for the API: `draas up --tls-cert --tls-key` answers HTTPS only
//! (checked with curl against the certificate as the only trusted root),
//! plain HTTP gets nothing, the embedded reconciler still heals, the CLI
//! trusts the certificate it is given (`--ca-cert`, or a context's) and no
//! other, and a separate `draas reconcile --ca-cert` heals from outside.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{runtime_binary, DRAAS};
use draas_testkit::process::TestProcess;
use serde_json::Value;

/// A private CA and a server certificate for 127.0.0.1 it signed (openssl
/// CLI): (the CA's certificate, the server's certificate, its key).
fn certificate(dir: &Path) -> (String, String, String) {
    let openssl = |args: &[&str]| {
        let output = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("openssl");
        assert!(
            output.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    };
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
    ];
    openssl(
        &[
            &["req", "-x509"][..],
            &ec,
            &[
                "-days",
                "1",
                "-subj",
                "/CN=draas-test-ca",
                "-keyout",
                "ca.key",
                "-out",
                "ca.pem",
            ],
        ]
        .concat(),
    );
    openssl(
        &[
            &["req"][..],
            &ec,
            &[
                "-subj",
                "/CN=draas-test",
                "-keyout",
                "api.key",
                "-out",
                "api.csr",
            ],
        ]
        .concat(),
    );
    std::fs::write(
        dir.join("api.ext"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    openssl(&[
        "x509",
        "-req",
        "-in",
        "api.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "1",
        "-extfile",
        "api.ext",
        "-out",
        "api.pem",
    ]);
    let path = |name: &str| dir.join(name).display().to_string();
    (path("ca.pem"), path("api.pem"), path("api.key"))
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

/// `draas up` answering HTTPS on a free port with `server_cert`/`key`, its
/// reconciler `reconcile` (on|off), once its Process worker is live
/// (checked trusting the CA `cert`).
async fn https_up(
    dir: &Path,
    cert: &str,
    server_cert: &str,
    key: &str,
    reconcile: &str,
) -> (TestProcess, String) {
    let port = draas_testkit::free_port();
    let mut command = Command::new(DRAAS);
    command
        .args(["up", "--listen", &format!("127.0.0.1:{port}")])
        .arg("--data-dir")
        .arg(dir.join("data"))
        .arg("--runtime")
        .arg(runtime_binary())
        .args(["--port-range", &common::port_range()])
        .args(["--tls-cert", server_cert, "--tls-key", key])
        .args(["--docker", "off", "--kubernetes", "off"])
        .args(["--reconcile", reconcile])
        .env("RUST_LOG", "info");
    let mut process = TestProcess::spawn(command, "draas", dir).unwrap();
    let base = format!("https://127.0.0.1:{port}");
    let platforms = format!("{base}/api/server/platforms");
    draas_testkit::wait_for("the HTTPS API", Duration::from_secs(30), || {
        assert!(process.is_running(), "{}", process.stderr());
        let (status, body) = curl(cert, "GET", &platforms);
        let ready = status == 200 && body["platforms"][0]["available"] == true;
        async move { ready.then_some(()) }
    })
    .await;
    (process, base)
}

/// Creates and starts an instance over HTTPS, kills its server with
/// SIGKILL, and waits for a reconciler to run it again.
async fn kill_and_see_it_healed(base: &str, cert: &str, name: &str) {
    let created = Command::new("curl")
        .args([
            "-sS",
            "--cacert",
            cert,
            "-H",
            "content-type: application/json",
        ])
        .args([
            "-d",
            &format!(r#"{{"name": "{name}", "platformType": "Process"}}"#),
        ])
        .arg(format!("{base}/api/server/instances"))
        .output()
        .unwrap();
    let created: Value = serde_json::from_slice(&created.stdout).unwrap();
    let id = created["instance"]["id"]
        .as_str()
        .expect("created")
        .to_string();
    let (status, started) = curl(
        cert,
        "POST",
        &format!("{base}/api/server/instances/{id}/start?wait=Running&timeout=60"),
    );
    assert_eq!(status, 200, "{started}");
    let pid = common::server_pid(&started).unwrap();
    common::kill9(pid);
    let instance = format!("{base}/api/server/instances/{id}");
    draas_testkit::wait_for("a reconciler to heal it", Duration::from_secs(30), || {
        let (_, body) = curl(cert, "GET", &instance);
        let healed = body["status"]["state"] == "Running" && common::server_pid(&body) != Some(pid);
        async move { healed.then_some(()) }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_answers_https_only_and_the_reconciler_still_heals() {
    let dir = tempfile::tempdir().unwrap();
    let _reaper = common::Reaper(dir.path().to_path_buf());
    let (cert, server_cert, key) = certificate(dir.path());
    let (_process, base) = https_up(dir.path(), &cert, &server_cert, &key, "on").await;

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
        .arg(base.replace("https://", "http://") + "/healthz")
        .output()
        .unwrap();
    assert_ne!(String::from_utf8_lossy(&plain.stdout).trim(), "200");

    // An instance started over HTTPS is healed by the embedded reconciler
    // after kill -9 (it talks to the API over its own loopback listener).
    kill_and_see_it_healed(&base, &cert, "secure").await;

    // The CLI trusts the certificate it is given (flag or context), and
    // refuses to talk to a server whose certificate it cannot check.
    let client = |args: &[&str]| {
        Command::new(DRAAS)
            .args(args)
            .env("DRAAS_CONFIG", dir.path().join("contexts.yaml"))
            .env_remove("DRAAS_SERVER")
            .env_remove("DRAAS_CA_CERT")
            .output()
            .unwrap()
    };
    let got = client(&[
        "instance",
        "get",
        "secure",
        "-o",
        "json",
        "--server",
        &base,
        "--ca-cert",
        &cert,
    ]);
    assert!(got.status.success(), "{got:?}");
    let instance: Value = serde_json::from_slice(&got.stdout).unwrap();
    assert_eq!(instance["status"]["state"], "Running");
    let untrusted = client(&["instance", "get", "secure", "--server", &base]);
    assert_eq!(untrusted.status.code(), Some(5), "{untrusted:?}");
    let added = client(&[
        "context",
        "add",
        "secure",
        "--server",
        &base,
        "--ca-cert",
        &cert,
        "--use",
    ]);
    assert!(added.status.success(), "{added:?}");
    let listed = client(&["instance", "list", "-o", "json"]);
    assert!(listed.status.success(), "{listed:?}");
    assert!(String::from_utf8_lossy(&listed.stdout).contains("secure"));
}

/// `draas reconcile --ca-cert` heals what runs under an HTTPS control
/// plane it reaches from outside.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_separate_reconciler_reaches_an_https_control_plane() {
    let dir = tempfile::tempdir().unwrap();
    let _reaper = common::Reaper(dir.path().to_path_buf());
    let (cert, server_cert, key) = certificate(dir.path());
    let (_process, base) = https_up(dir.path(), &cert, &server_cert, &key, "off").await;
    let mut command = Command::new(DRAAS);
    command
        .args(["reconcile", "--control-plane", &base, "--ca-cert", &cert])
        .arg("--cursor-file")
        .arg(dir.path().join("cursor"))
        .env("RUST_LOG", "info");
    let mut reconciler = TestProcess::spawn(command, "reconcile", dir.path()).unwrap();
    draas_testkit::wait_for("the reconciler's lease", Duration::from_secs(20), || {
        assert!(reconciler.is_running(), "{}", reconciler.stderr());
        let (_, lease) = curl(&cert, "GET", &format!("{base}/api/reconciler/lease"));
        async move { (lease["live"] == true).then_some(()) }
    })
    .await;
    kill_and_see_it_healed(&base, &cert, "healed-from-outside").await;
}
