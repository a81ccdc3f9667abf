//! The `draas` client: instances, platforms and contexts over the REST API
//! (`--server URL --token T`, or a saved context). Tables by default,
//! `-o json|yaml|wide`; a spinner with the elapsed time while waiting, on a
//! terminal only; exit codes scripts can use ([`Exit`]).

#![allow(clippy::print_stdout, clippy::print_stderr)]

mod contexts;
mod more;
mod output;

pub use more::{ConfigCommand, QueryCommand, StatusCommand};

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Subcommand, ValueEnum};
use serde_json::{json, Value};

use contexts::{ContextEntry, Contexts};
use output::Output;

/// How a client command ended, as its exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// 0.
    Ok = 0,
    /// 1: the server refused or failed (a problem other than below).
    Failed = 1,
    /// 3: no such instance.
    NotFound = 3,
    /// 4: a wait ran out before the state was reached.
    TimedOut = 4,
    /// 5: the server could not be reached.
    Unreachable = 5,
    /// 6: the key is missing, unknown or not allowed.
    Denied = 6,
    /// 7: a bad local input (file, context).
    BadInput = 7,
}

/// Where and how to talk to the control plane.
#[derive(Args, Debug, Clone)]
pub struct Target {
    /// The control plane's URL [default: the current context's, else
    /// http://127.0.0.1:5000].
    #[arg(long, env = "DRAAS_SERVER", global = true)]
    pub server: Option<String>,
    /// The API key [default: the context's].
    #[arg(long, env = "DRAAS_TOKEN", hide_env_values = true, global = true)]
    pub token: Option<String>,
    /// The saved context to use [default: the current one].
    #[arg(long, global = true)]
    pub context: Option<String>,
    /// For an https:// server: a PEM file of the CA (or self-signed
    /// certificate) to trust besides the system's roots [default: the
    /// context's].
    #[arg(long, env = "DRAAS_CA_CERT", global = true)]
    pub ca_cert: Option<PathBuf>,
    /// Output: table, wide, json or yaml.
    #[arg(
        short = 'o',
        long = "output",
        value_enum,
        default_value = "table",
        global = true
    )]
    pub output: Output,
}

/// `draas instance ...`.
#[derive(Subcommand, Debug, Clone)]
pub enum InstanceCommand {
    /// Creates an instance (optionally with a drasi configuration file).
    Create {
        /// Its name (DNS-label-like).
        name: String,
        /// process, docker or kubernetes.
        #[arg(long, value_enum, default_value = "process")]
        platform: Platform,
        /// A YAML (or JSON) file with the configuration: host, port,
        /// logLevel, sources, queries, reactions.
        #[arg(short = 'f', long = "file")]
        file: Option<PathBuf>,
    },
    /// Lists instances.
    List,
    /// Shows one instance.
    Get {
        /// Name or id.
        name: String,
    },
    /// Starts it and waits until it runs.
    Start(Lifecycle),
    /// Stops it and waits until it stopped.
    Stop(Lifecycle),
    /// Restarts it and waits until it runs.
    Restart(Lifecycle),
    /// Deletes it and its server.
    Delete {
        /// Name or id.
        name: String,
        /// Even when its worker is gone.
        #[arg(long)]
        force: bool,
    },
    /// Prints the server's last output lines.
    Logs {
        /// Name or id.
        name: String,
        /// How many lines.
        #[arg(long, default_value_t = 100)]
        tail: usize,
        /// stdout or stderr.
        #[arg(long, default_value = "stdout")]
        stream: String,
        /// Keep printing new lines.
        #[arg(short = 'f', long)]
        follow: bool,
    },
    /// Waits until the instance is in a state.
    Wait {
        /// Name or id.
        name: String,
        /// The state (Running, Stopped, Failed, ...).
        #[arg(long = "for")]
        state: String,
        /// Seconds (1-300).
        #[arg(long, default_value_t = 60)]
        timeout: u64,
    },
}

/// Start, stop or restart.
#[derive(Args, Debug, Clone)]
pub struct Lifecycle {
    /// Name or id.
    pub name: String,
    /// Seconds to wait for the state (1-300).
    #[arg(long, default_value_t = 60)]
    pub timeout: u64,
    /// Answer as soon as the worker did, without waiting for the state.
    #[arg(long)]
    pub no_wait: bool,
}

