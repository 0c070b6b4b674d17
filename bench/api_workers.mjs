// Load generator of the API workers rows (bench/api_workers.py): for --rounds rounds, each target in turn gets
// a window of --warmup then --seconds seconds in which --clients loops, each on its own keep-alive connection,
// POST --body to the target's path one request at a time. One process for the whole run: its connections and
// its JIT stay warm from window to window.
//
// Node's built-in http client (no npm packages): per request it costs about half the client CPU of Python's
// aiohttp, and the machine's two cores are what the API workers being measured need.
//
//   node api_workers.mjs --targets '[{"label": "1", "url": "http://127.0.0.1:8000", "path": "/api/...",
//                                     "auth": "Bearer ..."}, ...]' [--rounds 3] [--clients 64] [--warmup 1]
//                        [--seconds 5] [--body '{}']
//
// Prints one JSON object per line on stdout: {"mark": "start", "label"} when a measured window starts and
// {"mark": "end", "label"} when it ends (the caller reads CPU counters then), then {"window": ...} with the
// replies counted in the window by status and by X-Orq-Worker, and this process's CPU seconds in it.

import http from 'node:http';
import { performance } from 'node:perf_hooks';

function options(argv) {
  const opts = { targets: '[]', rounds: 3, clients: 64, warmup: 1, seconds: 5, body: '{}' };
  for (let i = 0; i < argv.length; i += 2) {
    const [flag, value] = [argv[i], argv[i + 1]];
    if (value === undefined) throw new Error(`${flag} needs a value`);
    const name = flag.replace(/^--/, '');
    if (!(name in opts)) throw new Error(`unknown option ${flag}`);
    opts[name] = typeof opts[name] === 'number' ? Number(value) : value;
  }
  opts.targets = JSON.parse(opts.targets);
  if (!opts.targets.length) throw new Error('--targets names no target');
  return opts;
}

function post(agent, url, auth, body) {
  return new Promise((resolve, reject) => {
    const request = http.request(url, {
      method: 'POST',
      agent,
      headers: { 'content-type': 'application/json', 'content-length': body.length, authorization: auth },
    }, (reply) => {
      reply.on('data', () => {});
      reply.on('end', () => resolve([reply.statusCode, reply.headers['x-orq-worker'] ?? 'single']));
      reply.on('error', reject);
    });
    request.on('error', reject);
    request.end(body);
  });
}

const say = (line) => process.stdout.write(`${JSON.stringify(line)}\n`);

async function window(target, agent, opts, body) {
  const url = new URL(target.path, target.url);
  const measureFrom = performance.now() + opts.warmup * 1000;
  const measureTo = measureFrom + opts.seconds * 1000;
  const byStatus = {};
  const byWorker = {};
  let errors = 0;
  let cpuAtStart = null;
  let cpu = null;
  const started = new Promise((resolve) => setTimeout(() => {
    cpuAtStart = process.cpuUsage();
    say({ mark: 'start', label: target.label });
    resolve();
  }, measureFrom - performance.now()));
  const ended = new Promise((resolve) => setTimeout(() => {
    cpu = process.cpuUsage(cpuAtStart ?? undefined);
    say({ mark: 'end', label: target.label });
    resolve();
  }, measureTo - performance.now()));

  async function client() {
    while (performance.now() < measureTo) {
      const sent = performance.now();
      try {
        const [status, worker] = await post(agent, url, target.auth, body);
        if (sent >= measureFrom && performance.now() <= measureTo) {
          byStatus[status] = (byStatus[status] ?? 0) + 1;
          byWorker[worker] = (byWorker[worker] ?? 0) + 1;
        }
      } catch (error) {
        errors += 1;
        if (errors > 100) throw error;
      }
    }
  }

  await Promise.all([started, ended, ...Array.from({ length: opts.clients }, client)]);
  return { label: target.label, seconds: opts.seconds, by_status: byStatus, by_worker: byWorker, errors,
    cpu_s: (cpu.user + cpu.system) / 1e6 };
}

async function main() {
  const opts = options(process.argv.slice(2));
  const body = Buffer.from(opts.body);
  const agents = opts.targets.map(() => new http.Agent({ keepAlive: true, maxSockets: opts.clients }));
  for (let round = 0; round < opts.rounds; round += 1) {
    for (const [i, target] of opts.targets.entries()) {
      say({ window: { round, ...(await window(target, agents[i], opts, body)) } });
    }
  }
  agents.forEach((agent) => agent.destroy());
}

main().catch((error) => {
  console.error(error);
  process.exit(1);
});
