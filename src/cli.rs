//! The CLI client: talks to a running flowd over HTTP and websocket, as a user would.
//!
//! Every read takes `--json` (the server's JSON, one document or one line per event); the
//! exit code says how a command went, see [`CliError::exit_code`]. Output goes through
//! [`Output`], so a closed pipe (`flowd flows list | head -1`) ends the command quietly.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use actix_web::web::Bytes;
use clap::Subcommand;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};

/// Why a client command failed; each kind has its own exit code.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The server refused the request (4xx): fix the request, retrying will not help.
    #[error("{status} {title}: {detail}")]
    Refused {
        status: u16,
        title: String,
        detail: String,
    },
    /// The server could not be reached, or failed (5xx): retrying later may help.
    #[error("{0}")]
    Unavailable(String),
    /// The command line or an input file is unusable.
    #[error("{0}")]
    Input(String),
    /// Whoever read our output stopped reading (a closed pipe): not an error for the user.
    #[error("output closed")]
    OutputClosed,
}

impl CliError {
    /// `0` success; `1` a watched flow failed or was cancelled; `2` the request or the
    /// command line is wrong (4xx, bad input); `3` the server is unreachable or failed (5xx).
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Refused { .. } | Self::Input(_) => 2,
            Self::Unavailable(_) => 3,
            Self::OutputClosed => 0,
        }
    }
}

/// Where the server is and who is calling.
#[derive(Clone, Debug, clap::Args)]
pub struct Connection {
    /// Base URL of the flowd server.
    #[arg(
        long,
        global = true,
        env = "FLOWD_URL",
        default_value = "http://127.0.0.1:8080"
    )]
    pub server: String,
    /// API key, when the server has auth enabled.
    #[arg(long, global = true, env = "FLOWD_API_KEY", hide_env_values = true)]
    pub key: Option<String>,
    /// Print the server's JSON instead of text (one line per event for `watch`).
    #[arg(long, global = true)]
    pub json: bool,
}

/// `flowd flows …`
#[derive(Debug, Subcommand)]
pub enum FlowsCommand {
    /// Create and start a flow; prints it.
    Create {
        /// The flow type to run (see `flowd flow-types list`).
        flow_type: String,
        /// The flow's input, as JSON.
        #[arg(long, conflicts_with = "input_file")]
        input: Option<String>,
        /// A file holding the flow's input as JSON.
        #[arg(long)]
        input_file: Option<PathBuf>,
        /// Makes a retried create return the same flow instead of a second one.
        #[arg(long)]
        idempotency_key: Option<String>,
        /// Start it as a child of this flow.
        #[arg(long)]
        parent: Option<String>,
    },
    /// List flows, newest first.
    List {
        /// Only flows in this status: initialized, running, paused, completed, failed, cancelled.
        #[arg(long)]
        status: Option<String>,
        /// Only flows of this flow type.
        #[arg(long)]
        flow_type: Option<String>,
        /// Only the children of this flow.
        #[arg(long)]
        parent: Option<String>,
        /// At most this many flows (one page).
        #[arg(long, default_value_t = 20)]
        limit: u32,
        /// The `next_cursor` of the previous page.
        #[arg(long)]
        cursor: Option<String>,
    },
    /// Show one flow with its phases.
    Show {
        /// The flow id.
        id: String,
    },
    /// Follow a flow live until it ends: exit 0 if completed, 1 if failed or cancelled.
    Watch {
        /// The flow id.
        id: String,
    },
    /// The flow's event history.
    Events {
        /// The flow id.
        id: String,
        /// Only events after this `seq`.
        #[arg(long, default_value_t = 0)]
        after: u64,
    },
    /// The flow's failure journal: every failed attempt, timeout and panic.
    Failures {
        /// The flow id.
        id: String,
    },
    /// Pause a running flow after its current phase.
    Pause {
        /// The flow id.
        id: String,
    },
    /// Resume a paused flow.
    Resume {
        /// The flow id.
        id: String,
    },
    /// Cancel a flow (and its children).
    Cancel {
        /// The flow id.
        id: String,
    },
    /// Retry a failed flow from its failed phase.
    Retry {
        /// The flow id.
        id: String,
    },
}