/// A platform, as the CLI spells it.
#[derive(ValueEnum, Debug, Clone, Copy)]
pub enum Platform {
    /// OS processes.
    Process,
    /// Docker containers.
    Docker,
    /// Kubernetes Deployments.
    Kubernetes,
}

/// `draas context ...`.
#[derive(Subcommand, Debug, Clone)]
pub enum ContextCommand {
    /// Saves a control plane under a name.
    Add {
        /// The context's name.
        name: String,
        /// Its URL.
        #[arg(long = "server")]
        server: String,
        /// Its API key.
        #[arg(long = "token", env = "DRAAS_TOKEN", hide_env_values = true)]
        token: Option<String>,
        /// A PEM file of the CA its HTTPS certificate is checked against.
        #[arg(long = "ca-cert")]
        ca_cert: Option<PathBuf>,
        /// Make it the current one.
        #[arg(long = "use")]
        make_current: bool,
    },
    /// Makes a context the current one.
    Use {
        /// The context's name.
        name: String,
    },
    /// Lists the contexts (never their keys).
    List,
}

/// A client of one control plane (the one API client, `draas-client`,
/// with the CLI's contexts and exit codes).
struct Client {
    api: draas_client::Client,
}

/// Why a call failed.
struct Failure {
    exit: Exit,
    message: String,
}

impl Failure {
    fn new(exit: Exit, message: impl Into<String>) -> Self {
        Self {
            exit,
            message: message.into(),
        }
    }
}

impl From<draas_client::ClientError> for Failure {
    fn from(e: draas_client::ClientError) -> Self {
        use draas_client::ClientError;
        match e {
            ClientError::Settings(message) => Failure::new(Exit::BadInput, message),
            e @ ClientError::Unreachable { .. } => Failure::new(Exit::Unreachable, e.to_string()),
            ClientError::Problem { status, body, .. } => problem(status, &body, ""),
            e @ ClientError::Unreadable { .. } => Failure::new(Exit::Failed, e.to_string()),
        }
    }
}

impl Client {
    fn new(target: &Target) -> Result<Self, Failure> {
        let saved = Contexts::load().map_err(|e| Failure::new(Exit::BadInput, format!("{e:#}")))?;
        let named = target.context.clone().or(saved.current.clone());
        let context = match &named {
            Some(name) => Some(saved.contexts.get(name).cloned().ok_or_else(|| {
                Failure::new(
                    Exit::BadInput,
                    format!("no context named {name:?} (draas context list)"),
                )
            })?),
            None => None,
        };
        let base = target
            .server
            .clone()
            .or_else(|| context.as_ref().map(|c| c.server.clone()))
            .unwrap_or_else(|| "http://127.0.0.1:5000".into());
        // A context's key goes only to the server it was saved for: with
        // `--server` naming another, it is not sent (`--token` sends one).
        let same_server = |c: &ContextEntry| {
            target
                .server
                .as_deref()
                .is_none_or(|s| s.trim_end_matches('/') == c.server.trim_end_matches('/'))
        };
        let token = target.token.clone().or_else(|| {
            context
                .as_ref()
                .filter(|c| same_server(c))
                .and_then(|c| c.token.clone())
        });
        let ca_cert = target
            .ca_cert
            .clone()
            .or_else(|| context.as_ref().and_then(|c| c.ca_cert.clone()));
        let trusted = crate::config::trusted_roots(&base, ca_cert.as_deref())
            .map_err(|e| Failure::new(Exit::BadInput, format!("{e:#}")))?;
        let api = draas_client::Client::new(draas_client::ClientOptions {
            token,
            trusted,
            ..draas_client::ClientOptions::new(base)
        })?;
        Ok(Self { api })
    }

