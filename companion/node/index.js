'use strict';
/**
 * oip-media-client: the OIP indexer's `resolveRecords`, answered by oip-media's bounded
 * `POST /api/resolve` instead of a process-wide record array and two Elasticsearch
 * searches per reference.
 *
 * - Same signature and results as the indexer's `helpers/utils.js` `resolveRecords`, so
 *   the indexer changes only its `require` line (README.md).
 * - Calls made in one turn of the event loop with the same options go out as one request
 *   (a page is one admission at the server), split by record count and body bytes.
 * - Bounded: batches in flight per process, records waiting, sockets in the keep-alive
 *   pool, time per request, bytes per answer.
 * - Never throws: whatever goes wrong, the caller gets its record back with its DIDs in
 *   place (what the indexer returns when a lookup fails), and a rate-limited warning says
 *   why. A circuit breaker makes a dead service cost no waiting. There is no in-memory
 *   fallback resolver: that is what grew the indexer to 61 GB.
 *
 * No runtime dependencies: `node:http`/`node:https` with a bounded keep-alive `Agent`
 * (Node's built-in `fetch` cannot bound its pool without the `undici` package).
 */

const http = require('node:http');
const https = require('node:https');

/** Defaults; each has an environment variable (see `configFromEnv` and README.md). */
const DEFAULTS = Object.freeze({
  url: null,
  timeoutMs: 25000,
  batchMax: 100,
  batchBytes: 4 * 1024 * 1024,
  maxInFlight: 4,
  maxQueuedRecords: 20000,
  maxSockets: 8,
  maxResponseBytes: 64 * 1024 * 1024,
  retryAfterMaxMs: 2000,
  breakerThreshold: 5,
  breakerCooldownMs: 10000,
  warnIntervalMs: 10000,
});

const ENV = Object.freeze({
  url: 'OIP_MEDIA_URL',
  timeoutMs: 'OIP_MEDIA_RESOLVE_TIMEOUT_MS',
  batchMax: 'OIP_MEDIA_RESOLVE_BATCH_MAX',
  batchBytes: 'OIP_MEDIA_RESOLVE_BATCH_BYTES',
  maxInFlight: 'OIP_MEDIA_RESOLVE_MAX_IN_FLIGHT',
  maxQueuedRecords: 'OIP_MEDIA_RESOLVE_MAX_QUEUED',
  maxSockets: 'OIP_MEDIA_MAX_SOCKETS',
  maxResponseBytes: 'OIP_MEDIA_RESOLVE_MAX_RESPONSE_BYTES',
  retryAfterMaxMs: 'OIP_MEDIA_RETRY_AFTER_MAX_MS',
  breakerThreshold: 'OIP_MEDIA_BREAKER_THRESHOLD',
  breakerCooldownMs: 'OIP_MEDIA_BREAKER_COOLDOWN_MS',
  warnIntervalMs: 'OIP_MEDIA_WARN_INTERVAL_MS',
});

/** The settings named by the environment (`env`, default `process.env`). */
function configFromEnv(env = process.env) {
  const config = {};
  for (const [name, variable] of Object.entries(ENV)) {
    const raw = env[variable];
    if (raw === undefined || raw === '') continue;
    if (name === 'url') {
      config.url = raw.trim();
      continue;
    }
    const number = Number(raw);
    if (Number.isFinite(number) && number >= 0) config[name] = number;
  }
  return config;
}