/// `flowd flow-types …`
#[derive(Debug, Subcommand)]
pub enum FlowTypesCommand {
    /// List the latest version of every flow type.
    List,
    /// Show one flow type: the latest version, or `--version N`.
    Show {
        /// The flow type's name.
        name: String,
        /// A version other than the latest.
        #[arg(long)]
        version: Option<u32>,
    },
    /// Register a flow type from a TOML or JSON file with `phases` (and optionally `name`
    /// and `version`, else the next version; an unchanged definition is not a new version).
    Put {
        /// `.json` is read as JSON, anything else as TOML (the `[[phases]]` of config.toml).
        file: PathBuf,
        /// The flow type's name, when the file does not say it.
        #[arg(long)]
        name: Option<String>,
    },
}

/// Standard output that reports a closed pipe as [`CliError::OutputClosed`] instead of
/// panicking like `println!`.
pub struct Output;

impl Output {
    /// Writes `text` and a newline.
    pub fn line(text: &str) -> Result<(), CliError> {
        Self::write(&format!("{text}\n"))
    }

    /// Writes `text` as is and flushes.
    pub fn write(text: &str) -> Result<(), CliError> {
        let mut stdout = std::io::stdout().lock();
        stdout
            .write_all(text.as_bytes())
            .and_then(|()| stdout.flush())
            .map_err(|error| match error.kind() {
                std::io::ErrorKind::BrokenPipe => CliError::OutputClosed,
                _ => CliError::Unavailable(format!("cannot write output: {error}")),
            })
    }

    /// Pretty JSON.
    pub fn json(value: &Value) -> Result<(), CliError> {
        Self::line(&serde_json::to_string_pretty(value).unwrap_or_default())
    }
}

struct Api {
    client: awc::Client,
    connection: Connection,
}

impl Api {
    fn new(connection: Connection) -> Self {
        let client = awc::Client::builder()
            .timeout(Duration::from_secs(30))
            .finish();
        Self { client, connection }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.connection.server.trim_end_matches('/'))
    }

    fn authorize(&self, request: awc::ClientRequest) -> awc::ClientRequest {
        match &self.connection.key {
            Some(key) => request.bearer_auth(key),
            None => request,
        }
    }

    async fn get(&self, path: &str) -> Result<Value, CliError> {
        self.call("GET", path, None, &[]).await
    }

    async fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
        headers: &[(&str, &str)],
    ) -> Result<Value, CliError> {
        let method = awc::http::Method::from_bytes(method.as_bytes())
            .map_err(|e| CliError::Input(e.to_string()))?;
        let mut request = self.authorize(self.client.request(method, self.url(path)));
        for (name, value) in headers {
            request = request.insert_header((*name, *value));
        }
        let server = &self.connection.server;
        let mut response = match body {
            Some(body) => request.send_json(&body).await,
            None => request.send().await,
        }
        .map_err(|e| CliError::Unavailable(format!("cannot reach {server}: {e}")))?;
        let bytes: Bytes =
            response.body().limit(64 << 20).await.map_err(|e| {
                CliError::Unavailable(format!("reading the answer of {server}: {e}"))
            })?;
        let value: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        let status = response.status();
        if status.is_success() {
            return Ok(value);
        }
        let title = value["title"]
            .as_str()
            .or(status.canonical_reason())
            .unwrap_or("error")
            .to_owned();
        let detail = value["detail"].as_str().unwrap_or("no detail").to_owned();
        if status.is_client_error() {
            Err(CliError::Refused {
                status: status.as_u16(),
                title,
                detail,
            })
        } else {
            Err(CliError::Unavailable(format!(
                "{} {title}: {detail}",
                status.as_u16()
            )))
        }
    }
}

fn bar(percentage: f64) -> String {
    let filled = ((percentage / 100.0) * 30.0).round().clamp(0.0, 30.0) as usize;
    format!(
        "[{}{}] {percentage:5.1}%",
        "#".repeat(filled),
        "-".repeat(30 - filled)
    )
}

fn text(value: &Value) -> &str {
    value.as_str().unwrap_or("-")
}

fn flow_text(flow: &Value) -> String {
    let mut out = format!(
        "{}  {} v{}  {}  {}",
        text(&flow["id"]),
        text(&flow["flow_type"]),
        flow["flow_type_version"],
        text(&flow["status"]),
        bar(flow["progress_percentage"].as_f64().unwrap_or(0.0)),
    );
    if let Some(why) = reason_text(&flow["status_reason"]) {
        out.push_str(&format!("\n  why: {why}"));
    }
    for phase in flow["phases"].as_array().into_iter().flatten() {
        let error = phase["error"]
            .as_str()
            .map(|e| format!("  ({e})"))
            .unwrap_or_default();
        out.push_str(&format!(
            "\n  {:<28} {:<10} attempt {}{error}",
            text(&phase["name"]),
            text(&phase["status"]),
            phase["attempt"],
        ));
    }
    out
}

