//! A collection master flow with a fan-out to one child flow per platform: the master plans
//! which platforms to collect from, starts a `platform_collection` child for each (`child_flows`,
//! inputs from the plan's output), waits for all of them, then synthesizes their results. It
//! prints the tree's progress as it goes: the master's progress moves with its children's.
//!
//! `cargo run --example collection_flow [-- --database-url sqlite:///tmp/collection.db]`

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use flowd::store::DbStore;
use flowd_actors::definition::{FlowType, PhaseDefinition};
use flowd_actors::events::EventKind;
use flowd_actors::handler::{HandlerError, HandlerSet, PhaseContext, PhaseOutput, PhaseResult};
use flowd_actors::ids::{FlowId, Tenant};
use flowd_actors::model::NewFlow;
use flowd_actors::{Runtime, RuntimeConfig};
use serde_json::{Value, json};

#[derive(Parser)]
struct Args {
    /// Where to keep the flows; a fresh temporary SQLite file when absent.
    #[arg(long)]
    database_url: Option<String>,
    /// Simulated time each platform's collection takes.
    #[arg(long, default_value_t = 400)]
    collect_ms: u64,
}

/// Chooses the platforms to collect from: the children's inputs.
async fn plan(ctx: PhaseContext) -> PhaseResult {
    let platforms = ctx.input["platforms"]
        .as_array()
        .cloned()
        .ok_or_else(|| HandlerError::fatal("bad_input", "input.platforms must be an array"))?;
    let targets: Vec<Value> = platforms
        .into_iter()
        .map(|platform| json!({ "platform": platform, "engagement": ctx.input["engagement"] }))
        .collect();
    Ok(PhaseOutput::new(json!({ "targets": targets })))
}

/// One platform's inventory, as a child flow's phase.
async fn collect(ctx: PhaseContext) -> PhaseResult {
    let ms = ctx.params["ms"].as_u64().unwrap_or(100);
    let platform = ctx.input["platform"]
        .as_str()
        .unwrap_or("unknown")
        .to_owned();
    tokio::time::sleep(Duration::from_millis(ms)).await;
    let assets = platform.len() as u64 * 7;
    Ok(PhaseOutput::new(
        json!({ "platform": platform, "assets": assets }),
    ))
}

/// Normalizes a platform's inventory.
async fn normalize(ctx: PhaseContext) -> PhaseResult {
    let collected = ctx.outputs.get("collect").cloned().unwrap_or_default();
    tokio::time::sleep(Duration::from_millis(
        ctx.params["ms"].as_u64().unwrap_or(100),
    ))
    .await;
    Ok(PhaseOutput::new(json!({
        "platform": collected["platform"],
        "normalized_assets": collected["assets"],
    })))
}

/// Reads the fan-out's output (every child's phase outputs) and sums it up.
async fn synthesis(ctx: PhaseContext) -> PhaseResult {
    let fan_out = ctx
        .outputs
        .get("collect_platforms")
        .ok_or_else(|| HandlerError::fatal("bad_input", "no fan-out output"))?;
    let mut by_platform = BTreeMap::new();
    for child in fan_out["children"].as_array().into_iter().flatten() {
        let normalized = &child["outputs"]["normalize"];
        by_platform.insert(
            normalized["platform"].as_str().unwrap_or("?").to_owned(),
            normalized["normalized_assets"].clone(),
        );
    }
    let total: u64 = by_platform.values().filter_map(Value::as_u64).sum();
    Ok(PhaseOutput::new(
        json!({ "assets_by_platform": by_platform, "total_assets": total }),
    ))
}

fn handlers() -> HandlerSet {
    let mut set = HandlerSet::with_builtins();
    set.register("plan_collection", plan)
        .register("collect_platform", collect)
        .register("normalize_platform", normalize)
        .register("synthesize_collection", synthesis);
    set
}

fn flow_types(collect_ms: u64) -> Vec<FlowType> {
    let child = FlowType {
        name: "platform_collection".into(),
        version: 1,
        phases: vec![
            PhaseDefinition {
                params: json!({ "ms": collect_ms }),
                retries: 2,
                ..PhaseDefinition::new("collect", "collect_platform")
            },
            PhaseDefinition {
                params: json!({ "ms": collect_ms / 2 }),
                ..PhaseDefinition::new("normalize", "normalize_platform")
            },
        ],
    };
    let master = FlowType {
        name: "collection".into(),
        version: 1,
        phases: vec![
            PhaseDefinition::new("plan", "plan_collection"),
            PhaseDefinition {
                params: json!({
                    "flow_type": "platform_collection",
                    "inputs_from": "plan/targets",
                    "policy": "all",
                }),
                weight: 4,
                ..PhaseDefinition::new("collect_platforms", "child_flows")
            },
            PhaseDefinition::new("synthesis", "synthesize_collection"),
        ],
    };
    vec![child, master]
}

#[actix_web::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let scratch = tempfile::tempdir()?;
    let url = args.database_url.unwrap_or_else(|| {
        format!(
            "sqlite://{}",
            scratch.path().join("collection.db").display()
        )
    });
    let store = DbStore::connect(&url, 4).await?;
    let runtime = Runtime::start(
        RuntimeConfig::default(),
        Arc::new(store),
        handlers(),
        flow_types(args.collect_ms),
    )
    .await?;
    let mut events = runtime.subscribe();
    let input = json!({
        "engagement": "migration-2026",
        "platforms": ["aws", "azure", "gcp", "vmware", "kubernetes", "mainframe"],
    });
    let created = runtime
        .create_flow(NewFlow {
            flow_type: "collection".into(),
            input,
            parent_flow_id: None,
            master_flow_id: None,
            tenant: Tenant::default_tenant(),
            created_by: Some("collection-example".into()),
            idempotency_key: None,
        })
        .await?;
    let master = created.flow.id;
    println!("master flow {master} ({})", created.flow.status);
    let mut names: BTreeMap<FlowId, String> = BTreeMap::new();
    loop {
        let event = events.recv().await?;
        if event.master_flow_id != master {
            continue;
        }
        let who = if event.flow_id == master {
            "master".to_owned()
        } else {
            let next = format!("child {}", names.len() + 1);
            names.entry(event.flow_id).or_insert(next).clone()
        };
        println!(
            "{who:<8} {:<16} {:<10} phase={:<18} progress={:>6.2}%",
            event.kind.as_str(),
            event.status.as_str(),
            event.current_phase.as_deref().unwrap_or("-"),
            event.progress_percentage,
        );
        if event.flow_id == master
            && matches!(
                event.kind,
                EventKind::FlowCompleted | EventKind::FlowFailed | EventKind::FlowCancelled
            )
        {
            break;
        }
    }
    let flow = runtime.flow(&Tenant::default_tenant(), master).await?;
    println!(
        "master {} at {}% with {} children",
        flow.status,
        flow.progress_percentage,
        names.len()
    );
    if let Some(output) = flow
        .phases
        .iter()
        .find(|p| p.name == "synthesis")
        .and_then(|p| p.output.clone())
    {
        println!("synthesis: {output}");
    }
    anyhow::ensure!(
        flow.status == flowd_actors::model::FlowStatus::Completed,
        "the collection did not complete"
    );
    Ok(())
}