/** Why a record came back unresolved (for stats and warnings). */
class Unresolved {
  constructor(reason) {
    this.reason = reason;
  }
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/** A resolved reference: a record object (not the indexer's circular stub). */
function isRecord(value) {
  return (
    value !== null &&
    typeof value === 'object' &&
    !Array.isArray(value) &&
    value.oip !== null &&
    typeof value.oip === 'object' &&
    value.data !== null &&
    typeof value.data === 'object' &&
    value._circular !== true
  );
}

const isDid = (value) => typeof value === 'string' && value.startsWith('did:');
const UNKNOWN = Symbol('unknown original');

class Client {
  /**
   * @param {object} options the settings (DEFAULTS); `logger` ({warn}) and `onBoundsHit`
   *   (called with (did, recordStats) when the server cut a record short) are optional.
   */
  constructor(options = {}) {
    this.settings = { ...DEFAULTS };
    for (const key of Object.keys(DEFAULTS)) {
      if (options[key] !== undefined && options[key] !== null) this.settings[key] = options[key];
    }
    this.logger = options.logger || console;
    this.onBoundsHit = typeof options.onBoundsHit === 'function' ? options.onBoundsHit : null;
    this.target = parseTarget(this.settings.url);
    const Agent = this.target && this.target.protocol === 'https:' ? https.Agent : http.Agent;
    this.agent = new Agent({
      keepAlive: true,
      maxSockets: Math.max(1, this.settings.maxSockets),
      maxFreeSockets: Math.max(1, this.settings.maxSockets),
      // Idle sockets close before oip-media's own 30 s keep-alive timeout would.
      timeout: 20000,
    });
    this.pending = new Map(); // options key -> entries of this turn
    this.flushScheduled = false;
    this.queue = []; // batches waiting for a slot
    this.queuedRecords = 0;
    this.inFlight = 0;
    this.breaker = { failures: 0, openUntil: 0, probing: false };
    this.warned = new Map();
    this.counters = {
      calls: 0,
      requests: 0,
      batches: 0,
      resolved: 0,
      unresolved: 0,
      shed: 0,
      retries: 0,
      splits: 0,
      failures: 0,
      breakerSkips: 0,
      queueFull: 0,
      boundsHit: 0,
      summaryErrors: 0,
    };
    if (!this.target) {
      this.warn('config', `OIP_MEDIA_URL is not set or not an http(s) URL (${JSON.stringify(this.settings.url)}): records are returned unresolved`);
    }
  }

  /** Counters since start, and the current queue and breaker state. */
  stats() {
    return {
      ...this.counters,
      inFlight: this.inFlight,
      queuedRecords: this.queuedRecords,
      breakerOpen: Date.now() < this.breaker.openUntil,
    };
  }

  /** Closes idle keep-alive sockets (for tests and shutdown). */
  close() {
    this.agent.destroy();
  }

  /**
   * The indexer's `resolveRecords`, same signature and results. `visited` and
   * `currentDepth` are accepted for the signature's sake: a record already in `visited`
   * comes back as the indexer's circular stub, and everything below is decided by the
   * server, which tracks each path itself.
   */
  async resolveRecords(
    record,
    resolveDepth,
    recordsInDB,
    resolveNamesOnly = false,
    summarizeRecipe = false,
    addRecipeNutritionalSummary = null,
    visited = new Set(),
    resolveFieldNames = null,
    currentDepth = 0,
  ) {
    void currentDepth;
    if (!resolveDepth || resolveDepth === 0 || Number.isNaN(Number(resolveDepth)) || !record) {
      return record;
    }
    if (!record.data || typeof record.data !== 'object') return record;
    const depth = Math.trunc(Number(resolveDepth));
    if (!(depth >= 1)) return record;
    const did = record.oip && (record.oip.did || record.oip.didTx);
    if (did && visited instanceof Set && visited.has(did)) {
      return { oip: record.oip, data: { basic: (record.data && record.data.basic) || {} }, _circular: true };
    }
    this.counters.calls++;
    try {
      const outcome = await this.enqueue(record, depth, resolveNamesOnly, resolveFieldNames);
      if (outcome instanceof Unresolved) {
        this.counters.unresolved++;
        return record;
      }
      this.counters.resolved++;
      if (summarizeRecipe && typeof addRecipeNutritionalSummary === 'function') {
        const seen = lookupView(recordsInDB);
        return await this.summarize(outcome, record, depth, Boolean(resolveNamesOnly), addRecipeNutritionalSummary, seen);
      }
      return outcome;
    } catch (error) {
      // A bug here must still not reach getRecords.
      this.counters.unresolved++;
      this.warn('internal', `unexpected error, record returned unresolved: ${error && error.message}`);
      return record;
    }
  }

