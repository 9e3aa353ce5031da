// The dashboard in a real headless Chromium (Debian's), against the real flowd server.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync } from 'node:fs';
import { join, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';
import { startServer, api } from './server.js';

const SHOTS = join(dirname(fileURLToPath(import.meta.url)), '..', 'screenshots');
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
let browser;
let open;
let secured;
let faulty;

before(async () => {
  mkdirSync(SHOTS, { recursive: true });
  browser = await chromium.launch({ executablePath: CHROMIUM, args: ['--no-sandbox'] });
  open = await startServer();
  secured = await startServer(`
[auth]
enabled = true
keys = [
  { key = "tenant-a-key", client_account_id = "acme", engagement_id = "e1" },
  { key = "tenant-b-key", client_account_id = "globex", engagement_id = "e1" },
]`);
  // Test-only fault routes and a short ping timeout: a frozen actor is restarted within a second.
  faulty = await startServer(`
[health]
ping_interval_ms = 200
ping_timeout_ms = 400
[faults]
enabled = true`);
});

after(async () => {
  await browser?.close();
  open?.stop();
  secured?.stop();
  faulty?.stop();
});

async function newPage(t) {
  const context = await browser.newContext({ viewport: { width: 1200, height: 900 } });
  const page = await context.newPage();
  const errors = [];
  page.on('pageerror', (e) => errors.push(e.message));
  t.after(async () => {
    await context.close();
    assert.deepEqual(errors, [], 'no script errors');
  });
  return page;
}

const status = (page, value) => page.waitForSelector(`#flow-status [data-status="${value}"]`, { timeout: 20000 });

test('a flow created through the API appears live and its page reaches 100 and completed', async (t) => {
  const page = await newPage(t);
  await page.goto(`${open.base}/ui`);
  await page.waitForSelector('#flow-rows');
  await page.evaluate(() => { window.__sameDocument = true; });

  const flow = await api(open.base, '/v1/flows', { method: 'POST', body: { flow_type: 'quick', input: { n: 1 } }, expect: 201 });
  const row = await page.waitForSelector(`tr[data-flow-id="${flow.id}"]`, { timeout: 10000 });
  assert.ok(await row.isVisible());
  await page.screenshot({ path: join(SHOTS, 'flows.png') });

  await page.click(`tr[data-flow-id="${flow.id}"] a`);
  await page.waitForSelector('#flow-progress');
  await page.waitForSelector('#flow-progress[aria-valuenow="100"]', { timeout: 20000 });
  await status(page, 'completed');
  assert.equal(await page.textContent('#flow-progress-text'), '100%');
  assert.equal(await page.evaluate(() => window.__sameDocument), true, 'no reload');
  // Only completions and errors notify.
  await page.waitForSelector('.notice >> text=Flow completed');
  await page.screenshot({ path: join(SHOTS, 'flow.png'), fullPage: true });
  // Actions that do not apply are disabled.
  for (const action of ['pause', 'resume', 'cancel', 'retry']) {
    assert.equal(await page.isDisabled(`#action-${action}`), true, action);
  }
});

test('a phase that fails once shows its journal row and the flow still completes', async (t) => {
  const page = await newPage(t);
  const flow = await api(open.base, '/v1/flows', { method: 'POST', body: { flow_type: 'flaky' }, expect: 201 });
  await page.goto(`${open.base}/ui/flows/${flow.id}`);
  const journal = await page.waitForSelector('#failures tr[data-kind]', { timeout: 15000 });
  assert.match(await journal.textContent(), /shaky/);
  await status(page, 'completed');
  await page.waitForSelector('#flow-progress[aria-valuenow="100"]');
  assert.equal(await page.locator('#failures tr[data-kind]').count(), 1);
  // The timeline shows both attempts: the failed one, then the retry after its backoff.
  const attempts = page.locator('tr[data-phase="shaky"] .attempts li');
  await page.waitForFunction(() => document.querySelectorAll('tr[data-phase="shaky"] .attempts li').length === 2);
  assert.match(await attempts.nth(0).textContent(), /#1 · queued .* · ran .* · failed/);
  assert.match(await attempts.nth(1).textContent(), /#2 · backoff \d.* · ran .* · succeeded/);
});

test("a row's reason follows the tenant stream's events, with no re-read of the flow", async (t) => {
  const page = await newPage(t);
  await page.goto(`${open.base}/ui`);
  await page.waitForSelector('#flow-rows');
  const flow = await api(open.base, '/v1/flows', { method: 'POST', body: { flow_type: 'slow' }, expect: 201 });
  const reason = `tr[data-flow-id="${flow.id}"] .cell-reason .reason`;
  await page.waitForSelector(`${reason}[data-kind="running"]`, { timeout: 10000 });
  const reads = [];
  page.on('request', (request) => {
    if (new URL(request.url()).pathname === `/v1/flows/${flow.id}`) reads.push(request.url());
  });
  await api(open.base, `/v1/flows/${flow.id}/pause`, { method: 'POST', body: {} });
  await page.waitForSelector(`${reason}[data-kind="paused"]`, { timeout: 10000 });
  await api(open.base, `/v1/flows/${flow.id}/resume`, { method: 'POST', body: {} });
  const running = await page.waitForSelector(`${reason}[data-kind="running"]`, { timeout: 10000 });
  assert.match(await running.textContent(), /^Running (one|two|three) \(sleep\), attempt 1$/);
  assert.deepEqual(reads, [], 'the reason came with the events');
  await api(open.base, `/v1/flows/${flow.id}/cancel`, { method: 'POST', body: {} });
  await page.waitForSelector(`tr[data-flow-id="${flow.id}"] .cell-status [data-status="cancelled"]`);
  assert.equal(await page.locator(`${reason}`).count(), 0, 'a terminal flow has no reason');
});

test('a restart by health after a missed ping shows as the reason, in the journal and the events', async (t) => {
  const page = await newPage(t);
  const flow = await api(faulty.base, '/v1/flows', { method: 'POST', body: { flow_type: 'crewed' }, expect: 201 });
  await page.goto(`${faulty.base}/ui/flows/${flow.id}`);
  await page.waitForSelector('#status-reason[data-kind="waiting_for_worker"]', { timeout: 15000 });
  await api(faulty.base, `/v1/flows/${flow.id}/faults/freeze`, { method: 'POST', body: { ms: 3000, times: 1 }, expect: 202 });
  const reason = await page.waitForSelector('#status-reason[data-kind="restarted_by_health"]', { timeout: 15000 });
  assert.match(await reason.textContent(), /^Restarted by health after a missed ping at .*, resuming crew \(no answer to ping within/);
  await status(page, 'running');
  const journal = await page.waitForSelector('#failures tr[data-kind="missed_ping"]', { timeout: 10000 });
  assert.match(await journal.textContent(), /crew/);
  const event = await page.waitForSelector('#events tr[data-kind="flow_restarted"]');
  assert.match(await event.textContent(), /Restarted by health/);
  await page.waitForSelector('tr[data-phase="crew"] .attempts li >> text=restarted by health');
  // Errors notify; a restart the flow survives is not one, and nothing else toasts.
  assert.equal(await page.locator('.notice').count(), 0);
  // The reason holds after a reload (the flow JSON says the same as the event).
  await page.reload();
  await page.waitForSelector('#status-reason[data-kind="restarted_by_health"]');
  await page.screenshot({ path: join(SHOTS, 'flow-restarted.png'), fullPage: true });
});

test('pause and resume from the buttons change the status shown and stored', async (t) => {
  const page = await newPage(t);
  const flow = await api(open.base, '/v1/flows', { method: 'POST', body: { flow_type: 'slow' }, expect: 201 });
  await page.goto(`${open.base}/ui/flows/${flow.id}`);
  await status(page, 'running');
  assert.equal(await page.isDisabled('#action-resume'), true);
  await page.click('#action-pause');
  await status(page, 'paused');
  assert.equal((await api(open.base, `/v1/flows/${flow.id}`)).status, 'paused');
  await page.waitForSelector('#status-reason[data-kind="paused"]');
  assert.equal(await page.isDisabled('#action-pause'), true);
  await page.click('#action-resume');
  await status(page, 'running');
  assert.notEqual((await api(open.base, `/v1/flows/${flow.id}`)).status, 'paused');
  // Cancel asks first; declining keeps the flow.
  await page.click('#action-cancel');
  await page.click('dialog#confirm button[value="no"]');
  assert.notEqual((await api(open.base, `/v1/flows/${flow.id}`)).status, 'cancelled');
  await status(page, 'completed');
});

test('a flow waiting on an external queue with no worker says so', async (t) => {
  const page = await newPage(t);
  const flow = await api(open.base, '/v1/flows', { method: 'POST', body: { flow_type: 'crewed' }, expect: 201 });
  await page.goto(`${open.base}/ui/flows/${flow.id}`);
  const reason = await page.waitForSelector('#status-reason[data-kind="waiting_for_worker"]', { timeout: 15000 });
  assert.match(await reason.textContent(), /Waiting for a worker on queue crews/);
  await page.goto(`${open.base}/ui/queues`);
  const queue = await page.waitForSelector('tr[data-queue="crews"]');
  assert.match(await queue.textContent(), /crews/);
});

test('a master shows its children with their progress, and a child links to its master', async (t) => {
  const page = await newPage(t);
  const master = await api(open.base, '/v1/flows', { method: 'POST', body: { flow_type: 'fanout' }, expect: 201 });
  await page.goto(`${open.base}/ui/flows/${master.id}`);
  await page.waitForFunction(() => document.querySelectorAll('#children li').length === 3, null, { timeout: 15000 });
  await status(page, 'completed');
  await page.waitForFunction(() => [...document.querySelectorAll('#children [role=progressbar]')]
    .every((bar) => bar.getAttribute('aria-valuenow') === '100'), null, { timeout: 15000 });
  await page.waitForSelector('#family h2 >> text=Children (3 of 3 done)');
  // The tree unfolds a level at a time.
  await page.click('#children > li:first-child summary');
  await page.waitForSelector('#children > li:first-child .tree >> text=no children');
  await page.click('#children li a');
  await page.waitForSelector(`#family a[href="/ui/flows/${master.id}"]`);
});

test("with auth on, tenant B's key shows none of tenant A's flows", async (t) => {
  const page = await newPage(t);
  const mine = await api(secured.base, '/v1/flows', { method: 'POST', body: { flow_type: 'crewed' }, key: 'tenant-a-key', expect: 201 });
  await page.goto(`${secured.base}/ui`);
  await page.fill('#key-input', 'tenant-b-key');
  await page.click('#key-form button[type=submit]');
  await page.waitForSelector('#flow-rows');
  await api(secured.base, '/v1/flows', { method: 'POST', body: { flow_type: 'quick' }, key: 'tenant-a-key', expect: 201 });
  const theirs = await api(secured.base, '/v1/flows', { method: 'POST', body: { flow_type: 'quick' }, key: 'tenant-b-key', expect: 201 });
  await page.waitForSelector(`tr[data-flow-id="${theirs.id}"]`, { timeout: 10000 });
  assert.equal(await page.locator('#flow-rows tr[data-flow-id]').count(), 1, 'only B\'s own flow');
  assert.match(await page.textContent('[data-count="running"], [data-count="completed"]'), /\d/);
  // A's flow by its address is not found for B.
  await page.goto(`${secured.base}/ui/flows/${mine.id}`);
  await page.waitForSelector('text=Could not load this page');
  // The key stays for the session: A's key, in a fresh tab, sees A's flow.
  const other = await newPage(t);
  await other.goto(`${secured.base}/ui`);
  await other.fill('#key-input', 'tenant-a-key');
  await other.keyboard.press('Enter');
  await other.waitForSelector(`tr[data-flow-id="${mine.id}"]`);
  assert.equal(await other.evaluate(() => sessionStorage.getItem('flowd.key')), 'tenant-a-key');
});

test('flow types show handler kinds, versions and the next_phase graph; the health strip reads the runtime', async (t) => {
  const page = await newPage(t);
  await page.goto(`${open.base}/ui/types`);
  const jumpy = page.locator('section[aria-label="jumpy"]');
  await jumpy.waitFor();
  assert.match(await jumpy.locator('h2').textContent(), /jumpy v1/);
  const edges = await jumpy.locator('.graph li').allTextContents();
  assert.deepEqual(edges, ['start → finish (jump)', 'skipped → finish', 'finish → end']);
  assert.match(await jumpy.locator('tbody tr').nth(2).textContent(), /finish\s*sleep/);
  assert.equal(await page.getAttribute('[data-nav="types"]', 'aria-current'), 'page');
  await page.waitForSelector('#health >> text=ready');
  assert.match(await page.textContent('#health'), /commit \d+(\.\d)? ms/);
});

test('a flow page is usable at phone width', async (t) => {
  const page = await newPage(t);
  await page.setViewportSize({ width: 375, height: 800 });
  const flow = await api(open.base, '/v1/flows', { method: 'POST', body: { flow_type: 'flaky' }, expect: 201 });
  await page.goto(`${open.base}/ui/flows/${flow.id}`);
  await status(page, 'completed');
  await page.waitForSelector('#failures tr[data-kind]');
  const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  assert.ok(overflow <= 1, `no horizontal page scroll at 375 px (${overflow})`);
  // Input and outputs are collapsed until asked for.
  const input = page.locator('details:has(summary:text-is("Input"))');
  assert.equal(await input.getAttribute('open'), null);
  await input.locator('summary').click();
  assert.match(await input.locator('pre').textContent(), /\{/);
});

test('the flows page is readable at phone width and keyboard-operable', async (t) => {
  const page = await newPage(t);
  await page.setViewportSize({ width: 375, height: 800 });
  await page.goto(`${open.base}/ui`);
  await page.waitForSelector('#flow-rows tr[data-flow-id]');
  const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  assert.ok(overflow <= 1, `no horizontal page scroll at 375 px (${overflow})`);
  await page.keyboard.press('Tab');
  assert.equal(await page.evaluate(() => document.activeElement.textContent), 'Skip to content');
  for (const id of ['filter-status', 'filter-type', 'search-id']) {
    assert.ok(await page.$(`label[for="${id}"]`), `${id} has a label`);
  }
  await page.selectOption('#filter-status', 'completed');
  await page.waitForSelector('[data-count="completed"][aria-pressed="true"]');
});
