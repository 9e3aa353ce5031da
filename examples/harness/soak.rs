//! `soak`: the real server under a steady create rate of a mixed 6-phase flow (three `command`
//! phases, each appending its context to a step log; a `noop`, a 20 ms `sleep`, a `noop`), with
//! a 1 s stored-flow sweep. Every second it samples the live flow actors and the server's
//! resident memory; the creates' latency runs from each one's scheduled time (open loop). After
//! the creates, it waits for every flow to end, then for the server to sit idle 5 s.
//!
//! Reports the creates' p50/p99/max, the most live flow actors, resident memory before, at its
//! peak and after the drain, the flows that failed, and the phase executions beyond one per
//! (flow, phase) in the step log (`reruns`: must be 0). The per-second series goes to stderr as
//! one JSON line a second.

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::{
    Args, Figures, HttpCreate, OpenLoop, open_loop_creates, percentiles, scrape, start_server,
};

/// The flow type every soak create starts.
const FLOW_TYPE: &str = "soak_mixed";

/// The config of the soak's server: the mixed flow type, a short sweep.
fn config(url: &str, sync: &str, log: &Path) -> String {
    let command = |name: &str| {
        format!(
            "[[flow_types.phases]]\nname = \"{name}\"\nhandler = \"command\"\nparams = {{ program = \"awk\", args = [\"-v\", \"steps={}\", \"{{ print >> steps }} END {{ print \\\"{{}}\\\" }}\"] }}\n",
            log.display()
        )
    };
    format!(
        "[server]\nbind = \"127.0.0.1:0\"\n[database]\nurl = \"{url}\"\n{sync}[health]\nstored_sweep_s = 1\n\
         [[flow_types]]\nname = \"{FLOW_TYPE}\"\nversion = 1\n{}\
         [[flow_types.phases]]\nname = \"prepare\"\nhandler = \"noop\"\n{}\
         [[flow_types.phases]]\nname = \"wait\"\nhandler = \"sleep\"\nparams = {{ ms = 20 }}\n{}\
         [[flow_types.phases]]\nname = \"finish\"\nhandler = \"noop\"\n",
        command("import"),
        command("enrich"),
        command("report"),
    )
}

/// The server's resident memory in MB, from `/proc`.
fn rss_mb(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
            line.split_whitespace().nth(1)?.parse::<f64>().ok()
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

/// Executions beyond the first of each (flow, phase) in the step log.
fn reruns(log: &Path) -> usize {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let mut runs: HashMap<(String, String), usize> = HashMap::new();
    for line in text.lines() {
        if let Ok(context) = serde_json::from_str::<Value>(line) {
            let key = (
                context["flow_id"].as_str().unwrap_or_default().to_owned(),
                context["phase"].as_str().unwrap_or_default().to_owned(),
            );
            *runs.entry(key).or_default() += 1;
        }
    }
    runs.values().map(|count| count - 1).sum()
}

/// Flows that ended, by status, from `/metrics`.
fn ended(sample: &HashMap<String, f64>, status: &str) -> f64 {
    sample
        .get(&format!("flowd_flows{{status=\"{status}\"}}"))
        .copied()
        .unwrap_or(0.0)
}

pub async fn run(args: &Args, url: &str) -> Result<Figures, String> {
    let scratch = tempfile::tempdir().map_err(|e| e.to_string())?;
    let log = scratch.path().join("steps.log");
    let config_path = scratch.path().join("soak.toml");
    std::fs::write(&config_path, config(url, super::sync_toml(args), &log))
        .map_err(|e| e.to_string())?;
    let server = start_server(&config_path)?;
    let pid = server.pid();
    let client = awc::Client::builder()
        .connector(awc::Connector::new().limit(args.concurrency))
        .timeout(Duration::from_secs(120))
        .finish();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_idle = rss_mb(pid);

    let n = args.flows();
    let rate = args.rate();
    let start = Instant::now();
    // Samples once a second until the flows are all done.
    let sampler = {
        let (client, base) = (client.clone(), server.base.clone());
        actix_web::rt::spawn(async move {
            let mut samples = Vec::new();
            loop {
                let sample = scrape(&client, &base).await.unwrap_or_default();
                let live = sample.get("flowd_live_flow_actors").copied().unwrap_or(0.0);
                let done = ended(&sample, "completed")
                    + ended(&sample, "failed")
                    + ended(&sample, "cancelled");
                let rss = rss_mb(pid);
                let t = start.elapsed().as_secs_f64();
                eprintln!(
                    "{}",
                    json!({"t_s": t.round(), "live_flows": live, "rss_mb": rss.round(), "ended": done})
                );
                samples.push((live, rss));
                if done >= n as f64 {
                    return samples;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        })
    };
    let endpoint = format!("{}/v1/flows", server.base);
    let OpenLoop { creates, .. } =
        open_loop_creates(&client, &endpoint, FLOW_TYPE, n, rate, start).await?;
    let mut timings: Vec<HttpCreate> = Vec::with_capacity(n);
    let mut refused = 0;
    for create in creates {
        match create {
            Ok(((status, _), timing)) if status.as_u16() == 201 => timings.push(timing),
            _ => refused += 1,
        }
    }
    let last = timings.iter().map(|c| c.answered).max().unwrap_or(start);
    let samples = sampler
        .await
        .map_err(|e| format!("the sampler stopped: {e}"))?;
    let drain_s = last.elapsed().as_secs_f64();
    let final_sample = scrape(&client, &server.base).await?;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let rss_drained = rss_mb(pid);
    drop(server);

    let latencies: Vec<Duration> = timings.iter().map(|c| c.answered - c.scheduled).collect();
    let max = latencies.iter().max().copied().unwrap_or_default();
    let (p50, p99) = percentiles(latencies);
    let max_live = samples.iter().map(|(live, _)| *live).fold(0.0, f64::max);
    let rss_peak = samples.iter().map(|(_, rss)| *rss).fold(rss_idle, f64::max);
    Ok(Figures::from([
        ("p50_ms", p50),
        ("p99_ms", p99),
        ("max_ms", max.as_secs_f64() * 1e3),
        (
            "achieved_rate",
            n as f64 / (last - start).as_secs_f64().max(1e-9),
        ),
        ("refused_creates", refused as f64),
        ("max_live_flows", max_live),
        ("failed_flows", ended(&final_sample, "failed")),
        ("reruns", reruns(&log) as f64),
        ("drain_s", drain_s),
        ("rss_idle_mb", rss_idle),
        ("rss_peak_mb", rss_peak),
        ("rss_drained_mb", rss_drained),
    ]))
}