fn print_flow(flow: &Value, json: bool) -> Result<(), CliError> {
    if json {
        Output::json(flow)
    } else {
        Output::line(&flow_text(flow))
    }
}

fn event_text(event: &Value, own_id: &str) -> String {
    // A master's stream also carries its children's events: name them.
    let who = match event["flow_id"].as_str() {
        Some(flow_id) if flow_id != own_id => format!(
            "child {}",
            flow_id
                .get(flow_id.len().saturating_sub(8)..)
                .unwrap_or(flow_id)
        ),
        _ => String::new(),
    };
    format!(
        "{} {:<10} {:<24} {} {who}",
        bar(event["progress_percentage"].as_f64().unwrap_or(0.0)),
        text(&event["status"]),
        text(&event["current_phase"]),
        text(&event["kind"]),
    )
    .trim_end()
    .to_owned()
}

/// Builds a query string from the parameters that are set, percent-encoding their values.
fn query(pairs: &[(&str, Option<String>)]) -> String {
    let encoded: Vec<String> = pairs
        .iter()
        .filter_map(|(name, value)| {
            value
                .as_ref()
                .map(|v| format!("{name}={}", encode_component(v)))
        })
        .collect();
    if encoded.is_empty() {
        String::new()
    } else {
        format!("?{}", encoded.join("&"))
    }
}

fn encode_component(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            other => format!("%{other:02X}"),
        })
        .collect()
}

/// A path segment from the command line (an id or a name), encoded so it stays one segment.
fn segment(value: &str) -> String {
    encode_component(value)
}

/// Runs a `flows` subcommand; the exit code says how it went.
pub async fn flows(connection: Connection, command: FlowsCommand) -> Result<u8, CliError> {
    let json = connection.json;
    let api = Api::new(connection);
    match command {
        FlowsCommand::Create {
            flow_type,
            input,
            input_file,
            idempotency_key,
            parent,
        } => {
            let input: Value = match (input, input_file) {
                (Some(text), _) => serde_json::from_str(&text)
                    .map_err(|e| CliError::Input(format!("--input is not JSON: {e}")))?,
                (None, Some(path)) => {
                    let text = read_file(&path)?;
                    serde_json::from_str(&text).map_err(|e| {
                        CliError::Input(format!("{} is not JSON: {e}", path.display()))
                    })?
                }
                (None, None) => json!({}),
            };
            let mut body = json!({ "flow_type": flow_type, "input": input });
            if let Some(parent) = parent {
                body["parent_flow_id"] = Value::String(parent);
            }
            let headers: Vec<(&str, &str)> = idempotency_key
                .as_deref()
                .map(|key| ("Idempotency-Key", key))
                .into_iter()
                .collect();
            let flow = api.call("POST", "/v1/flows", Some(body), &headers).await?;
            print_flow(&flow, json)?;
        }
        FlowsCommand::List {
            status,
            flow_type,
            parent,
            limit,
            cursor,
        } => {
            let path = format!(
                "/v1/flows{}",
                query(&[
                    ("limit", Some(limit.to_string())),
                    ("status", status),
                    ("flow_type", flow_type),
                    ("parent_flow_id", parent),
                    ("cursor", cursor),
                ])
            );
            let page = api.get(&path).await?;
            if json {
                Output::json(&page)?;
            } else {
                for flow in page["flows"].as_array().into_iter().flatten() {
                    Output::line(&format!(
                        "{}  {:<20} {:<10} {:<24} {}",
                        text(&flow["id"]),
                        text(&flow["flow_type"]),
                        text(&flow["status"]),
                        text(&flow["current_phase"]),
                        bar(flow["progress_percentage"].as_f64().unwrap_or(0.0)),
                    ))?;
                }
                if let Some(cursor) = page["next_cursor"].as_str() {
                    eprintln!("more: --cursor {cursor}");
                }
            }
        }
        FlowsCommand::Show { id } => {
            print_flow(
                &api.get(&format!("/v1/flows/{}", segment(&id))).await?,
                json,
            )?;
        }
        FlowsCommand::Watch { id } => return watch(&api, &id, json).await,
        FlowsCommand::Events { id, after } => {
            let list = api
                .get(&format!("/v1/flows/{}/events?after={after}", segment(&id)))
                .await?;
            if json {
                Output::json(&list)?;
            } else {
                for event in list["events"].as_array().into_iter().flatten() {
                    Output::line(&format!("{:>4} {}", event["seq"], event_text(event, &id)))?;
                }
            }
        }
        FlowsCommand::Failures { id } => {
            let list = api
                .get(&format!("/v1/flows/{}/failures", segment(&id)))
                .await?;
            if json {
                Output::json(&list)?;
            } else {
                for failure in list["failures"].as_array().into_iter().flatten() {
                    Output::line(&format!(
                        "{}  {:<24} attempt {:<3} {:<20} {}",
                        text(&failure["at"]),
                        text(&failure["phase"]),
                        failure["attempt"],
                        text(&failure["error_kind"]),
                        text(&failure["message"]),
                    ))?;
                }
            }
        }
        FlowsCommand::Pause { id } => control(&api, &id, "pause", json).await?,
        FlowsCommand::Resume { id } => control(&api, &id, "resume", json).await?,
        FlowsCommand::Cancel { id } => control(&api, &id, "cancel", json).await?,
        FlowsCommand::Retry { id } => control(&api, &id, "retry", json).await?,
    }
    Ok(0)
}

