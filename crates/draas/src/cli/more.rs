//! The client's configuration, status, event and query commands.

use std::io::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use clap::Subcommand;
use futures::StreamExt;
use serde_json::{json, Value};

use super::output::{self, Output};
use super::{segment, Client, Exit, Failure};
use draas_core::config::line_of;

/// `draas config ...`: an instance's drasi-server configuration.
#[derive(Subcommand, Debug, Clone)]
pub enum ConfigCommand {
    /// Prints it (YAML unless -o json).
    Get {
        /// Name or id.
        name: String,
    },
    /// Applies a JSON Patch (RFC 6902) from a file or the command line.
    Patch {
        /// Name or id.
        name: String,
        /// The patch, inline (a JSON array).
        #[arg(long, conflicts_with = "file")]
        patch: Option<String>,
        /// A file holding the patch.
        #[arg(short = 'f', long = "file")]
        file: Option<PathBuf>,
    },
    /// Replaces it with a file's document (YAML or JSON).
    Apply {
        /// Name or id.
        name: String,
        /// The document.
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
    },
    /// Opens it in $EDITOR; the server's objections come back as comments
    /// at the lines they are about, until it is accepted or left unchanged.
    Edit {
        /// Name or id.
        name: String,
    },
}

/// `draas status ...`.
#[derive(Subcommand, Debug, Clone)]
pub enum StatusCommand {
    /// The status changes of every instance, oldest first.
    Changes {
        /// Keep printing new ones.
        #[arg(long)]
        follow: bool,
        /// Start after this cursor.
        #[arg(long, default_value_t = 0)]
        since: u64,
    },
}

/// `draas query ...`.
#[derive(Subcommand, Debug, Clone)]
pub enum QueryCommand {
    /// The current result rows of a continuous query, from the instance's
    /// server.
    Results {
        /// The instance: name or id.
        name: String,
        /// The query's id.
        query: String,
        /// Print them again whenever they change.
        #[arg(long)]
        watch: bool,
    },
}

fn read(file: &PathBuf) -> Result<String, Failure> {
    std::fs::read_to_string(file).map_err(|e| {
        Failure::new(
            Exit::BadInput,
            format!("cannot read {}: {e}", file.display()),
        )
    })
}

fn config_path(name: &str) -> String {
    format!("/api/configuration/instances/{}", segment(name))
}

/// Runs a config command.
pub async fn config(client: &Client, out: Output, command: ConfigCommand) -> Result<(), Failure> {
    match command {
        ConfigCommand::Get { name } => {
            let (doc, _) = client.get_tagged(&config_path(&name)).await?;
            print_document(out, &doc);
        }
        ConfigCommand::Patch { name, patch, file } => {
            let text = match (patch, file) {
                (Some(text), _) => text,
                (None, Some(file)) => read(&file)?,
                (None, None) => {
                    return Err(Failure::new(
                        Exit::BadInput,
                        "give the patch: --patch JSON or -f FILE",
                    ))
                }
            };
            let ops: Value = serde_json::from_str(&text)
                .map_err(|e| Failure::new(Exit::BadInput, format!("the patch is not JSON: {e}")))?;
            let (doc, _) = client.patch(&config_path(&name), &ops, None).await?;
            print_document(out, &doc);
        }
        ConfigCommand::Apply { name, file } => {
            let doc: Value = serde_saphyr::from_str(&read(&file)?).map_err(|e| {
                Failure::new(
                    Exit::BadInput,
                    format!("{} is not YAML: {e}", file.display()),
                )
            })?;
            let ops = json!([{"op": "replace", "path": "", "value": doc}]);
            let (doc, _) = client.patch(&config_path(&name), &ops, None).await?;
            print_document(out, &doc);
        }
        ConfigCommand::Edit { name } => edit(client, out, &name).await?,
    }
    Ok(())
}

fn print_document(out: Output, doc: &Value) {
    match out {
        Output::Json => output::value(Output::Json, doc),
        _ => output::value(Output::Yaml, doc),
    }
}

/// The editor loop of `config edit`.
async fn edit(client: &Client, out: Output, name: &str) -> Result<(), Failure> {
    let (doc, etag) = client.get_tagged(&config_path(name)).await?;
    let original = serde_saphyr::to_string(&doc).unwrap_or_default();
    let file = tempfile::Builder::new()
        .prefix("draas-config-")
        .suffix(".yaml")
        .tempfile()
        .map_err(|e| Failure::new(Exit::BadInput, format!("cannot make a temporary file: {e}")))?;
    let mut text = original.clone();
    loop {
        std::fs::write(file.path(), &text)
            .map_err(|e| Failure::new(Exit::BadInput, format!("cannot write the file: {e}")))?;
        run_editor(file.path())?;
        let edited = std::fs::read_to_string(file.path())
            .map_err(|e| Failure::new(Exit::BadInput, format!("cannot read the file back: {e}")))?;
        let edited = strip_comments(&edited);
        if edited.trim() == original.trim() || edited.trim().is_empty() {
            eprintln!("no changes: nothing sent");
            return Ok(());
        }
        let value: Value = match serde_saphyr::from_str(&edited) {
            Ok(v) => v,
            Err(e) => {
                text = annotate(&edited, &[(None, format!("not YAML: {e}"))]);
                continue;
            }
        };
        let ops = json!([{"op": "replace", "path": "", "value": value}]);
        match client
            .patch_problem(&config_path(name), &ops, etag.as_deref())
            .await?
        {
            Ok((doc, _)) => {
                print_document(out, &doc);
                return Ok(());
            }
            Err(problem) => {
                let mut notes: Vec<(Option<usize>, String)> = problem["errors"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|e| {
                        let path = e["path"].as_str().unwrap_or_default();
                        (
                            line_of(&edited, path),
                            format!("{path}: {}", e["message"].as_str().unwrap_or("?")),
                        )
                    })
                    .collect();
                if notes.is_empty() {
                    notes.push((
                        None,
                        problem["detail"].as_str().unwrap_or("refused").to_string(),
                    ));
                }
                if problem["code"] == "STALE_GENERATION" {
                    return Err(Failure::new(
                        Exit::Failed,
                        "someone changed the configuration meanwhile: edit again",
                    ));
                }
                text = annotate(&edited, &notes);
            }
        }
    }
}