  /**
   * Applies `summary` where the indexer does: to every resolved reference that is a
   * recipe (`oip.recordType === 'recipe'` and `data.recipe`), after that reference's own
   * references were resolved (and summarized), at every level that resolved references
   * rather than names. Top-level records get theirs in `getRecords`, not here.
   * `original` is the caller's record: at the first level only fields that held a DID
   * there count as references.
   *
   * The summary function looks ingredients up in the `recordsInDB` it is given. The
   * indexer's own resolver pushes every record it fetched into that array as it walks
   * (depth first, before resolving into it), so a summary sees the records fetched before
   * it. `seen` reproduces that without touching the caller's array: a copy made on first
   * use, to which each resolved reference is added in the same order (up to the
   * indexer's 7,500).
   */
  async summarize(resolved, original, levelsLeft, namesOnly, summary, seen) {
    if (levelsLeft < 1 || (namesOnly && levelsLeft === 1)) return resolved;
    const data = resolved && resolved.data;
    if (!data || typeof data !== 'object') return resolved;
    const one = async (ref) => {
      seen.remember(ref);
      let out = await this.summarize(ref, null, levelsLeft - 1, namesOnly, summary, seen);
      if (out.oip && out.oip.recordType === 'recipe' && out.data && out.data.recipe) {
        try {
          out = await summary(out, seen.array());
        } catch (error) {
          this.counters.summaryErrors++;
          this.warn('summary', `addRecipeNutritionalSummary threw for ${out.oip.did || out.oip.didTx}: ${error && error.message}`);
        }
      }
      return out;
    };
    const isRef = (value, was) => isRecord(value) && (was === UNKNOWN || isDid(was));
    for (const category of Object.keys(data)) {
      const properties = data[category];
      if (properties === null || typeof properties !== 'object') continue;
      let before = UNKNOWN;
      if (original) {
        const o = original.data && original.data[category];
        before = o !== null && typeof o === 'object' ? o : undefined;
      }
      for (const key of Object.keys(properties)) {
        const value = properties[key];
        const was = before === UNKNOWN ? UNKNOWN : before === undefined ? undefined : before[key];
        if (Array.isArray(value)) {
          for (let i = 0; i < value.length; i++) {
            const wasItem = was === UNKNOWN ? UNKNOWN : Array.isArray(was) ? was[i] : undefined;
            if (isRef(value[i], wasItem)) value[i] = await one(value[i]);
          }
        } else if (isRef(value, was)) {
          properties[key] = await one(value);
        }
      }
    }
    return resolved;
  }

  /** Adds one record to this turn's batch for its options; settles with the answer. */
  enqueue(record, depth, namesOnly, fieldNames) {
    if (!this.target) return Promise.resolve(new Unresolved('unconfigured'));
    if (this.breakerOpen()) {
      this.counters.breakerSkips++;
      return Promise.resolve(new Unresolved('breaker'));
    }
    const fields = normalizeFields(fieldNames);
    const key = JSON.stringify([depth, Boolean(namesOnly), fields]);
    let group = this.pending.get(key);
    if (!group) {
      group = { depth, namesOnly: Boolean(namesOnly), fields, entries: [] };
      this.pending.set(key, group);
    }
    return new Promise((resolve) => {
      group.entries.push({ record, settle: resolve });
      if (!this.flushScheduled) {
        this.flushScheduled = true;
        // After this turn's synchronous code and promise jobs: `records.map(...)` and
        // `Promise.all(records.map(async …))` both make every call of a page first.
        setImmediate(() => this.flush());
      }
    });
  }

  /** Cuts this turn's calls into batches and queues them (bounded). */
  flush() {
    this.flushScheduled = false;
    const groups = [...this.pending.values()];
    this.pending.clear();
    for (const group of groups) {
      for (let i = 0; i < group.entries.length; i += this.settings.batchMax) {
        const entries = group.entries.slice(i, i + this.settings.batchMax);
        if (this.queuedRecords + entries.length > this.settings.maxQueuedRecords) {
          this.counters.queueFull += entries.length;
          this.warn('queue', `${this.queuedRecords} records already wait for oip-media (OIP_MEDIA_RESOLVE_MAX_QUEUED ${this.settings.maxQueuedRecords}): ${entries.length} returned unresolved`);
          settleAll(entries, new Unresolved('queue'));
          continue;
        }
        this.queuedRecords += entries.length;
        this.queue.push({ group, entries });
      }
    }
    this.pump();
  }

