//! A real `redis-server` for tests, on a free loopback port, with
//! persistence (AOF, fsync always) in its own directory, so it can be
//! stopped and started again without losing what was written.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::process::TestProcess;

/// A running (or stopped) test Redis.
pub struct RedisServer {
    process: Option<TestProcess>,
    /// Its port on 127.0.0.1.
    pub port: u16,
    /// Its password, if it requires one.
    pub password: Option<String>,
    dir: PathBuf,
    starts: usize,
    tls: bool,
}

impl RedisServer {
    /// Starts one in `dir` (data and logs go there).
    pub fn start(dir: &Path) -> Self {
        Self::start_with(dir, None)
    }

    /// Starts one that requires `password` (AUTH).
    pub fn start_with(dir: &Path, password: Option<&str>) -> Self {
        let mut server = Self {
            process: None,
            port: crate::free_port(),
            password: password.map(str::to_string),
            dir: dir.to_path_buf(),
            starts: 0,
            tls: false,
        };
        server.launch();
        server
    }

    /// Starts one that speaks only TLS, with a certificate for 127.0.0.1
    /// and localhost signed by a CA of its own ([`ca_path`](Self::ca_path)),
    /// and requires `password`.
    pub fn start_tls(dir: &Path, password: &str) -> Self {
        make_certificates(dir);
        let mut server = Self {
            process: None,
            port: crate::free_port(),
            password: Some(password.to_string()),
            dir: dir.to_path_buf(),
            starts: 0,
            tls: true,
        };
        server.launch();
        server
    }

    /// The CA certificate (PEM) of a TLS server.
    pub fn ca_path(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// `redis://` (or `rediss://`) URL, with the password when there is one.
    pub fn url(&self) -> String {
        let scheme = if self.tls { "rediss" } else { "redis" };
        match &self.password {
            Some(p) => format!("{scheme}://:{p}@127.0.0.1:{}", self.port),
            None => format!("{scheme}://127.0.0.1:{}", self.port),
        }
    }

    fn launch(&mut self) {
        let mut command = Command::new("redis-server");
        if self.tls {
            command
                .args(["--port", "0", "--tls-port", &self.port.to_string()])
                .arg("--tls-cert-file")
                .arg(self.dir.join("server.pem"))
                .arg("--tls-key-file")
                .arg(self.dir.join("server.key"))
                .arg("--tls-ca-cert-file")
                .arg(self.dir.join("ca.pem"))
                .args(["--tls-auth-clients", "no"]);
        } else {
            command.args(["--port", &self.port.to_string()]);
        }
        command
            .args(["--bind", "127.0.0.1"])
            .args([
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
            ])
            .arg("--dir")
            .arg(&self.dir)
            .args(["--protected-mode", "no"]);
        if let Some(p) = &self.password {
            command.args(["--requirepass", p]);
        }
        self.starts += 1;
        let name = format!("redis-{}-{}", self.port, self.starts);
        let process = TestProcess::spawn(command, &name, &self.dir)
            .expect("start redis-server (is it installed? scripts/test.sh installs it)");
        self.process = Some(process);
        self.wait_until_up();
    }

    fn wait_until_up(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if self.answers() {
                return;
            }
            let process = self.process.as_mut().expect("started");
            assert!(
                process.is_running(),
                "redis-server exited: {}",
                process.stdout()
            );
            assert!(
                Instant::now() < deadline,
                "redis-server did not answer on port {}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn answers(&self) -> bool {
        if self.tls {
            // A TLS handshake is not worth a client here: the port
            // accepting connections means the server is up.
            return TcpStream::connect(("127.0.0.1", self.port)).is_ok();
        }
        let Ok(mut stream) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
        if stream.write_all(b"PING\r\n").is_err() {
            return false;
        }
        let mut buf = [0u8; 64];
        match stream.read(&mut buf) {
            // +PONG, or -NOAUTH when a password is required: either way, up.
            Ok(n) if n > 0 => buf[0] == b'+' || buf.starts_with(b"-NOAUTH"),
            _ => false,
        }
    }

    /// Kills it (SIGKILL): what is in the AOF survives.
    pub fn kill(&mut self) {
        if let Some(mut process) = self.process.take() {
            process.signal(nix::sys::signal::Signal::SIGKILL);
            process.wait_timeout(Duration::from_secs(10));
        }
    }

    /// Starts it again on the same port and directory.
    pub fn restart(&mut self) {
        self.kill();
        self.launch();
    }
}

/// A CA and a server certificate for 127.0.0.1 and localhost, made with
/// the `openssl` command line.
fn make_certificates(dir: &Path) {
    let run = |args: &[&str]| {
        let output = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("run openssl (scripts/test.sh installs it)");
        assert!(
            output.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    };
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=draas-test-ca",
    ]);
    run(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=localhost",
    ]);
    std::fs::write(
        dir.join("san.ext"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\n",
    )
    .expect("write san.ext");
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.pem",
        "-days",
        "2",
        "-extfile",
        "san.ext",
    ]);
}