async fn control(api: &Api, id: &str, action: &str, json: bool) -> Result<(), CliError> {
    let path = format!("/v1/flows/{}/{action}", segment(id));
    let flow = api.call("POST", &path, None, &[]).await?;
    print_flow(&flow, json)
}

/// Follows the flow's websocket until a terminal status.
async fn watch(api: &Api, id: &str, json: bool) -> Result<u8, CliError> {
    let path = format!("/v1/flows/{}", segment(id));
    api.get(&path).await?;
    let ws_url = api.url(&format!("{path}/ws?after=0"));
    let mut request = api.client.ws(ws_url);
    if let Some(key) = &api.connection.key {
        request = request.bearer_auth(key);
    }
    let lost = |e: String| CliError::Unavailable(format!("the event stream broke: {e}"));
    let (_, mut socket) = request
        .connect()
        .await
        .map_err(|e| CliError::Unavailable(format!("websocket: {e}")))?;
    let live = !json && std::io::stdout().is_terminal();
    let mut status = String::new();
    // The flow's own status reason, from its events: printed when it changes.
    let mut why = String::new();
    while let Some(frame) = socket.next().await {
        match frame.map_err(|e| lost(e.to_string()))? {
            awc::ws::Frame::Text(bytes) => {
                let event: Value =
                    serde_json::from_slice(&bytes).map_err(|e| lost(e.to_string()))?;
                // Only the flow's own events end the watch, not its children's.
                if event["flow_id"]
                    .as_str()
                    .is_none_or(|flow_id| flow_id == id)
                {
                    event["status"]
                        .as_str()
                        .unwrap_or_default()
                        .clone_into(&mut status);
                }
                let own = event["flow_id"]
                    .as_str()
                    .is_none_or(|flow_id| flow_id == id);
                if let Some(now) = reason_text(&event["status_reason"]).filter(|r| own && *r != why)
                {
                    why = now;
                    if !json {
                        Output::line(&format!(
                            "{}why: {why}",
                            if live { "\r\x1b[2K" } else { "  " }
                        ))?;
                    }
                }
                if json {
                    Output::line(&event.to_string())?;
                } else if live {
                    Output::write(&format!("\r\x1b[2K{}", event_text(&event, id)))?;
                } else {
                    Output::line(&event_text(&event, id))?;
                }
                // The history may hold an earlier end (a failed run that was retried): only an
                // end the flow is still at ends the watch.
                if is_terminal(&status) {
                    let now = api.get(&path).await?;
                    if now["status"].as_str().is_some_and(is_terminal) {
                        break;
                    }
                }
            }
            awc::ws::Frame::Ping(bytes) => socket
                .send(awc::ws::Message::Pong(bytes))
                .await
                .map_err(|e| lost(e.to_string()))?,
            awc::ws::Frame::Close(reason) => {
                return Err(lost(format!("the server closed it: {reason:?}")));
            }
            _ => {}
        }
    }
    if live {
        Output::line("")?;
    }
    let flow = api.get(&path).await?;
    if !json {
        print_flow(&flow, false)?;
    }
    Ok(if flow["status"] == "completed" { 0 } else { 1 })
}

fn is_terminal(status: &str) -> bool {
    matches!(status, "completed" | "failed" | "cancelled")
}