  /** Starts queued batches while fewer than `maxInFlight` run. */
  pump() {
    while (this.inFlight < this.settings.maxInFlight && this.queue.length > 0) {
      const batch = this.queue.shift();
      this.queuedRecords -= batch.entries.length;
      this.inFlight++;
      this.counters.batches++;
      this.runBatch(batch)
        .catch((error) => {
          this.warn('internal', `batch failed unexpectedly: ${error && error.message}`);
          settleAll(batch.entries, new Unresolved('internal'));
        })
        .finally(() => {
          this.inFlight--;
          this.pump();
        });
    }
  }

  /** Serializes a batch's records, cut by body bytes, and sends each part in turn. */
  async runBatch({ group, entries }) {
    let part = [];
    let bytes = 0;
    for (const entry of entries) {
      let json;
      try {
        json = JSON.stringify(entry.record);
      } catch (error) {
        this.warn('serialize', `a record cannot be serialized (${error.message}): returned unresolved`);
        entry.settle(new Unresolved('serialize'));
        continue;
      }
      const size = Buffer.byteLength(json);
      if (part.length > 0 && bytes + size > this.settings.batchBytes) {
        await this.send(group, part);
        part = [];
        bytes = 0;
      }
      part.push({ entry, json });
      bytes += size + 1;
    }
    if (part.length > 0) await this.send(group, part);
  }

  /** One request for `part`; 503 waited for and retried once, 413 split in halves. */
  async send(group, part, retried = false) {
    if (!this.mayPost()) {
      this.counters.breakerSkips += part.length;
      return settleAll(part.map((p) => p.entry), new Unresolved('breaker'));
    }
    const body = requestBody(group, part);
    let answer;
    try {
      answer = await this.post(body);
    } catch (error) {
      this.failed(`oip-media unreachable or too slow (${error.code || error.message}): ${part.length} records returned unresolved`);
      return settleAll(part.map((p) => p.entry), new Unresolved('down'));
    }
    const { status } = answer;
    if (status === 200) {
      this.succeeded();
      return this.deliver(part, answer.body);
    }
    if (status === 503) {
      this.succeeded(); // alive, only busy
      this.counters.shed++;
      if (!retried) {
        const seconds = Number(answer.headers['retry-after']);
        const wait = Math.min(Number.isFinite(seconds) && seconds >= 0 ? seconds * 1000 : 1000, this.settings.retryAfterMaxMs);
        this.counters.retries++;
        await sleep(wait);
        return this.send(group, part, true);
      }
      this.warn('shed', `oip-media shed a resolve twice (503): ${part.length} records returned unresolved`);
      return settleAll(part.map((p) => p.entry), new Unresolved('shed'));
    }
    if (status === 413) {
      this.succeeded();
      if (part.length > 1) {
        this.counters.splits++;
        const half = Math.ceil(part.length / 2);
        await this.send(group, part.slice(0, half));
        return this.send(group, part.slice(half));
      }
      const record = part[0].entry.record;
      this.warn('too-large', `oip-media refused ${describe(record)} as too large (413): returned unresolved`);
      return settleAll([part[0].entry], new Unresolved('too-large'));
    }
    if (status >= 500) {
      this.failed(`oip-media answered ${status}: ${part.length} records returned unresolved`);
      return settleAll(part.map((p) => p.entry), new Unresolved('server-error'));
    }
    this.succeeded();
    this.warn('refused', `oip-media refused a resolve (${status}: ${answer.body.toString('utf8', 0, 200)}): ${part.length} records returned unresolved`);
    return settleAll(part.map((p) => p.entry), new Unresolved('refused'));
  }

