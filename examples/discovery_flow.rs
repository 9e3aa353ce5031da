//! Embeds the flowd runtime in a program: registers Rust handlers for the six discovery phases,
//! runs one discovery flow on an embedded SQLite database, and prints every committed transition
//! with the flow's progress.
//!
//! `cargo run --example discovery_flow [-- --database-url sqlite:///tmp/discovery.db]`

use std::collections::BTreeMap;
use std::sync::Arc;

use clap::Parser;
use flowd::store::DbStore;
use flowd_actors::definition::{FlowType, PhaseDefinition};
use flowd_actors::events::EventKind;
use flowd_actors::handler::{HandlerError, HandlerSet, PhaseContext, PhaseOutput, PhaseResult};
use flowd_actors::ids::Tenant;
use flowd_actors::model::NewFlow;
use flowd_actors::{Runtime, RuntimeConfig};
use serde_json::{Value, json};

#[derive(Parser)]
struct Args {
    /// Where to keep the flows; a fresh temporary SQLite file when absent.
    #[arg(long)]
    database_url: Option<String>,
}

const PHASES: [&str; 6] = [
    "data_import",
    "field_mapping",
    "data_cleansing",
    "asset_inventory",
    "dependency_analysis",
    "tech_debt_assessment",
];

fn records(ctx: &PhaseContext) -> Result<Vec<Value>, HandlerError> {
    ctx.input["records"]
        .as_array()
        .cloned()
        .ok_or_else(|| HandlerError::fatal("bad_input", "input.records must be an array"))
}

async fn data_import(ctx: PhaseContext) -> PhaseResult {
    let rows = records(&ctx)?;
    Ok(PhaseOutput::new(json!({ "imported": rows.len() })))
}

async fn field_mapping(ctx: PhaseContext) -> PhaseResult {
    let mut fields = BTreeMap::new();
    for row in records(&ctx)? {
        for key in row.as_object().into_iter().flat_map(|o| o.keys()) {
            *fields.entry(key.to_lowercase()).or_insert(0) += 1;
        }
    }
    Ok(PhaseOutput::new(json!({ "mapped_fields": fields })))
}

async fn data_cleansing(ctx: PhaseContext) -> PhaseResult {
    let rows = records(&ctx)?;
    let clean = rows
        .iter()
        .filter(|r| r["hostname"].as_str().is_some_and(|h| !h.is_empty()))
        .count();
    Ok(PhaseOutput::new(
        json!({ "clean": clean, "dropped": rows.len() - clean }),
    ))
}

async fn asset_inventory(ctx: PhaseContext) -> PhaseResult {
    let mut by_os: BTreeMap<String, u32> = BTreeMap::new();
    for row in records(&ctx)? {
        *by_os
            .entry(row["os"].as_str().unwrap_or("unknown").to_owned())
            .or_default() += 1;
    }
    Ok(PhaseOutput::new(json!({ "assets_by_os": by_os })))
}

async fn dependency_analysis(ctx: PhaseContext) -> PhaseResult {
    let edges: usize = records(&ctx)?
        .iter()
        .map(|r| r["depends_on"].as_array().map_or(0, Vec::len))
        .sum();
    Ok(PhaseOutput::new(json!({ "dependencies": edges })))
}

async fn tech_debt_assessment(ctx: PhaseContext) -> PhaseResult {
    let legacy = records(&ctx)?
        .iter()
        .filter(|r| r["os"] == "windows-2008")
        .count();
    let assets = ctx
        .outputs
        .get("data_cleansing")
        .map_or(json!(null), |o| o["clean"].clone());
    Ok(PhaseOutput::new(
        json!({ "legacy_hosts": legacy, "assessed": assets }),
    ))
}

fn handlers() -> HandlerSet {
    let mut set = HandlerSet::with_builtins();
    set.register("data_import", data_import)
        .register("field_mapping", field_mapping)
        .register("data_cleansing", data_cleansing)
        .register("asset_inventory", asset_inventory)
        .register("dependency_analysis", dependency_analysis)
        .register("tech_debt_assessment", tech_debt_assessment);
    set
}

fn discovery() -> FlowType {
    FlowType {
        name: "discovery_rust".into(),
        version: 1,
        phases: PHASES
            .iter()
            .map(|name| PhaseDefinition {
                timeout_s: Some(30),
                retries: 2,
                ..PhaseDefinition::new(*name, *name)
            })
            .collect(),
    }
}

#[actix_web::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let scratch = tempfile::tempdir()?;
    let url = args
        .database_url
        .unwrap_or_else(|| format!("sqlite://{}", scratch.path().join("discovery.db").display()));
    let store = DbStore::connect(&url, 4).await?;
    let runtime = Runtime::start(
        RuntimeConfig::default(),
        Arc::new(store),
        handlers(),
        vec![discovery()],
    )
    .await?;
    let mut events = runtime.subscribe();
    let input = json!({ "records": [
        { "hostname": "app-01", "os": "rhel-8", "depends_on": ["db-01"] },
        { "hostname": "db-01", "os": "windows-2008", "depends_on": [] },
        { "hostname": "", "os": "rhel-7", "depends_on": ["app-01", "db-01"] },
    ]});
    let created = runtime
        .create_flow(NewFlow {
            flow_type: "discovery_rust".into(),
            input,
            parent_flow_id: None,
            master_flow_id: None,
            tenant: Tenant::default_tenant(),
            created_by: Some("discovery-example".into()),
            idempotency_key: None,
        })
        .await?;
    let id = created.flow.id;
    println!("created flow {id} ({})", created.flow.status);
    loop {
        let event = events.recv().await?;
        if event.flow_id != id {
            continue;
        }
        println!(
            "#{:<2} {:<16} {:<10} phase={:<22} next={:<22} progress={:>5.1}%",
            event.seq,
            event.kind.as_str(),
            event.status.as_str(),
            event.current_phase.as_deref().unwrap_or("-"),
            event.next_phase.as_deref().unwrap_or("-"),
            event.progress_percentage,
        );
        if matches!(
            event.kind,
            EventKind::FlowCompleted | EventKind::FlowFailed | EventKind::FlowCancelled
        ) {
            break;
        }
    }
    let flow = runtime.flow(&Tenant::default_tenant(), id).await?;
    for phase in &flow.phases {
        println!(
            "{:<22} {:<10} {}",
            phase.name,
            phase.status.as_str(),
            phase.output.clone().unwrap_or_default()
        );
    }
    Ok(())
}
