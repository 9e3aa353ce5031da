// The flow page while its flow emits events fast: a flow of 100 short phases (two events each,
// about 100 events/s) watched in Chromium; reports the events per second the server committed
// for it, the longest gap between animation frames and the longest main-thread task.
//   node bench/flow-page-events.js   (after cargo build --bin flowd)
import { chromium } from 'playwright-core';
import { startServer, api } from '../tests/server.js';

let busy = '[[flow_types]]\nname = "busy"\nversion = 1\n';
for (let i = 0; i < 100; i += 1) busy += `[[flow_types.phases]]\nname = "p${i}"\nhandler = "sleep"\nparams = { ms = 10 }\n`;
const server = await startServer(busy);
const browser = await chromium.launch({ executablePath: process.env.CHROMIUM || '/usr/bin/chromium', args: ['--no-sandbox'] });
const page = await browser.newPage();
// Held by a pause at its first phase boundary while the page opens, then resumed.
const busyFlow = await api(server.base, '/v1/flows', { method: 'POST', body: { flow_type: 'busy' }, expect: 201 });
await api(server.base, `/v1/flows/${busyFlow.id}/pause`, { method: 'POST' });
await page.goto(`${server.base}/ui/flows/${busyFlow.id}`);
await page.waitForSelector('#flow-status [data-status="paused"]');
await page.evaluate(() => {
  window.__gaps = [];
  window.__long = 0;
  new PerformanceObserver((list) => { for (const e of list.getEntries()) window.__long = Math.max(window.__long, e.duration); })
    .observe({ type: 'longtask', buffered: false });
  let last = performance.now();
  const tick = (now) => { window.__gaps.push(now - last); last = now; requestAnimationFrame(tick); };
  requestAnimationFrame(tick);
});
await api(server.base, `/v1/flows/${busyFlow.id}/resume`, { method: 'POST' });
await page.waitForSelector('#flow-status [data-status="completed"]', { timeout: 60000 });
const stored = await api(server.base, `/v1/flows/${busyFlow.id}/events?limit=10000`);
const events = stored.events.filter((e) => e.kind !== 'flow_initialized' && e.kind !== 'flow_started' && e.kind !== 'flow_paused');
const resumed = events.findIndex((e) => e.kind === 'flow_resumed');
const burst = events.slice(resumed);
const seconds = (new Date(burst.at(-1).at) - new Date(burst[0].at)) / 1000;
const { gaps, long } = await page.evaluate(() => ({ gaps: window.__gaps, long: window.__long }));
gaps.sort((a, b) => a - b);
console.log(`${burst.length} events in ${seconds.toFixed(2)} s (${(burst.length / seconds).toFixed(0)}/s)`);
console.log(`frames: ${gaps.length}, median gap ${gaps[Math.floor(gaps.length / 2)].toFixed(1)} ms, p99 ${gaps[Math.floor(gaps.length * 0.99)].toFixed(1)} ms, longest task ${long.toFixed(0)} ms`);
await browser.close();
server.stop();
