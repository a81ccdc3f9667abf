//! A real PostgreSQL server for tests (Debian's `postgresql` package), in
//! a cluster of its own: `initdb` in a temporary directory, logical
//! replication on (`wal_level=logical`), listening on a free port of
//! 127.0.0.1 (and of any other address asked for), password
//! authentication (SCRAM) for TCP. It is stopped and its files removed
//! when the value is dropped.
//!
//! PostgreSQL refuses to run as root: as root, the cluster belongs to the
//! `postgres` user the package creates, and the server runs as that user.

use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::process::TestProcess;

/// The role tests connect as: a superuser that may replicate.
pub const USER: &str = "drasi";
/// Its password.
pub const PASSWORD: &str = "drasi-test-password";
/// The database made for tests.
pub const DATABASE: &str = "draas";

/// A running (or stopped) test PostgreSQL.
pub struct PostgresServer {
    process: Option<TestProcess>,
    /// Its port.
    pub port: u16,
    dir: PathBuf,
    bin: PathBuf,
    owner: Option<(u32, u32)>,
    listen: Vec<String>,
    starts: usize,
}

/// Where Debian puts the server's programs: `/usr/lib/postgresql/<v>/bin`,
/// the newest version installed.
fn binaries() -> PathBuf {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL is installed (scripts/test.sh installs Debian's postgresql)")
        .flatten()
        .filter_map(|e| {
            let version: u32 = e.file_name().to_string_lossy().parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .collect();
    versions.sort();
    versions
        .pop()
        .map(|(_, bin)| bin)
        .expect("an initdb under /usr/lib/postgresql/*/bin")
}

/// The `postgres` user's uid and gid, when this process is root.
fn owner() -> Option<(u32, u32)> {
    if !nix::unistd::Uid::effective().is_root() {
        return None;
    }
    let user = nix::unistd::User::from_name("postgres")
        .ok()
        .flatten()
        .expect("the postgres user (Debian's postgresql package creates it)");
    Some((user.uid.as_raw(), user.gid.as_raw()))
}

impl PostgresServer {
    /// Initialises and starts a cluster listening on 127.0.0.1.
    pub fn start() -> Self {
        Self::start_listening_on(&[])
    }

    /// Like [`start`](Self::start), listening also on `addresses` (e.g.
    /// the Docker bridge's gateway, for containers), which it trusts with
    /// passwords as it does loopback.
    pub fn start_listening_on(addresses: &[&str]) -> Self {
        let owner = owner();
        // A directory the postgres user can reach (a test's temporary
        // directory is root's own).
        let dir = std::env::temp_dir().join(format!("draas-pg-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).expect("create the cluster's directory");
        let bin = binaries();
        let mut server = Self {
            process: None,
            port: crate::free_port(),
            dir,
            bin,
            owner,
            listen: std::iter::once("127.0.0.1".to_string())
                .chain(addresses.iter().map(|a| a.to_string()))
                .collect(),
            starts: 0,
        };
        server.init();
        server.launch();
        server.setup();
        server
    }

    fn as_owner(&self, command: &mut Command) {
        if let Some((uid, gid)) = self.owner {
            command.uid(uid).gid(gid);
        }
    }

    fn chown(&self, path: &Path) {
        if let Some((uid, gid)) = self.owner {
            std::os::unix::fs::chown(path, Some(uid), Some(gid)).expect("chown to postgres");
        }
    }

    fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    fn init(&self) {
        self.chown(&self.dir);
        let password_file = self.dir.join("password");
        std::fs::write(&password_file, format!("{PASSWORD}\n")).expect("write the password file");
        self.chown(&password_file);
        let mut command = Command::new(self.bin.join("initdb"));
        command
            .arg("-D")
            .arg(self.data())
            .args([
                "-U",
                USER,
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
            ])
            .arg(format!("--pwfile={}", password_file.display()))
            .args(["-E", "UTF8", "--locale=C.UTF-8"])
            .current_dir(&self.dir);
        self.as_owner(&mut command);
        let output = command.output().expect("run initdb");
        assert!(
            output.status.success(),
            "initdb failed: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        // Password logins from every address it listens on.
        let mut hba =
            std::fs::read_to_string(self.data().join("pg_hba.conf")).expect("read pg_hba.conf");
        for address in self.listen.iter().skip(1) {
            let net = match address.rsplit_once('.') {
                Some((head, _)) if address.contains('.') => format!("{head}.0/16"),
                _ => format!("{address}/32"),
            };
            hba.push_str(&format!("host all all {net} scram-sha-256\n"));
            hba.push_str(&format!("host replication all {net} scram-sha-256\n"));
        }
        // Docker's bridge networks, for containers that reach the test
        // database through their gateway.
        hba.push_str("host all all 172.16.0.0/12 scram-sha-256\n");
        std::fs::write(self.data().join("pg_hba.conf"), hba).expect("write pg_hba.conf");
    }

    fn launch(&mut self) {
        let mut command = Command::new(self.bin.join("postgres"));
        command
            .arg("-D")
            .arg(self.data())
            .args(["-p", &self.port.to_string()])
            .args(["-c", &format!("listen_addresses={}", self.listen.join(","))])
            .args([
                "-c",
                &format!("unix_socket_directories={}", self.dir.display()),
            ])
            .args(["-c", "wal_level=logical"])
            .args(["-c", "max_replication_slots=32"])
            .args(["-c", "max_wal_senders=32"])
            .args(["-c", "fsync=off"])
            .current_dir(&self.dir);
        self.as_owner(&mut command);
        self.starts += 1;
        let name = format!("postgres-{}-{}", self.port, self.starts);
        let process = TestProcess::spawn(command, &name, &std::env::temp_dir())
            .expect("start postgres (scripts/test.sh installs Debian's postgresql)");
        self.process = Some(process);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if TcpStream::connect(("127.0.0.1", self.port)).is_ok() && self.ready() {
                return;
            }
            let process = self.process.as_mut().expect("started");
            assert!(
                process.is_running(),
                "postgres exited: {}",
                process.stderr()
            );
            assert!(
                Instant::now() < deadline,
                "postgres did not accept connections on port {}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Whether it accepts queries (not only connections: it may still be
    /// starting up or recovering).
    fn ready(&self) -> bool {
        let mut command = Command::new(self.bin.join("pg_isready"));
        command.args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-q"]);
        command.status().map(|s| s.success()).unwrap_or(false)
    }

    fn setup(&self) {
        self.psql(&format!("CREATE DATABASE {DATABASE}"), "postgres");
    }

    /// Runs `sql` in database `database` as the superuser, through the
    /// server's own socket (`psql`); panics when it fails.
    pub fn psql(&self, sql: &str, database: &str) -> String {
        let output = Command::new(self.bin.join("psql"))
            .args(["-h"])
            .arg(&self.dir)
            .args(["-p", &self.port.to_string(), "-U", USER, "-d", database])
            .args(["-v", "ON_ERROR_STOP=1", "-X", "-q", "-A", "-t", "-c", sql])
            .output()
            .expect("run psql");
        assert!(
            output.status.success(),
            "psql {sql:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).trim().to_string()
    }

    /// Runs `sql` in the test database.
    pub fn sql(&self, sql: &str) -> String {
        self.psql(sql, DATABASE)
    }

    /// The names of the replication slots that exist.
    pub fn slots(&self) -> Vec<String> {
        self.sql("SELECT slot_name FROM pg_replication_slots ORDER BY slot_name")
            .lines()
            .map(str::to_string)
            .filter(|l| !l.is_empty())
            .collect()
    }

    /// Stops it (a fast shutdown: clients are cut off), keeping its data.
    pub fn stop(&mut self) {
        if let Some(mut process) = self.process.take() {
            process.signal(nix::sys::signal::Signal::SIGINT);
            process.wait_timeout(Duration::from_secs(30));
        }
    }

    /// Starts it again on the same port, with the same data.
    pub fn start_again(&mut self) {
        self.stop();
        self.launch();
    }
}

impl Drop for PostgresServer {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