  /** Hands each caller its record from a 200 answer. */
  deliver(part, body) {
    let answer;
    try {
      answer = JSON.parse(body.toString('utf8'));
    } catch (error) {
      this.warn('answer', `oip-media's answer is not JSON (${error.message}): records returned unresolved`);
      return settleAll(part.map((p) => p.entry), new Unresolved('answer'));
    }
    const records = answer && answer.records;
    if (!Array.isArray(records) || records.length !== part.length) {
      this.warn('answer', `oip-media's answer does not hold ${part.length} records: returned unresolved`);
      return settleAll(part.map((p) => p.entry), new Unresolved('answer'));
    }
    const recordStats = Array.isArray(answer.recordStats) && answer.recordStats.length === part.length ? answer.recordStats : null;
    for (let i = 0; i < part.length; i++) {
      const { entry } = part[i];
      const stats = recordStats && recordStats[i];
      const bounds = stats && Array.isArray(stats.boundsHit) ? stats.boundsHit : [];
      if (bounds.length > 0) {
        this.counters.boundsHit++;
        const did = describe(entry.record);
        this.warn('bounds', `${did} was cut short by oip-media's bounds (${bounds.join(', ')}): some references stay DIDs`);
        if (this.onBoundsHit) {
          try {
            this.onBoundsHit(did, stats);
          } catch (_) {
            // A hook's failure is the hook's own.
          }
        }
      }
      const record = records[i];
      entry.settle(record !== null && typeof record === 'object' ? record : new Unresolved('answer'));
    }
    return undefined;
  }

  /** POSTs `body` to `/api/resolve`: status, headers and body, within `timeoutMs`. */
  post(body, reuseRetry = true) {
    this.counters.requests++;
    return new Promise((resolve, reject) => {
      const { protocol, hostname, port, path } = this.target;
      const request = (protocol === 'https:' ? https : http).request({
        protocol,
        hostname,
        port,
        path,
        method: 'POST',
        agent: this.agent,
        headers: {
          'content-type': 'application/json',
          'content-length': Buffer.byteLength(body),
          accept: 'application/json',
        },
      });
      let settled = false;
      const done = (error, value) => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        if (!error) return resolve(value);
        // A keep-alive socket the server closed just as it was reused: once more.
        if (reuseRetry && request.reusedSocket && error.code === 'ECONNRESET') {
          this.counters.requests--;
          return this.post(body, false).then(resolve, reject);
        }
        return reject(error);
      };
      const timer = setTimeout(() => {
        const error = new Error(`no answer within ${this.settings.timeoutMs} ms`);
        error.code = 'ETIMEDOUT';
        request.destroy(error);
        done(error);
      }, this.settings.timeoutMs);
      request.on('error', (error) => done(error));
      request.on('response', (response) => {
        const chunks = [];
        let size = 0;
        response.on('data', (chunk) => {
          size += chunk.length;
          if (size > this.settings.maxResponseBytes) {
            const error = new Error(`answer over ${this.settings.maxResponseBytes} bytes`);
            error.code = 'ETOOLARGE';
            request.destroy(error);
            done(error);
            return;
          }
          chunks.push(chunk);
        });
        response.on('error', (error) => done(error));
        response.on('aborted', () => done(Object.assign(new Error('answer aborted'), { code: 'ECONNRESET' })));
        response.on('end', () => done(null, { status: response.statusCode, headers: response.headers, body: Buffer.concat(chunks) }));
      });
      request.end(body);
    });
  }

  /** Whether the breaker is open: calls pass through unresolved without queueing. */
  breakerOpen() {
    const breaker = this.breaker;
    return breaker.failures >= this.settings.breakerThreshold && Date.now() < breaker.openUntil;
  }

  /** Whether a request may go out now: always while closed; after the cool-down, one probe. */
  mayPost() {
    const breaker = this.breaker;
    if (breaker.failures < this.settings.breakerThreshold) return true;
    if (Date.now() < breaker.openUntil || breaker.probing) return false;
    breaker.probing = true;
    return true;
  }

  failed(message) {
    this.counters.failures++;
    const breaker = this.breaker;
    breaker.failures++;
    breaker.probing = false;
    if (breaker.failures >= this.settings.breakerThreshold) {
      breaker.openUntil = Date.now() + this.settings.breakerCooldownMs;
      this.warn('breaker', `${message}; circuit open for ${this.settings.breakerCooldownMs} ms (records pass through unresolved, no waiting)`);
    } else {
      this.warn('down', message);
    }
  }

  succeeded() {
    this.breaker.failures = 0;
    this.breaker.openUntil = 0;
    this.breaker.probing = false;
  }