    /// Sends a request: status, JSON body, ETag, raw text.
    async fn send(
        &self,
        method: &str,
        path: &str,
        body: Option<(&str, Value)>,
        if_match: Option<&str>,
    ) -> Result<(u16, Value, Option<String>, String), Failure> {
        let body = match body {
            None => draas_client::Body::Empty,
            Some((media, value)) => draas_client::Body::Text(media, value.to_string()),
        };
        let answer = self.api.send(method, path, body, if_match).await?;
        // An accepted command carried out later (a stop or delete while no
        // worker can reach the server): the user is told why, whatever
        // the output format.
        if let Some(why) = &answer.pending {
            eprintln!("pending: {why}");
        }
        Ok((answer.status, answer.json(), answer.etag, answer.text))
    }

    /// Sends a request; the JSON answer, or the failure its problem says.
    async fn call(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value, Failure> {
        let body = body.map(|b| ("application/json", b));
        let (status, value, _, text) = self.send(method, path, body, None).await?;
        if (200..300).contains(&status) {
            Ok(value)
        } else {
            Err(problem(status, &value, &text))
        }
    }

    /// A GET that returns the answer's ETag too.
    async fn get_tagged(&self, path: &str) -> Result<(Value, Option<String>), Failure> {
        let (status, value, etag, text) = self.send("GET", path, None, None).await?;
        if (200..300).contains(&status) {
            Ok((value, etag))
        } else {
            Err(problem(status, &value, &text))
        }
    }

    /// A JSON Patch: the answer, or the failure.
    async fn patch(
        &self,
        path: &str,
        ops: &Value,
        if_match: Option<&str>,
    ) -> Result<(Value, Option<String>), Failure> {
        match self.patch_problem(path, ops, if_match).await? {
            Ok(done) => Ok(done),
            Err(value) => Err(problem(
                u16::try_from(value["status"].as_u64().unwrap_or(0)).unwrap_or(0),
                &value,
                "",
            )),
        }
    }

    /// A JSON Patch: the answer, or the problem document (only an
    /// unreachable server is a failure).
    async fn patch_problem(
        &self,
        path: &str,
        ops: &Value,
        if_match: Option<&str>,
    ) -> Result<Result<(Value, Option<String>), Value>, Failure> {
        let body = Some(("application/json-patch+json", ops.clone()));
        let (status, value, etag, _) = self.send("PATCH", path, body, if_match).await?;
        Ok(if (200..300).contains(&status) {
            Ok((value, etag))
        } else {
            Err(value)
        })
    }

    /// An event stream's events.
    async fn stream(
        &self,
        path: &str,
    ) -> Result<futures::stream::BoxStream<'static, draas_client::StreamEvent>, Failure> {
        Ok(self.api.events(path, None).await?)
    }
}

/// The failure a problem answer stands for, with each offending value's
/// path.
fn problem(status: u16, value: &Value, text: &str) -> Failure {
    let exit = match status {
        404 => Exit::NotFound,
        401 | 403 => Exit::Denied,
        408 | 504 => Exit::TimedOut,
        _ => Exit::Failed,
    };
    let mut message = format!(
        "{} {}: {}",
        status,
        value["code"].as_str().unwrap_or("ERROR"),
        value["detail"].as_str().unwrap_or(text.trim())
    );
    for error in value["errors"].as_array().into_iter().flatten() {
        message.push_str(&format!(
            "\n  at {}: {}",
            error["path"].as_str().unwrap_or("?"),
            error["message"].as_str().unwrap_or("?")
        ));
    }
    Failure::new(exit, message)
}

/// A spinner with the elapsed time on stderr while `work` runs, when
/// stderr is a terminal.
async fn waiting<T>(what: String, work: impl std::future::Future<Output = T>) -> T {
    if !std::io::stderr().is_terminal() {
        return work.await;
    }
    let spinner = indicatif::ProgressBar::new_spinner();
    spinner.set_style(
        indicatif::ProgressStyle::with_template("{spinner} {msg} ({elapsed})")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
    );
    spinner.set_message(what);
    spinner.enable_steady_tick(Duration::from_millis(100));
    let result = work.await;
    spinner.finish_and_clear();
    result
}

fn segment(name: &str) -> String {
    // Names and ids are DNS-label-like; anything else is refused by the
    // server, but never allowed to change the path.
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c.to_string()
            } else {
                format!("%{:02X}", c as u32 & 0xff)
            }
        })
        .collect()
}