/// A flow's or an event's `status_reason` in words (`None` when it has none): why the flow is
/// not progressing, as `show` and `watch` print it.
fn reason_text(reason: &Value) -> Option<String> {
    let field = |name: &str| text(&reason[name]).to_owned();
    let text = match reason["kind"].as_str()? {
        "starting" => "starting".to_owned(),
        "paused" => format!("paused since {}", field("since")),
        "running" => format!(
            "running {} ({}), attempt {}",
            field("phase"),
            field("handler"),
            reason["attempt"]
        ),
        "waiting_for_worker" => format!(
            "waiting for a worker on queue `{}` since {}",
            field("queue"),
            field("since")
        ),
        "leased_by_worker" => format!(
            "worker {} holds {} from queue `{}`",
            field("worker_id"),
            field("phase"),
            field("queue")
        ),
        "waiting_for_children" => format!(
            "waiting for children: {} of {} done",
            reason["done"], reason["total"]
        ),
        "retry_backoff" => format!(
            "retrying {} at {} after {} (attempt {} failed)",
            field("phase"),
            field("next_attempt_at"),
            reason["after"].as_str().unwrap_or("a failure"),
            reason["attempt"]
        ),
        "scheduled" => format!("next: {}", field("phase")),
        "restarted_by_health" => format!(
            "restarted by health after a missed ping at {}, resuming {} ({})",
            field("since"),
            field("phase"),
            field("detail")
        ),
        other => other.to_owned(),
    };
    Some(text)
}

/// Runs a `flow-types` subcommand.
pub async fn flow_types(connection: Connection, command: FlowTypesCommand) -> Result<u8, CliError> {
    let json = connection.json;
    let api = Api::new(connection);
    match command {
        FlowTypesCommand::List => {
            let list = api.get("/v1/flow-types").await?;
            if json {
                return Output::json(&list).map(|()| 0);
            }
            for flow_type in list["flow_types"].as_array().into_iter().flatten() {
                Output::line(&flow_type_line(flow_type))?;
            }
        }
        FlowTypesCommand::Show { name, version } => {
            let path = format!(
                "/v1/flow-types/{}{}",
                segment(&name),
                query(&[("version", version.map(|v| v.to_string()))])
            );
            let flow_type = api.get(&path).await?;
            if json {
                return Output::json(&flow_type).map(|()| 0);
            }
            Output::line(&flow_type_line(&flow_type))?;
            for phase in flow_type["phases"].as_array().into_iter().flatten() {
                let params = phase.get("params").filter(|p| !p.is_null());
                Output::line(&format!(
                    "  {:<28} {:<12} {}",
                    text(&phase["name"]),
                    text(&phase["handler"]),
                    params.map(Value::to_string).unwrap_or_default(),
                ))?;
            }
        }
        FlowTypesCommand::Put { file, name } => {
            let mut definition = read_definition(&file)?;
            let name = match (name, definition.remove("name")) {
                (Some(name), _) => name,
                (None, Some(Value::String(name))) => name,
                _ => {
                    return Err(CliError::Input(format!(
                        "{} names no flow type: add `name = \"…\"` or pass --name",
                        file.display()
                    )));
                }
            };
            let path = format!("/v1/flow-types/{}", segment(&name));
            let stored = api
                .call("PUT", &path, Some(Value::Object(definition)), &[])
                .await?;
            if json {
                Output::json(&stored)?;
            } else {
                Output::line(&flow_type_line(&stored))?;
            }
        }
    }
    Ok(0)
}

fn flow_type_line(flow_type: &Value) -> String {
    let phases: Vec<&str> = flow_type["phases"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| p["name"].as_str())
        .collect();
    format!(
        "{:<20} v{:<3} {}",
        text(&flow_type["name"]),
        flow_type["version"],
        phases.join(" → ")
    )
}

fn read_file(path: &Path) -> Result<String, CliError> {
    std::fs::read_to_string(path)
        .map_err(|e| CliError::Input(format!("cannot read {}: {e}", path.display())))
}

/// A flow type file as a JSON object: `.json` as JSON, anything else as TOML.
fn read_definition(path: &Path) -> Result<serde_json::Map<String, Value>, CliError> {
    let text = read_file(path)?;
    let is_json = path
        .extension()
        .is_some_and(|ext| ext.eq_ignore_ascii_case("json"));
    let value: Value = if is_json {
        serde_json::from_str(&text)
            .map_err(|e| CliError::Input(format!("{} is not JSON: {e}", path.display())))?
    } else {
        toml::from_str(&text)
            .map_err(|e| CliError::Input(format!("{} is not TOML: {e}", path.display())))?
    };
    match value {
        Value::Object(map) => Ok(map),
        _ => Err(CliError::Input(format!(
            "{} must hold a table with `phases`",
            path.display()
        ))),
    }
}