  /** A warning, at most one per `kind` per `warnIntervalMs` (with a count of the rest). */
  warn(kind, message) {
    const now = Date.now();
    const last = this.warned.get(kind);
    if (last && now - last.at < this.settings.warnIntervalMs) {
      last.suppressed++;
      return;
    }
    const more = last && last.suppressed > 0 ? ` (${last.suppressed} more like it since the last warning)` : '';
    this.warned.set(kind, { at: now, suppressed: 0 });
    try {
      this.logger.warn(`[oip-media-client] ${message}${more}`);
    } catch (_) {
      // A broken logger must not break resolution.
    }
  }
}

/** The indexer's resolution cache cap: it stops pushing past 7,500 records. */
const INDEXER_CACHE_CAP = 7500;

/**
 * What the indexer's `recordsInDB` would hold while it resolves one record: the
 * caller's array until a reference it lacked is met, then a copy with each such record
 * added (never the caller's array itself).
 */
function lookupView(recordsInDB) {
  const base = Array.isArray(recordsInDB) ? recordsInDB : [];
  let copy = null;
  let dids = null;
  const key = (r) => r && r.oip && (r.oip.did || r.oip.didTx);
  return {
    remember(record) {
      const did = key(record);
      if (!did) return;
      if (!dids) dids = new Set(base.map(key));
      if (dids.has(did)) return;
      if (!copy) copy = base.slice();
      if (copy.length >= INDEXER_CACHE_CAP) return;
      copy.push(record);
      dids.add(did);
    },
    array: () => copy || recordsInDB,
  };
}

function settleAll(entries, value) {
  for (const entry of entries) entry.settle(value);
}

function describe(record) {
  const oip = record && record.oip;
  return (oip && (oip.did || oip.didTx)) || 'a record without a DID';
}

/** `resolveFieldName` as the server takes it: a list of names, or null for all fields. */
function normalizeFields(fieldNames) {
  if (fieldNames === null || fieldNames === undefined) return null;
  const list = Array.isArray(fieldNames) ? fieldNames : String(fieldNames).split(',');
  const names = list.filter((f) => typeof f === 'string').map((f) => f.trim()).filter((f) => f.length > 0);
  return names.length > 0 ? names : null;
}

function requestBody(group, part) {
  let body = `{"resolveDepth":${group.depth},"resolveNamesOnly":${group.namesOnly}`;
  if (group.fields) body += `,"resolveFieldName":${JSON.stringify(group.fields)}`;
  body += ',"records":[';
  for (let i = 0; i < part.length; i++) {
    if (i > 0) body += ',';
    body += part[i].json;
  }
  return `${body}]}`;
}

function parseTarget(url) {
  if (!url) return null;
  let parsed;
  try {
    parsed = new URL(url);
  } catch (_) {
    return null;
  }
  if (parsed.protocol !== 'http:' && parsed.protocol !== 'https:') return null;
  const base = parsed.pathname.replace(/\/+$/, '');
  return {
    protocol: parsed.protocol,
    hostname: parsed.hostname.replace(/^\[|\]$/g, ''),
    port: parsed.port || (parsed.protocol === 'https:' ? 443 : 80),
    path: `${base}/api/resolve`,
  };
}

/** Builds a client; settings not given come from the environment, then DEFAULTS. */
function createClient(options = {}) {
  return new Client({ ...configFromEnv(), ...options });
}

let shared = null;

/** The process's client, configured from the environment on first use. */
function defaultClient() {
  if (!shared) shared = createClient();
  return shared;
}

/** The indexer's `resolveRecords`, through the process's client. */
function resolveRecords(
  record,
  resolveDepth,
  recordsInDB,
  resolveNamesOnly = false,
  summarizeRecipe = false,
  addRecipeNutritionalSummary = null,
  visited = new Set(),
  resolveFieldNames = null,
  currentDepth = 0,
) {
  return defaultClient().resolveRecords(
    record,
    resolveDepth,
    recordsInDB,
    resolveNamesOnly,
    summarizeRecipe,
    addRecipeNutritionalSummary,
    visited,
    resolveFieldNames,
    currentDepth,
  );
}

module.exports = { resolveRecords, createClient, defaultClient, configFromEnv, Client, DEFAULTS, ENV };