/// Runs an instance command.
pub async fn instance(command: InstanceCommand, target: Target) -> ExitCode {
    finish(instance_inner(command, &target).await)
}

async fn instance_inner(command: InstanceCommand, target: &Target) -> Result<(), Failure> {
    let client = Client::new(target)?;
    let out = target.output;
    match command {
        InstanceCommand::Create {
            name,
            platform,
            file,
        } => {
            let mut body = json!({"name": name, "platformType": format!("{platform:?}")});
            if let Some(file) = file {
                let text = std::fs::read_to_string(&file).map_err(|e| {
                    Failure::new(
                        Exit::BadInput,
                        format!("cannot read {}: {e}", file.display()),
                    )
                })?;
                let configuration: Value = serde_saphyr::from_str(&text).map_err(|e| {
                    Failure::new(
                        Exit::BadInput,
                        format!("{} is not YAML: {e}", file.display()),
                    )
                })?;
                body["configuration"] = configuration;
            }
            let created = client
                .call("POST", "/api/server/instances", Some(body))
                .await?;
            // What DRaaS decided in the file, and what it ignores: on
            // stderr, so the output stays the instance.
            for warning in created["warnings"].as_array().into_iter().flatten() {
                eprintln!(
                    "warning: {}: {}",
                    warning["path"].as_str().unwrap_or(""),
                    warning["message"].as_str().unwrap_or("")
                );
            }
            output::instances(out, &[created["instance"].clone()], false);
        }
        InstanceCommand::List => {
            let list = client
                .call("GET", "/api/server/instances?limit=1000", None)
                .await?;
            let items = list["items"].as_array().cloned().unwrap_or_default();
            output::instances(out, &items, true);
        }
        InstanceCommand::Get { name } => {
            let instance = client
                .call(
                    "GET",
                    &format!("/api/server/instances/{}", segment(&name)),
                    None,
                )
                .await?;
            output::instances(out, &[instance], false);
        }
        InstanceCommand::Start(l) => lifecycle(&client, out, "start", "Running", l).await?,
        InstanceCommand::Stop(l) => lifecycle(&client, out, "stop", "Stopped", l).await?,
        InstanceCommand::Restart(l) => lifecycle(&client, out, "restart", "Running", l).await?,
        InstanceCommand::Delete { name, force } => {
            let path = format!("/api/server/instances/{}?force={force}", segment(&name));
            let (status, value, _, text) = client.send("DELETE", &path, None, None).await?;
            if !(200..300).contains(&status) {
                return Err(problem(status, &value, &text));
            }
            // 202: tombstoned; the reconciler finishes it (see the reason
            // printed on stderr).
            let pending = status == 202;
            if out.is_table() {
                let done = if pending {
                    "delete pending for"
                } else {
                    "deleted"
                };
                println!("{done} {name}");
            } else {
                output::value(out, &json!({"deleted": name, "pending": pending}));
            }
        }
        InstanceCommand::Logs {
            name,
            tail,
            stream,
            follow,
        } => {
            let path = |n: usize| {
                format!(
                    "/api/server/instances/{}/logs?tail={n}&stream={}",
                    segment(&name),
                    segment(&stream)
                )
            };
            let logs = client.call("GET", &path(tail), None).await?;
            let lines: Vec<String> = logs["lines"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|l| l.as_str().map(str::to_string))
                .collect();
            if !follow && !out.is_table() {
                output::value(out, &logs);
                return Ok(());
            }
            for line in &lines {
                println!("{line}");
            }
            let mut seen = lines;
            if !follow {
                return Ok(());
            }
            loop {
                tokio::time::sleep(Duration::from_millis(500)).await;
                let logs = client.call("GET", &path(1000), None).await?;
                let now: Vec<String> = logs["lines"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|l| l.as_str().map(str::to_string))
                    .collect();
                for line in new_lines(&seen, &now) {
                    println!("{line}");
                }
                let _ = std::io::Write::flush(&mut std::io::stdout());
                seen = now;
            }
        }
        InstanceCommand::Wait {
            name,
            state,
            timeout,
        } => {
            let path = format!(
                "/api/server/instances/{}?wait={}&timeout={timeout}",
                segment(&name),
                segment(&state)
            );
            let instance = waiting(
                format!("waiting for {name} to be {state}"),
                client.call("GET", &path, None),
            )
            .await?;
            output::instances(out, &[instance], false);
        }
    }
    Ok(())
}

