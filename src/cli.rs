//! The CLI client: talks to a running flowd over HTTP and websocket, as a user would.

use std::io::{IsTerminal, Write};
use std::time::Duration;

use actix_web::web::Bytes;
use anyhow::{Context, bail};
use clap::Subcommand;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};

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
    #[arg(long, global = true, env = "FLOWD_API_KEY")]
    pub key: Option<String>,
}

/// `flowd flows …`
#[derive(Debug, Subcommand)]
pub enum FlowsCommand {
    /// Create and start a flow; prints it.
    Create {
        flow_type: String,
        /// The flow's input, as JSON.
        #[arg(long)]
        input: Option<String>,
    },
    /// List flows, newest first.
    List {
        #[arg(long)]
        status: Option<String>,
        #[arg(long)]
        flow_type: Option<String>,
        #[arg(long, default_value_t = 20)]
        limit: u32,
    },
    /// Show one flow with its phases.
    Show { id: String },
    /// Follow a flow live until it ends: exit 0 if completed, 1 if failed or cancelled.
    Watch { id: String },
}

/// `flowd flow-types …`
#[derive(Debug, Subcommand)]
pub enum FlowTypesCommand {
    /// List the latest version of every flow type.
    List,
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

    async fn call(&self, method: &str, path: &str, body: Option<Value>) -> anyhow::Result<Value> {
        let method = awc::http::Method::from_bytes(method.as_bytes())?;
        let request = self.authorize(self.client.request(method, self.url(path)));
        let mut response = match body {
            Some(body) => request.send_json(&body).await,
            None => request.send().await,
        }
        .map_err(|e| anyhow::anyhow!("cannot reach {}: {e}", self.connection.server))?;
        let bytes: Bytes = response.body().limit(64 << 20).await?;
        let value: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        if !response.status().is_success() {
            let detail = value["detail"].as_str().unwrap_or("no detail");
            bail!(
                "{} {}: {detail}",
                response.status().as_u16(),
                value["title"].as_str().unwrap_or("error")
            );
        }
        Ok(value)
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

fn print_flow(flow: &Value) {
    println!(
        "{}  {} v{}  {}  {}",
        flow["id"].as_str().unwrap_or("?"),
        flow["flow_type"].as_str().unwrap_or("?"),
        flow["flow_type_version"],
        flow["status"].as_str().unwrap_or("?"),
        bar(flow["progress_percentage"].as_f64().unwrap_or(0.0)),
    );
    if let Some(reason) = flow.get("status_reason").filter(|r| !r.is_null()) {
        println!("  why: {reason}");
    }
    for phase in flow["phases"].as_array().into_iter().flatten() {
        let error = phase["error"]
            .as_str()
            .map(|e| format!("  ({e})"))
            .unwrap_or_default();
        println!(
            "  {:<28} {:<10} attempt {}{error}",
            phase["name"].as_str().unwrap_or("?"),
            phase["status"].as_str().unwrap_or("?"),
            phase["attempt"],
        );
    }
}

/// Runs a `flows` subcommand; the exit code says how it went.
pub async fn flows(connection: Connection, command: FlowsCommand) -> anyhow::Result<i32> {
    let api = Api::new(connection);
    match command {
        FlowsCommand::Create { flow_type, input } => {
            let input: Value = match input {
                Some(text) => serde_json::from_str(&text).context("--input is not JSON")?,
                None => json!({}),
            };
            let flow = api
                .call(
                    "POST",
                    "/v1/flows",
                    Some(json!({ "flow_type": flow_type, "input": input })),
                )
                .await?;
            print_flow(&flow);
        }
        FlowsCommand::List {
            status,
            flow_type,
            limit,
        } => {
            let mut path = format!("/v1/flows?limit={limit}");
            if let Some(status) = status {
                path.push_str(&format!("&status={status}"));
            }
            if let Some(flow_type) = flow_type {
                path.push_str(&format!("&flow_type={flow_type}"));
            }
            let page = api.call("GET", &path, None).await?;
            for flow in page["flows"].as_array().into_iter().flatten() {
                println!(
                    "{}  {:<20} {:<10} {:<24} {}",
                    flow["id"].as_str().unwrap_or("?"),
                    flow["flow_type"].as_str().unwrap_or("?"),
                    flow["status"].as_str().unwrap_or("?"),
                    flow["current_phase"].as_str().unwrap_or("-"),
                    bar(flow["progress_percentage"].as_f64().unwrap_or(0.0)),
                );
            }
        }
        FlowsCommand::Show { id } => {
            print_flow(&api.call("GET", &format!("/v1/flows/{id}"), None).await?)
        }
        FlowsCommand::Watch { id } => return watch(&api, &id).await,
    }
    Ok(0)
}

/// Follows the flow's websocket until a terminal status.
async fn watch(api: &Api, id: &str) -> anyhow::Result<i32> {
    api.call("GET", &format!("/v1/flows/{id}"), None).await?;
    let ws_url = api.url(&format!("/v1/flows/{id}/ws?after=0"));
    let mut request = api.client.ws(ws_url);
    if let Some(key) = &api.connection.key {
        request = request.bearer_auth(key);
    }
    let (_, mut socket) = request
        .connect()
        .await
        .map_err(|e| anyhow::anyhow!("websocket: {e}"))?;
    let live = std::io::stdout().is_terminal();
    let mut status = String::new();
    while let Some(frame) = socket.next().await {
        match frame? {
            awc::ws::Frame::Text(bytes) => {
                let event: Value = serde_json::from_slice(&bytes)?;
                let event_status = event["status"].as_str().unwrap_or_default();
                // A master's stream also carries its children's events: only its own end it.
                let who = match event["flow_id"].as_str() {
                    Some(flow_id) if flow_id != id => {
                        format!(
                            "child {}",
                            flow_id
                                .get(flow_id.len().saturating_sub(8)..)
                                .unwrap_or(flow_id)
                        )
                    }
                    _ => {
                        status = event_status.to_owned();
                        String::new()
                    }
                };
                let line = format!(
                    "{} {:<10} {:<24} {} {who}",
                    bar(event["progress_percentage"].as_f64().unwrap_or(0.0)),
                    event_status,
                    event["current_phase"].as_str().unwrap_or("-"),
                    event["kind"].as_str().unwrap_or_default(),
                );
                if live {
                    print!("\r\x1b[2K{line}");
                    std::io::stdout().flush()?;
                } else {
                    println!("{line}");
                }
                if matches!(status.as_str(), "completed" | "failed" | "cancelled") {
                    break;
                }
            }
            awc::ws::Frame::Ping(bytes) => socket.send(awc::ws::Message::Pong(bytes)).await?,
            awc::ws::Frame::Close(reason) => bail!("the server closed the stream: {reason:?}"),
            _ => {}
        }
    }
    if live {
        println!();
    }
    print_flow(&api.call("GET", &format!("/v1/flows/{id}"), None).await?);
    Ok(if status == "completed" { 0 } else { 1 })
}

/// Runs a `flow-types` subcommand.
pub async fn flow_types(connection: Connection, command: FlowTypesCommand) -> anyhow::Result<i32> {
    let api = Api::new(connection);
    match command {
        FlowTypesCommand::List => {
            let list = api.call("GET", "/v1/flow-types", None).await?;
            for flow_type in list["flow_types"].as_array().into_iter().flatten() {
                let phases: Vec<&str> = flow_type["phases"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|p| p["name"].as_str())
                    .collect();
                println!(
                    "{:<20} v{:<3} {}",
                    flow_type["name"].as_str().unwrap_or("?"),
                    flow_type["version"],
                    phases.join(" → ")
                );
            }
        }
    }
    Ok(0)
}
