// Starts the real flowd binary on a free port with a temp SQLite database, as CI builds it.
import { spawn } from 'node:child_process';
import { mkdtempSync, writeFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, dirname, resolve } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');
export const BIN = process.env.FLOWD_BIN || join(root, 'target', 'debug', 'flowd');

export const TYPES = `
[[flow_types]]
name = "quick"
version = 1
[[flow_types.phases]]
name = "fetch"
handler = "sleep"
params = { ms = 400 }
[[flow_types.phases]]
name = "work"
handler = "sleep"
params = { ms = 400 }
[[flow_types.phases]]
name = "publish"
handler = "sleep"
params = { ms = 400 }

[[flow_types]]
name = "flaky"
version = 1
[[flow_types.phases]]
name = "shaky"
handler = "fail"
params = { times = 1 }
retries = 2
retry_backoff_ms = 300
[[flow_types.phases]]
name = "after"
handler = "sleep"
params = { ms = 300 }

[[flow_types]]
name = "slow"
version = 1
[[flow_types.phases]]
name = "one"
handler = "sleep"
params = { ms = 1500 }
[[flow_types.phases]]
name = "two"
handler = "sleep"
params = { ms = 1500 }
[[flow_types.phases]]
name = "three"
handler = "sleep"
params = { ms = 1500 }

[[flow_types]]
name = "fanout"
version = 1
[[flow_types.phases]]
name = "spread"
handler = "child_flows"
params = { flow_type = "quick", count = 3 }

[[flow_types]]
name = "jumpy"
version = 1
[[flow_types.phases]]
name = "start"
handler = "noop"
next_phase = "finish"
[[flow_types.phases]]
name = "skipped"
handler = "noop"
[[flow_types.phases]]
name = "finish"
handler = "sleep"
params = { ms = 10 }

[[flow_types]]
name = "crewed"
version = 1
[[flow_types.phases]]
name = "crew"
handler = "external"
params = { queue = "crews" }
`;

/** Starts flowd; `extra` is appended to its config. Resolves to { base, stop }. */
export async function startServer(extra = '', existing = null) {
  const dir = existing || mkdtempSync(join(tmpdir(), 'flowd-ui-'));
  const config = join(dir, 'config.toml');
  writeFileSync(config, `[server]\nbind = "127.0.0.1:0"\nworkers = 2\n[database]\nurl = "sqlite://${join(dir, 'flowd.db')}"\n${TYPES}\n${extra}\n`);
  const child = spawn(BIN, ['--config', config], {
    stdio: ['ignore', 'pipe', 'inherit'],
    env: { ...process.env, RUST_LOG: process.env.TEST_LOG || 'error' },
  });
  const lines = createInterface({ input: child.stdout });
  const base = await new Promise((resolveBase, reject) => {
    const timer = setTimeout(() => reject(new Error('flowd did not start in 30 s')), 30000);
    child.once('exit', (code) => reject(new Error(`flowd exited with ${code}`)));
    lines.once('line', (line) => {
      clearTimeout(timer);
      const prefix = 'flowd listening on ';
      if (line.startsWith(prefix)) resolveBase(line.slice(prefix.length).trim());
      else reject(new Error(`unexpected first line: ${line}`));
    });
  });
  return {
    base,
    dir,
    /** SIGKILL; the temp dir goes too unless `keep`. */
    stop(keep = false) {
      child.kill('SIGKILL');
      if (!keep) rmSync(dir, { recursive: true, force: true });
    },
  };
}

/** Calls the API; returns the parsed JSON body and checks the status. */
export async function api(base, path, { method = 'GET', body, key, expect = 200 } = {}) {
  const headers = { 'content-type': 'application/json' };
  if (key) headers.authorization = `Bearer ${key}`;
  const response = await fetch(base + path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  const text = await response.text();
  if (response.status !== expect) throw new Error(`${method} ${path}: ${response.status} ${text}`);
  return text ? JSON.parse(text) : null;
}