/// The lines of `now` after the last ones of `seen` (the longest suffix of
/// `seen` that `now` starts with, or all of `now`).
fn new_lines<'a>(seen: &[String], now: &'a [String]) -> &'a [String] {
    for start in 0..seen.len() {
        let tail = &seen[start..];
        if now.len() >= tail.len() && now[..tail.len()] == *tail {
            return &now[tail.len()..];
        }
    }
    now
}

/// Runs a config command.
pub async fn config(command: ConfigCommand, target: Target) -> ExitCode {
    let run = async {
        let client = Client::new(&target)?;
        more::config(&client, target.output, command).await
    };
    finish(run.await)
}

/// Runs a status command.
pub async fn status(command: StatusCommand, target: Target) -> ExitCode {
    let run = async {
        let client = Client::new(&target)?;
        more::status(&client, target.output, command).await
    };
    finish(run.await)
}

/// `draas events`.
pub async fn events(follow: bool, target: Target) -> ExitCode {
    let run = async {
        let client = Client::new(&target)?;
        more::events(&client, follow).await
    };
    finish(run.await)
}

/// Runs a query command.
pub async fn query(command: QueryCommand, target: Target) -> ExitCode {
    let run = async {
        let client = Client::new(&target)?;
        more::query(&client, target.output, command).await
    };
    finish(run.await)
}

async fn lifecycle(
    client: &Client,
    out: Output,
    verb: &str,
    state: &str,
    l: Lifecycle,
) -> Result<(), Failure> {
    let mut path = format!("/api/server/instances/{}/{verb}", segment(&l.name));
    if !l.no_wait {
        path.push_str(&format!("?wait={state}&timeout={}", l.timeout));
    }
    let instance = waiting(
        format!("{verb} {} (until {state})", l.name),
        client.call("POST", &path, None),
    )
    .await?;
    output::instances(out, &[instance], false);
    Ok(())
}

/// `draas platforms`.
pub async fn platforms(target: Target) -> ExitCode {
    let run = async {
        let client = Client::new(&target)?;
        let platforms = client.call("GET", "/api/server/platforms", None).await?;
        output::platforms(target.output, &platforms);
        Ok(())
    };
    finish(run.await)
}

/// `draas context ...`.
pub fn context(command: ContextCommand) -> ExitCode {
    let run = || -> Result<(), Failure> {
        let bad = |e: anyhow::Error| Failure::new(Exit::BadInput, format!("{e:#}"));
        let mut saved = Contexts::load().map_err(bad)?;
        match command {
            ContextCommand::Add {
                name,
                server,
                token,
                ca_cert,
                make_current,
            } => {
                if !(server.starts_with("http://") || server.starts_with("https://")) {
                    return Err(Failure::new(
                        Exit::BadInput,
                        format!("--server must be an http(s) URL, not {server:?}"),
                    ));
                }
                saved.contexts.insert(
                    name.clone(),
                    ContextEntry {
                        server,
                        token,
                        ca_cert: ca_cert.map(|p| std::path::absolute(&p).unwrap_or(p)),
                    },
                );
                if make_current || saved.current.is_none() {
                    saved.current = Some(name.clone());
                }
                saved.save().map_err(bad)?;
                println!("context {name} saved in {}", contexts::path().display());
            }
            ContextCommand::Use { name } => {
                if !saved.contexts.contains_key(&name) {
                    return Err(Failure::new(
                        Exit::BadInput,
                        format!("no context named {name:?}"),
                    ));
                }
                saved.current = Some(name.clone());
                saved.save().map_err(bad)?;
                println!("using context {name}");
            }
            ContextCommand::List => output::contexts(&saved),
        }
        Ok(())
    };
    finish(run())
}

fn finish(result: Result<(), Failure>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::from(Exit::Ok as u8),
        Err(failure) => {
            eprintln!("error: {}", failure.message);
            ExitCode::from(failure.exit as u8)
        }
    }
}
