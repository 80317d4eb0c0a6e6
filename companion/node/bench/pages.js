'use strict';
// The page workload through the companion: pages of 20-100 workout-like records at
// depth 2 (getRecords' Promise.all(records.map(resolveRecords))), against the real
// oip-media binary (OIP_MEDIA_BIN) and the Elasticsearch stand-in. Reports this Node
// process's RSS and heapUsed over the run and the latency per page (p50/p99); with
// OIP_INDEXER_DIR, the same pages through the indexer's own resolveRecords (its
// recordsInDB array, with an in-memory Elasticsearch client).
//
//   node --expose-gc bench/pages.js            # BENCH_PAGES=10000 by default
//   OIP_INDEXER_DIR=/tmp/indexer node --expose-gc bench/pages.js

const { spawn } = require('node:child_process');
const path = require('node:path');
const { createClient } = require('..');
const { startServer, recordingLogger, binary } = require('../test/support');
const { workoutWorld } = require('../test/fixtures');
const { loadIndexer, quiet } = require('../test/indexer');

const PAGES = Number(process.env.BENCH_PAGES || 10000);
const CONCURRENT = Number(process.env.BENCH_CONCURRENT_PAGES || 4);
const MIB = 1048576;
const WORKOUTS = 200;

/** The Elasticsearch stand-in, in a child process (bench/elastic-child.js). */
function elasticChild() {
  const child = spawn(process.execPath, [path.join(__dirname, 'elastic-child.js'), String(WORKOUTS)], { stdio: ['pipe', 'pipe', 'inherit'] });
  return new Promise((resolve) => {
    child.stdout.once('data', (line) => resolve({ url: line.toString().trim(), close: async () => child.stdin.end() }));
  });
}

function percentile(sorted, p) {
  return sorted[Math.min(sorted.length - 1, Math.floor((sorted.length * p) / 100))];
}

/** Runs `PAGES` pages, `CONCURRENT` at a time, through `resolvePage(records)`. */
async function run(name, page, resolvePage) {
  const gc = global.gc || (() => {});
  const sizes = [20, 50, 100];
  const latencies = [];
  let peakRss = 0;
  let peakHeap = 0;
  let records = 0;
  let next = 0;
  gc();
  const start = process.memoryUsage();
  const sample = setInterval(() => {
    const m = process.memoryUsage();
    peakRss = Math.max(peakRss, m.rss);
    peakHeap = Math.max(peakHeap, m.heapUsed);
  }, 20);
  const began = Date.now();
  let afterWarmup = null;
  const worker = async () => {
    while (next < PAGES) {
      const n = next++;
      if (n === Math.floor(PAGES / 10) && !afterWarmup) {
        gc();
        afterWarmup = process.memoryUsage();
      }
      const size = sizes[n % sizes.length];
      const offset = (n * 7) % (page.length - size + 1);
      const slice = page.slice(offset, offset + size);
      const t = process.hrtime.bigint();
      const out = await resolvePage(slice);
      latencies.push(Number(process.hrtime.bigint() - t) / 1e6);
      // Also sampled here: an in-memory resolver may never yield to the timer.
      const m = process.memoryUsage();
      peakRss = Math.max(peakRss, m.rss);
      peakHeap = Math.max(peakHeap, m.heapUsed);
      records += out.length;
    }
  };
  await Promise.all(Array.from({ length: CONCURRENT }, worker));
  const seconds = (Date.now() - began) / 1000;
  clearInterval(sample);
  gc();
  const end = process.memoryUsage();
  latencies.sort((a, b) => a - b);
  const row = {
    name,
    pages: PAGES,
    records,
    seconds: seconds.toFixed(1),
    pagesPerSecond: (PAGES / seconds).toFixed(0),
    p50Ms: percentile(latencies, 50).toFixed(1),
    p99Ms: percentile(latencies, 99).toFixed(1),
    rssStartMiB: (start.rss / MIB).toFixed(1),
    rssPeakMiB: (peakRss / MIB).toFixed(1),
    rssEndMiB: (end.rss / MIB).toFixed(1),
    heapAfterWarmupMiB: ((afterWarmup || start).heapUsed / MIB).toFixed(1),
    heapPeakMiB: (peakHeap / MIB).toFixed(1),
    heapEndMiB: (end.heapUsed / MIB).toFixed(1),
  };
  process.stdout.write(`${JSON.stringify(row)}\n`);
  return row;
}

/** Each resolver in a process of its own, so neither's RSS includes the other's. */
async function both() {
  const which = ['companion', ...(process.env.OIP_INDEXER_DIR ? ['indexer'] : [])];
  for (const resolver of which) {
    await new Promise((resolve, reject) => {
      const child = spawn(process.execPath, ['--expose-gc', __filename], { stdio: 'inherit', env: { ...process.env, BENCH_RESOLVER: resolver } });
      child.on('exit', (code) => (code === 0 ? resolve() : reject(new Error(`${resolver} run failed (${code})`))));
    });
  }
}

async function main() {
  if (!process.env.BENCH_RESOLVER) return both();
  const { records, page } = workoutWorld({ workoutCount: WORKOUTS });
  console.log(`# ${process.env.BENCH_RESOLVER}: ${PAGES} pages of 20/50/100 workouts at depth 2, ${CONCURRENT} pages at a time; node ${process.version}; oip-media ${binary()}`);
  if (process.env.BENCH_RESOLVER === 'companion') {
    if (!binary()) throw new Error('set OIP_MEDIA_BIN (or build target/debug/oip-media)');
    const elastic = await elasticChild();
    const server = await startServer(elastic.url);
    const client = createClient({ url: server.url, logger: recordingLogger() });
    // getRecords' recordsInDB (the companion only hands it to summaries).
    const recordsInDB = [...records];
    try {
      await run('companion', page, (slice) =>
        Promise.all(slice.map((r) => client.resolveRecords(r, 2, recordsInDB, false, false, null, new Set(), null, 0))),
      );
      const stats = client.stats();
      console.log(`# companion: ${stats.requests} requests for ${stats.calls} calls, ${stats.unresolved} unresolved, ${stats.shed} shed`);
    } finally {
      client.close();
      await server.close();
      await elastic.close();
    }
    return undefined;
  }
  // The indexer's own resolver: its recordsInDB cache holds every record (no
  // Elasticsearch search is needed, its best case); it resolves in place, so each page
  // gets fresh copies, as getRecords' records are fresh from Elasticsearch.
  const indexer = loadIndexer(process.env.OIP_INDEXER_DIR);
  indexer.setIndices(records, []);
  const indexerCache = structuredClone(records);
  const restore = quiet();
  try {
    await run('indexer', page, (slice) =>
      Promise.all(structuredClone(slice).map((r) => indexer.resolveRecords(r, 2, indexerCache, false, false, null, new Set(), null, 0))),
    );
  } finally {
    restore();
  }
  return undefined;
}

main().then(() => process.exit(0), (error) => {
  console.error(error);
  process.exit(1);
});
