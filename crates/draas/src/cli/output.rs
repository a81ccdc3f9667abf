//! How answers are printed: plain tables (`table`, `wide`) or the API's
//! JSON as JSON or YAML.

use clap::ValueEnum;
use comfy_table::presets::NOTHING;
use comfy_table::Table;
use serde_json::Value;

use super::contexts::Contexts;

/// An output format.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    /// Columns for people.
    Table,
    /// More columns.
    Wide,
    /// The API's JSON.
    Json,
    /// The API's JSON as YAML.
    Yaml,
}

impl Output {
    /// Whether it is a table.
    pub fn is_table(self) -> bool {
        matches!(self, Output::Table | Output::Wide)
    }
}

fn table(header: &[&str]) -> Table {
    let mut table = Table::new();
    table.load_preset(NOTHING).set_header(header.to_vec());
    table
}

fn text(value: &Value) -> String {
    match value {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Prints a JSON value as JSON or YAML.
#[allow(clippy::print_stdout)]
pub fn value(out: Output, value: &Value) {
    match out {
        Output::Yaml => print!("{}", serde_saphyr::to_string(value).unwrap_or_default()),
        _ => println!(
            "{}",
            serde_json::to_string_pretty(value).unwrap_or_default()
        ),
    }
}

/// Prints instances: a table, or the JSON (a list when `many`).
#[allow(clippy::print_stdout)]
pub fn instances(out: Output, items: &[Value], many: bool) {
    if !out.is_table() {
        match (many, items.first()) {
            (false, Some(one)) => value(out, one),
            _ => value(out, &Value::Array(items.to_vec())),
        }
        return;
    }
    let wide = out == Output::Wide;
    let mut header = vec!["NAME", "ID", "PLATFORM", "STATE", "REASON"];
    if wide {
        header.extend(["ENDPOINT", "RESTARTS", "GENERATION", "MESSAGE"]);
    }
    let mut t = table(&header);
    for i in items {
        let mut row = vec![
            text(&i["name"]),
            text(&i["id"]),
            text(&i["platformType"]),
            text(&i["status"]["state"]),
            text(&i["status"]["reason"]),
        ];
        if wide {
            row.extend([
                text(&i["runtime"]["endpoint"]),
                text(&i["status"]["restartCount"]),
                text(&i["generation"]),
                text(&i["status"]["message"])
                    .lines()
                    .next()
                    .unwrap_or("-")
                    .chars()
                    .take(60)
                    .collect(),
            ]);
        }
        t.add_row(row);
    }
    println!("{}", t.trim_fmt());
}

/// Prints platforms and their workers.
#[allow(clippy::print_stdout)]
pub fn platforms(out: Output, body: &Value) {
    if !out.is_table() {
        value(out, body);
        return;
    }
    let mut t = table(&["PLATFORM", "AVAILABLE", "WORKERS", "INSTANCES"]);
    for p in body["platforms"].as_array().into_iter().flatten() {
        let workers = p["workers"].as_array().map_or(0, Vec::len);
        let instances: u64 = p["workers"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|w| w["instances"].as_u64())
            .sum();
        t.add_row(vec![
            text(&p["platformType"]),
            text(&p["available"]),
            workers.to_string(),
            instances.to_string(),
        ]);
    }
    println!("{}", t.trim_fmt());
}

/// Prints the contexts (never a key).
#[allow(clippy::print_stdout)]
pub fn contexts(saved: &Contexts) {
    let mut t = table(&["CURRENT", "NAME", "SERVER", "KEY"]);
    for (name, c) in &saved.contexts {
        let current = if saved.current.as_deref() == Some(name.as_str()) {
            "*"
        } else {
            ""
        };
        let key = if c.token.is_some() { "yes" } else { "no" };
        t.add_row(vec![current, name.as_str(), c.server.as_str(), key]);
    }
    println!("{}", t.trim_fmt());
}

/// Prints query result rows: columns from their fields.
#[allow(clippy::print_stdout)]
pub fn rows(out: Output, rows: &[Value]) {
    if !out.is_table() {
        value(out, &Value::Array(rows.to_vec()));
        return;
    }
    let mut columns: Vec<String> = Vec::new();
    for row in rows {
        for key in row.as_object().into_iter().flat_map(|o| o.keys()) {
            if !columns.contains(key) {
                columns.push(key.clone());
            }
        }
    }
    let header: Vec<&str> = columns.iter().map(String::as_str).collect();
    let mut t = table(&header);
    for row in rows {
        t.add_row(columns.iter().map(|c| text(&row[c])).collect::<Vec<_>>());
    }
    println!("{}", t.trim_fmt());
}
