'use strict';
// Test support: the real oip-media binary on 127.0.0.1:0, an Elasticsearch stand-in
// that answers the searches oip-media sends (src/resolve/elastic.rs), stub servers for
// the failure paths, and a few helpers. Loopback only.

const http = require('node:http');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const { spawn } = require('node:child_process');

/** The oip-media binary to test, or null (the suites then print `skipped: …`). */
function binary() {
  const bin = process.env.OIP_MEDIA_BIN;
  if (bin && fs.existsSync(bin)) return bin;
  const built = path.resolve(__dirname, '../../../target/debug/oip-media');
  return fs.existsSync(built) ? built : null;
}

function listen(server) {
  return new Promise((resolve) => server.listen(0, '127.0.0.1', () => resolve(server.address().port)));
}

function readBody(request) {
  return new Promise((resolve, reject) => {
    const chunks = [];
    request.on('data', (c) => chunks.push(c));
    request.on('end', () => resolve(Buffer.concat(chunks)));
    request.on('error', reject);
  });
}

/**
 * An Elasticsearch stand-in: indexes `records` and `organizations` held in memory;
 * answers `POST /<index>/_search` whose query is oip-media's `bool.should` of two
 * `terms` (or the indexer's two `term`) on `oip.did.keyword` / `oip.didTx.keyword`.
 * Counts searches and DIDs asked for.
 */
async function startElastic(records, organizations = []) {
  const indices = { records, organizations };
  const state = { searches: 0, dids: 0, violations: [] };
  const server = http.createServer(async (request, response) => {
    const body = await readBody(request);
    const match = /^\/([^/]+)\/_search$/.exec(request.url.split('?')[0]);
    const reply = (status, value) => {
      response.writeHead(status, { 'content-type': 'application/json' });
      response.end(JSON.stringify(value));
    };
    if (request.method !== 'POST' || !match) {
      state.violations.push(`${request.method} ${request.url}`);
      return reply(400, { error: 'unexpected request' });
    }
    let query;
    try {
      query = JSON.parse(body.toString('utf8'));
    } catch (_) {
      state.violations.push('body is not JSON');
      return reply(400, { error: 'not JSON' });
    }
    const should = query && query.query && query.query.bool && query.query.bool.should;
    if (!Array.isArray(should)) {
      state.violations.push(`no bool.should: ${body}`);
      return reply(400, { error: 'no bool.should' });
    }
    const wanted = new Set();
    for (const clause of should) {
      for (const kind of ['terms', 'term']) {
        const fields = clause[kind] || {};
        for (const field of ['oip.did.keyword', 'oip.didTx.keyword']) {
          if (fields[field] === undefined) continue;
          for (const did of [].concat(fields[field])) wanted.add(did);
        }
      }
    }
    state.searches++;
    state.dids += wanted.size;
    const documents = indices[match[1]];
    if (!documents) return reply(404, { error: { type: 'index_not_found_exception' }, status: 404 });
    const size = typeof query.size === 'number' ? query.size : 10;
    const hits = documents
      .filter((doc) => wanted.has(doc.oip.did) || wanted.has(doc.oip.didTx))
      .slice(0, size)
      .map((doc) => ({ _index: match[1], _id: doc.oip.did, _source: doc }));
    return reply(200, { took: 1, hits: { total: { value: hits.length }, hits } });
  });
  server.keepAliveTimeout = 60000;
  const port = await listen(server);
  return {
    url: `http://127.0.0.1:${port}`,
    state,
    close: () => new Promise((resolve) => { server.closeAllConnections(); server.close(() => resolve()); }),
  };
}

/**
 * Starts oip-media (`OIP_MEDIA_BIN`) on 127.0.0.1:0 with empty media roots, pointed at
 * `elasticUrl`, as tests/support/child_server.rs does; resolves once it logs where it
 * listens.
 */
