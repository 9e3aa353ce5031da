// Renders docs/dashboard.png, the README's screenshot: a few flows in different states.
//   node bench/readme-shot.js   (after cargo build --bin flowd)
import { join, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';
import { startServer, api } from '../tests/server.js';

const out = join(dirname(fileURLToPath(import.meta.url)), '..', '..', 'docs', 'dashboard.png');
const server = await startServer();
const create = (flow_type) => api(server.base, '/v1/flows', { method: 'POST', body: { flow_type }, expect: 201 });
for (const type of ['quick', 'flaky', 'quick']) await create(type);
await new Promise((r) => setTimeout(r, 2500));
const paused = await create('slow');
await api(server.base, `/v1/flows/${paused.id}/pause`, { method: 'POST' });
const cancelled = await create('slow');
await api(server.base, `/v1/flows/${cancelled.id}/cancel`, { method: 'POST' });
await create('crewed');
await create('slow');
await create('quick');
await new Promise((r) => setTimeout(r, 700));
const browser = await chromium.launch({ executablePath: process.env.CHROMIUM || '/usr/bin/chromium', args: ['--no-sandbox'] });
const page = await browser.newPage({ viewport: { width: 1100, height: 520 } });
await page.goto(`${server.base}/ui`);
await page.waitForSelector('#flow-rows tr[data-flow-id]');
await page.waitForTimeout(300);
await page.screenshot({ path: out });
await browser.close();
server.stop();
console.log(`wrote ${out}`);