fn run_editor(path: &std::path::Path) -> Result<(), Failure> {
    let editor = std::env::var("VISUAL")
        .ok()
        .or_else(|| std::env::var("EDITOR").ok())
        .filter(|e| !e.trim().is_empty())
        .unwrap_or_else(|| "vi".into());
    // The editor and its words, run directly (no shell).
    let mut words = editor.split_whitespace();
    let program = words.next().unwrap_or("vi");
    let status = std::process::Command::new(program)
        .args(words)
        .arg(path)
        .status()
        .map_err(|e| {
            Failure::new(
                Exit::BadInput,
                format!("cannot run the editor {program:?}: {e}"),
            )
        })?;
    if status.success() {
        Ok(())
    } else {
        Err(Failure::new(
            Exit::BadInput,
            format!("the editor exited with {status}: nothing sent"),
        ))
    }
}

const NOTE: &str = "# draas: ";

fn strip_comments(text: &str) -> String {
    text.lines()
        .filter(|l| !l.trim_start().starts_with(NOTE.trim_end()))
        .collect::<Vec<_>>()
        .join("\n")
        + "\n"
}

/// The document with each note as a comment above the line it is about
/// (notes without a line at the top).
fn annotate(text: &str, notes: &[(Option<usize>, String)]) -> String {
    let mut out = String::new();
    out.push_str(&format!(
        "{NOTE}the server refused this; fix it, or leave it unchanged to give up\n"
    ));
    for (line, note) in notes {
        if line.is_none() {
            out.push_str(&format!("{NOTE}{note}\n"));
        }
    }
    for (i, l) in text.lines().enumerate() {
        for (line, note) in notes {
            if *line == Some(i) {
                let indent: String = l.chars().take_while(|c| *c == ' ').collect();
                out.push_str(&format!("{indent}{NOTE}{note}\n"));
            }
        }
        out.push_str(l);
        out.push('\n');
    }
    out
}

/// Runs a status command.
pub async fn status(client: &Client, out: Output, command: StatusCommand) -> Result<(), Failure> {
    let StatusCommand::Changes { follow, since } = command;
    let mut cursor = since;
    loop {
        let page = client
            .call(
                "GET",
                &format!("/api/status/recent-changes?since={cursor}&limit=1000"),
                None,
            )
            .await?;
        for change in page["changes"].as_array().into_iter().flatten() {
            if out.is_table() {
                println!(
                    "{}  {}  {} -> {}  {}  {}",
                    change["timestamp"].as_str().unwrap_or("-"),
                    change["instanceId"].as_str().unwrap_or("-"),
                    change["old"].as_str().unwrap_or("-"),
                    change["new"].as_str().unwrap_or("-"),
                    change["reason"].as_str().unwrap_or("-"),
                    change["source"].as_str().unwrap_or("-"),
                );
            } else {
                println!("{}", change);
            }
        }
        let _ = std::io::stdout().flush();
        cursor = page["cursor"].as_u64().unwrap_or(cursor);
        if !follow {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// `draas events [--follow]`: the kept events, then (following) the live
/// stream; one JSON object a line.
pub async fn events(client: &Client, follow: bool) -> Result<(), Failure> {
    if !follow {
        let page = client
            .call("GET", "/api/events/history?limit=1000", None)
            .await?;
        for event in page["events"].as_array().into_iter().flatten() {
            println!("{}", event["event"]);
        }
        return Ok(());
    }
    let mut stream = client.stream("/api/events").await?;
    while let Some(event) = stream.next().await {
        println!("{}", event.data);
        let _ = std::io::stdout().flush();
    }
    Ok(())
}

/// Runs a query command: the rows of the instance's query, which its worker
/// reads from the server (so this works wherever the server runs).
pub async fn query(client: &Client, out: Output, command: QueryCommand) -> Result<(), Failure> {
    let QueryCommand::Results { name, query, watch } = command;
    let path = format!(
        "/api/server/instances/{}/queries/{}/results",
        segment(&name),
        segment(&query)
    );
    let mut last = None;
    loop {
        let page = client.call("GET", &path, None).await?;
        let rows = page["rows"].as_array().cloned().unwrap_or_default();
        if last.as_ref() != Some(&rows) {
            output::rows(out, &rows);
            last = Some(rows);
        }
        if !watch {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pointers_find_their_lines() {
        let yaml = "host: 0.0.0.0\nport: 8080\nsources:\n- kind: mock\n  id: counter\nqueries:\n- id: values\n  query: MATCH\n  sources:\n  - sourceId: counter\n- id: second\n  query: X\n";
        let noted = annotate(yaml, &[(Some(7), "/queries/0/query: bad".into())]);
        assert!(
            noted.contains("  # draas: /queries/0/query: bad\n  query: MATCH"),
            "{noted}"
        );
        assert_eq!(strip_comments(&noted).trim(), yaml.trim());
    }
}