async function startServer(elasticUrl, env = {}) {
  const bin = binary();
  if (!bin) throw new Error('OIP_MEDIA_BIN is not set and target/debug/oip-media is not built');
  const media = fs.mkdtempSync(path.join(os.tmpdir(), 'oip-media-node-'));
  fs.mkdirSync(path.join(media, 'web'));
  const child = spawn(bin, [], {
    env: {
      PATH: process.env.PATH,
      BIND: '127.0.0.1',
      PORT: '0',
      MEDIA_DIR: media,
      DERIVED_DIR: path.join(media, '.derived'),
      GENERATED_MEDIA_DIR: media,
      ELASTICSEARCHHOST: elasticUrl,
      RUST_LOG: 'info',
      NO_COLOR: '1',
      ...env,
    },
    stdio: ['ignore', 'pipe', 'ignore'],
  });
  const url = await new Promise((resolve, reject) => {
    let buffered = '';
    const timer = setTimeout(() => reject(new Error('oip-media did not start within 30 s')), 30000);
    child.on('exit', (code) => reject(new Error(`oip-media exited (${code}) before listening`)));
    child.stdout.on('data', (chunk) => {
      buffered += chunk.toString('utf8');
      const found = /listening on (http:\/\/[^\s]+)/.exec(buffered);
      if (found) {
        clearTimeout(timer);
        buffered = '';
        resolve(found[1]);
      } else if (buffered.length > 65536) {
        buffered = buffered.slice(-4096);
      }
    });
  });
  // Keep draining stdout so the child never blocks on a full pipe.
  child.stdout.on('data', () => {});
  return {
    url,
    pid: child.pid,
    /** Requests `/api/resolve` answered so far, every status (from `/metrics`). */
    async resolveRequests() {
      const text = await get(`${url}/metrics`);
      let total = 0;
      for (const line of text.split('\n')) {
        const m = /^oip_media_http_responses_total\{route="resolve",class="[^"]+"\} (\d+)/.exec(line);
        if (m) total += Number(m[1]);
      }
      return total;
    },
    close() {
      return new Promise((resolve) => {
        child.once('exit', () => {
          fs.rmSync(media, { recursive: true, force: true });
          resolve();
        });
        child.kill('SIGKILL');
      });
    },
  };
}

function get(url) {
  return new Promise((resolve, reject) => {
    http
      .get(url, (response) => {
        const chunks = [];
        response.on('data', (c) => chunks.push(c));
        response.on('end', () => resolve(Buffer.concat(chunks).toString('utf8')));
      })
      .on('error', reject);
  });
}

/**
 * A stub standing in for oip-media: `handler(request, body, response, n)` answers the
 * n-th request (1-based). Counts requests and the records each carried.
 */
async function startStub(handler) {
  const state = { requests: 0, batches: [] };
  const sockets = new Set();
  const server = http.createServer(async (request, response) => {
    const body = await readBody(request);
    state.requests++;
    let records = null;
    try {
      records = JSON.parse(body.toString('utf8')).records.length;
    } catch (_) {
      // not a resolve body
    }
    state.batches.push(records);
    handler(request, body, response, state.requests);
  });
  server.on('connection', (socket) => {
    sockets.add(socket);
    socket.on('close', () => sockets.delete(socket));
  });
  const port = await listen(server);
  return {
    url: `http://127.0.0.1:${port}`,
    state,
    close: () =>
      new Promise((resolve) => {
        for (const socket of sockets) socket.destroy();
        server.close(() => resolve());
      }),
  };
}

/** Echoes the records back resolved by nobody (as a server that found nothing would). */
function echo(request, body, response) {
  const parsed = JSON.parse(body.toString('utf8'));
  response.writeHead(200, { 'content-type': 'application/json' });
  response.end(JSON.stringify({ records: parsed.records, stats: {} }));
}

/** A port nothing listens on. */
async function deadUrl() {
  const server = http.createServer();
  const port = await listen(server);
  await new Promise((resolve) => server.close(resolve));
  return `http://127.0.0.1:${port}`;
}

function deepFreeze(value) {
  if (value !== null && typeof value === 'object' && !Object.isFrozen(value)) {
    Object.freeze(value);
    for (const key of Object.keys(value)) deepFreeze(value[key]);
  }
  return value;
}

/** A logger that keeps what it is told. */
function recordingLogger() {
  const lines = [];
  return { lines, warn: (line) => lines.push(String(line)), error: (line) => lines.push(String(line)), log() {} };
}

module.exports = { binary, startElastic, startServer, startStub, echo, deadUrl, deepFreeze, recordingLogger, get };
