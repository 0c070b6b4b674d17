// BullMQ peer of `make bench`: the same two measurements as Orquesta's executor and latency rows, taken with
// BullMQ on the same Redis server, so that the table can print ratios measured in one run.
//
//   node bench.mjs [--url redis://127.0.0.1:6379/11] [--jobs 20000] [--concurrency 50]
//                  [--rates 500,5000] [--seconds 10]
//
// (a) processing: --jobs no-op jobs are queued with addBulk first; one Worker (--concurrency slots) drains
//     them; the rate is jobs / (last completion - first processor start).
// (b) latency: for each rate, jobs are added one by one at that rate for --seconds while a Worker in another
//     thread (its own event loop, as Orquesta's executors are their own processes) takes them; the figure is
//     processor start - the moment add() was called, p50 and p99.
// The queue is obliterated before and after. Prints one JSON object on stdout; progress goes to stderr.

import { performance } from 'node:perf_hooks';
import { Worker as Thread, isMainThread, parentPort, workerData } from 'node:worker_threads';
import { fileURLToPath } from 'node:url';

import { Queue, Worker } from 'bullmq';
import IORedis from 'ioredis';

const QUEUE = 'orq-bench-peer';
const ADD_BATCH = 1000;

// Epoch milliseconds with sub-millisecond precision, comparable between threads of one process.
const now = () => performance.timeOrigin + performance.now();
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

function options(argv) {
  const opts = {
    url: process.env.ORQ_BENCH_REDIS_URL ?? 'redis://127.0.0.1:6379/11',
    jobs: 20000,
    concurrency: 50,
    rates: [500, 5000],
    seconds: 10,
  };
  for (let i = 0; i < argv.length; i += 2) {
    const [flag, value] = [argv[i], argv[i + 1]];
    if (value === undefined) throw new Error(`${flag} needs a value`);
    if (flag === '--url') opts.url = value;
    else if (flag === '--jobs') opts.jobs = Number(value);
    else if (flag === '--concurrency') opts.concurrency = Number(value);
    else if (flag === '--rates') opts.rates = value.split(',').map(Number);
    else if (flag === '--seconds') opts.seconds = Number(value);
    else throw new Error(`unknown option ${flag}`);
  }
  return opts;
}

// Each Queue and Worker opens its own connections from these options (a Worker adds a blocking one).
const connection = (url) => ({ url });

async function commandsTotal(redis) {
  const info = await redis.info('commandstats');
  let calls = 0;
  for (const match of info.matchAll(/calls=(\d+)/g)) calls += Number(match[1]);
  return calls;
}

function percentile(sorted, q) {
  return sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))];
}

async function processing(url, jobs, concurrency, stats) {
  const queue = new Queue(QUEUE, { connection: connection(url) });
  for (let start = 0; start < jobs; start += ADD_BATCH) {
    const count = Math.min(ADD_BATCH, jobs - start);
    await queue.addBulk(Array.from({ length: count }, () => ({ name: 'noop', data: {} })));
  }
  const before = await commandsTotal(stats);
  let first;
  let last;
  let done = 0;
  let finished;
  const allDone = new Promise((resolve) => { finished = resolve; });
  const worker = new Worker(QUEUE, async () => { first ??= now(); },
    { connection: connection(url), concurrency, autorun: false });
  worker.on('completed', () => {
    done += 1;
    if (done === jobs) { last = now(); finished(); }
  });
  await worker.waitUntilReady();
  worker.run();
  await allDone;
  const after = await commandsTotal(stats);
  await worker.close();
  await queue.obliterate({ force: true });
  await queue.close();
  return { jobs, concurrency, seconds: (last - first) / 1000, jobs_per_s: jobs / ((last - first) / 1000),
           // Server-wide: anything else on the same Redis server counts too, and a CONFIG RESETSTAT from
           // another client in between leaves no figure at all.
           redis_commands_per_job: after >= before ? (after - before) / jobs : null };
}

async function latency(url, rate, seconds, concurrency) {
  const total = Math.round(rate * seconds);
  const thread = new Thread(fileURLToPath(import.meta.url), { workerData: { url, total, concurrency } });
  const messages = [];
  let wake = () => {};
  thread.on('message', (m) => { messages.push(m); wake(); });
  thread.on('error', (err) => { messages.push({ error: String(err) }); wake(); });
  const next = async () => {
    while (messages.length === 0) await new Promise((resolve) => { wake = resolve; });
    const m = messages.shift();
    if (m.error) throw new Error(`consumer thread: ${m.error}`);
    return m;
  };
  await next(); // ready
  await sleep(1000); // let the Worker block on its empty queue, as Orquesta's bench lets its executors start

  const queue = new Queue(QUEUE, { connection: connection(url) });
  await queue.waitUntilReady();
  const pending = [];
  const start = performance.now();
  let sent = 0;
  while (sent < total) {
    // Everything due by now goes out, then we sleep until the next one is due: a steady arrival rate.
    const due = Math.min(total, Math.floor(((performance.now() - start) / 1000) * rate) + 1);
    for (; sent < due; sent += 1) pending.push(queue.add('noop', { t: now() }));
    const wait = start + (sent / rate) * 1000 - performance.now();
    if (wait > 0) await sleep(wait);
  }
  await Promise.all(pending);
  const { latencies } = await next();
  await thread.terminate();
  await queue.obliterate({ force: true });
  await queue.close();
  const sorted = Float64Array.from(latencies).sort();
  return { rate, seconds, jobs: sorted.length, p50_ms: percentile(sorted, 0.5), p99_ms: percentile(sorted, 0.99) };
}

// The latency consumer thread: one Worker recording, per job, how long ago its add() was called.
async function consumer({ url, total, concurrency }) {
  const latencies = new Float64Array(total);
  let n = 0;
  let finished;
  const allTaken = new Promise((resolve) => { finished = resolve; });
  const worker = new Worker(QUEUE, async (job) => {
    latencies[n] = now() - job.data.t;
    n += 1;
    if (n === total) finished();
  }, { connection: connection(url), concurrency, autorun: false });
  await worker.waitUntilReady();
  worker.run();
  parentPort.postMessage({ ready: true });
  await allTaken;
  await worker.close();
  parentPort.postMessage({ latencies: Array.from(latencies.subarray(0, n)) });
}

async function main() {
  const opts = options(process.argv.slice(2));
  const stats = new IORedis(opts.url);
  const emptyQueue = new Queue(QUEUE, { connection: connection(opts.url) });
  await emptyQueue.obliterate({ force: true });
  await emptyQueue.close();
  const versions = { bullmq: (await import('bullmq/package.json', { with: { type: 'json' } })).default.version,
                     node: process.versions.node };
  console.error(`bullmq: processing ${opts.jobs} jobs ...`);
  const result = { versions, processing: await processing(opts.url, opts.jobs, opts.concurrency, stats), latency: [] };
  for (const rate of opts.rates) {
    console.error(`bullmq: latency at ${rate}/s for ${opts.seconds} s ...`);
    result.latency.push(await latency(opts.url, rate, opts.seconds, opts.concurrency));
  }
  await stats.quit();
  process.stdout.write(`${JSON.stringify(result)}\n`);
}

if (isMainThread) {
  await main();
} else {
  await consumer(workerData);
}
