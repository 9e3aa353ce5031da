// The user's loop, from Node, as issue 20 first measured it: C clients, each creating a flow
// over HTTP and waiting for its `flow_completed` on the flow's own websocket, until N flows
// completed. Prints one JSON line: flows/s, create → completed p50/p99 (ms).
//
// The Rust harness (`load_harness --scenario http_e2e`) measures the same loop with a lighter
// client; this one exists so that figures stay comparable with the Node client the issue's
// baseline was taken with. It needs Node ≥ 20 with `--experimental-websocket` (Node 22: built in).
//
//   node --experimental-websocket bench/http-e2e.js BASE_URL FLOW_TYPE CONCURRENCY FLOWS
//   e.g. node --experimental-websocket bench/http-e2e.js http://127.0.0.1:8080 e2e_noop 50 3000
// bench/http-e2e-run.sh starts a server on a fresh database for it and adds the server's CPU.

const [base, flowType, concurrencyArg, flowsArg] = process.argv.slice(2);
if (!base || !flowType) {
  console.error('usage: http-e2e.js BASE_URL FLOW_TYPE CONCURRENCY FLOWS');
  process.exit(2);
}
const concurrency = Number(concurrencyArg ?? 50);
const flows = Number(flowsArg ?? 1000);
const wsBase = base.replace(/^http/, 'ws');

/** Creates a flow; its id. */
async function create() {
  const response = await fetch(`${base}/v1/flows`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ flow_type: flowType }),
  });
  const body = await response.json();
  if (response.status !== 201) throw new Error(`create answered ${response.status}: ${JSON.stringify(body)}`);
  return body.id;
}

/** Resolves when the flow's own stream says it completed; rejects on any other ending. */
function completed(id) {
  return new Promise((resolve, reject) => {
    const socket = new WebSocket(`${wsBase}/v1/flows/${id}/ws?after=0`);
    let lastSeq = 0;
    socket.onmessage = (message) => {
      const event = JSON.parse(message.data);
      if (event.flow_id !== id) return reject(new Error(`flow ${id}'s stream carried ${event.flow_id}`));
      if (event.seq !== lastSeq + 1) return reject(new Error(`flow ${id}: seq ${event.seq} after ${lastSeq}`));
      lastSeq = event.seq;
      if (event.kind === 'flow_completed') {
        socket.close();
        resolve();
      } else if (event.kind === 'flow_failed' || event.kind === 'flow_cancelled') {
        reject(new Error(`flow ${id} ended ${event.kind}`));
      }
    };
    socket.onerror = () => reject(new Error(`flow ${id}: websocket error`));
  });
}

const latencies = [];
let started = 0;
async function client() {
  while (started < flows) {
    started += 1;
    const sent = performance.now();
    const id = await create();
    await completed(id);
    latencies.push(performance.now() - sent);
  }
}

const begin = performance.now();
await Promise.all(Array.from({ length: concurrency }, client));
const seconds = (performance.now() - begin) / 1000;
latencies.sort((a, b) => a - b);
const at = (q) => latencies[Math.min(latencies.length - 1, Math.floor(q * latencies.length))];
console.log(JSON.stringify({
  client: 'node',
  concurrency,
  flows: latencies.length,
  flows_per_sec: Number((latencies.length / seconds).toFixed(1)),
  p50_ms: Number(at(0.5).toFixed(1)),
  p99_ms: Number(at(0.99).toFixed(1)),
}));
