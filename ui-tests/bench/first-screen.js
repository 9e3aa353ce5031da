// The flows page's first screen with many stored flows: seeds a SQLite database through the API
// (a few hundred real flows) and then by copying rows (to FLOWS, default 100000, all terminal so
// the restart resumes none), restarts the server on it, and times the API calls of the first
// screen and the browser from navigation to the first row. Not part of `npm test`:
//   node bench/first-screen.js   (FLOWD_BIN, CHROMIUM, FLOWS override)
import { execFileSync } from 'node:child_process';
import { join } from 'node:path';
import { chromium } from 'playwright-core';
import { startServer, api } from '../tests/server.js';

const FLOWS = Number(process.env.FLOWS || 100000);
const seed = await startServer();
const created = [];
for (let i = 0; i < 300; i += 1) {
  created.push(api(seed.base, '/v1/flows', { method: 'POST', body: { flow_type: i % 3 ? 'quick' : 'flaky' }, expect: 201 }));
}
await Promise.all(created);
for (;;) {
  const { counts } = await api(seed.base, '/v1/flows/counts');
  if (counts.completed === 300) break;
  await new Promise((r) => setTimeout(r, 200));
}
seed.stop(true);
const db = join(seed.dir, 'flowd.db');
const template = "(SELECT * FROM flows WHERE flow_type = 'quick' LIMIT 1)";
execFileSync('sqlite3', [db, `
WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ${FLOWS})
INSERT INTO flows SELECT printf('00%06x-0000-7000-8000-%012x', i, i), 'quick', 1,
  CASE i % 10 WHEN 0 THEN 'failed' WHEN 1 THEN 'cancelled' ELSE 'completed' END, NULL, NULL, 100.0,
  t.input, NULL, printf('00%06x-0000-7000-8000-%012x', i, i), t.client_account_id, t.engagement_id,
  NULL, NULL, t.last_seq, t.created_at, t.updated_at FROM n, ${template} AS t;
INSERT INTO phase_runs SELECT f.id, p.position, p.name, p.status, p.attempt, p.started_at, p.finished_at, p.output, p.error
  FROM flows f, (SELECT * FROM phase_runs WHERE flow_id = (SELECT id FROM ${template})) p WHERE f.id LIKE '00%';
ANALYZE;`]);
const stored = execFileSync('sqlite3', [db, 'SELECT count(*) FROM flows']).toString().trim();

const server = await startServer('', seed.dir);
const time = async (path) => {
  const start = performance.now();
  await api(server.base, path);
  return performance.now() - start;
};
const runs = [];
for (let i = 0; i < 10; i += 1) {
  const [counts, page, types] = await Promise.all([time('/v1/flows/counts'), time('/v1/flows?limit=50'), time('/v1/flow-types')]);
  const filtered = await time('/v1/flows?limit=50&status=failed');
  runs.push({ counts, page, types, filtered, firstScreen: Math.max(counts, types) + page });
}
const median = (key) => runs.map((r) => r[key]).sort((a, b) => a - b)[Math.floor(runs.length / 2)];
const browser = await chromium.launch({ executablePath: process.env.CHROMIUM || '/usr/bin/chromium', args: ['--no-sandbox'] });
const page = await browser.newPage();
const browserRuns = [];
for (let i = 0; i < 5; i += 1) {
  const start = performance.now();
  await page.goto(`${server.base}/ui`);
  await page.waitForSelector('#flow-rows tr[data-flow-id]');
  browserRuns.push(performance.now() - start);
}
await browser.close();
server.stop();
browserRuns.sort((a, b) => a - b);
console.log(`stored flows: ${stored}`);
console.log(`server, median of 10: counts ${median('counts').toFixed(1)} ms, page of 50 ${median('page').toFixed(1)} ms, flow types ${median('types').toFixed(1)} ms, status-filtered page ${median('filtered').toFixed(1)} ms; first screen (counts ‖ types, then page) ${median('firstScreen').toFixed(1)} ms`);
console.log(`browser, navigation to the first row, median of 5: ${browserRuns[2].toFixed(0)} ms`);
