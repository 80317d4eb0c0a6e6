'use strict';
// Every failure path: the caller gets its record back unresolved (DIDs in place), never
// an exception, within a bounded time. Stub servers stand in for oip-media.

const test = require('node:test');
const assert = require('node:assert/strict');
const { createClient } = require('..');
const { startStub, echo, deadUrl, deepFreeze, recordingLogger } = require('./support');
const { workoutWorld } = require('./fixtures');

const page = deepFreeze(workoutWorld({ workoutCount: 40 }).page);

/** Resolves the whole page through `client` at depth 2; results and elapsed ms. */
async function resolvePage(client, records = page) {
  const started = Date.now();
  const out = await Promise.all(records.map((r) => client.resolveRecords(r, 2, [])));
  return [out, Date.now() - started];
}

test('oip-media down: records unresolved at once, then the breaker skips the network', async () => {
  const logger = recordingLogger();
  const client = createClient({ url: await deadUrl(), breakerThreshold: 2, breakerCooldownMs: 60000, logger });
  for (let i = 0; i < 3; i++) {
    const [out, ms] = await resolvePage(client);
    out.forEach((r, j) => assert.equal(r, page[j], 'the caller\'s own record, DIDs in place'));
    assert.ok(ms < 2000, `answered in ${ms} ms`);
  }
  const stats = client.stats();
  assert.equal(stats.requests, 2, 'two failures open the breaker; the third page makes no request');
  assert.equal(stats.breakerOpen, true);
  assert.equal(stats.breakerSkips, page.length);
  assert.equal(logger.lines.length, 2, logger.lines.join('\n'));
  assert.match(logger.lines.join('\n'), /circuit open/);
  client.close();
});

test('the breaker lets one probe through after its cool-down and closes on success', async () => {
  let fail = true;
  const stub = await startStub((req, body, res) => {
    if (fail) {
      res.writeHead(500);
      return res.end('{}');
    }
    return echo(req, body, res);
  });
  const client = createClient({ url: stub.url, breakerThreshold: 1, breakerCooldownMs: 200, logger: recordingLogger() });
  await resolvePage(client);
  await resolvePage(client);
  assert.equal(stub.state.requests, 1, 'open: no request');
  await new Promise((r) => setTimeout(r, 250));
  fail = false;
  const [out] = await resolvePage(client);
  assert.equal(stub.state.requests, 2, 'one probe');
  assert.equal(client.stats().breakerOpen, false);
  assert.notEqual(out[0], page[0], 'answered by the server again');
  assert.deepEqual(out[0], page[0]);
  client.close();
  await stub.close();
});

test('503: waits Retry-After (capped) and retries once; shed twice: unresolved', async () => {
  const stub = await startStub((req, body, res, n) => {
    if (n === 1 || n >= 3) {
      res.writeHead(503, { 'retry-after': '30', 'content-type': 'application/json' });
      return res.end('{"error":"Server busy, retry shortly"}');
    }
    return echo(req, body, res);
  });
  const client = createClient({ url: stub.url, retryAfterMaxMs: 300, logger: recordingLogger() });
  let [out, ms] = await resolvePage(client);
  assert.equal(stub.state.requests, 2, 'one retry');
  assert.ok(ms >= 290 && ms < 3000, `waited the capped Retry-After, not 30 s: ${ms} ms`);
  assert.notEqual(out[0], page[0]);
  assert.deepEqual(out, page);
  [out, ms] = await resolvePage(client);
  assert.equal(stub.state.requests, 4, 'shed twice: no third try');
  out.forEach((r, j) => assert.equal(r, page[j]));
  assert.ok(ms < 3000);
  assert.equal(client.stats().breakerOpen, false, 'a busy server is not a dead one');
  client.close();
  await stub.close();
});

test('413: the batch is split down to single records; a single record still refused is returned unresolved', async () => {
  const tooBig = page[5].oip.did;
  const stub = await startStub((req, body, res) => {
    const records = JSON.parse(body.toString('utf8')).records;
    if (records.length > 4 || records.some((r) => r.oip.did === tooBig)) {
      res.writeHead(413, { 'content-type': 'application/json' });
      return res.end('{"error":"Request body is over the limit"}');
    }
    return echo(req, body, res);
  });
  const logger = recordingLogger();
  const client = createClient({ url: stub.url, logger });
  const records = page.slice(0, 16);
  const [out, ms] = await resolvePage(client, records);
  out.forEach((r, j) => {
    if (j === 5) assert.equal(r, records[5], 'refused alone: unresolved');
    else assert.notEqual(r, records[j], 'answered by the server');
    assert.deepEqual(r, records[j]);
  });
  // 16 -> 8+8 -> 4×4; the quarter holding record 5 -> 2+2 -> 1+1.
  assert.deepEqual(stub.state.batches, [16, 8, 4, 4, 2, 1, 1, 2, 8, 4, 4]);
  assert.match(logger.lines.join('\n'), new RegExp(`refused ${tooBig} as too large`));
  assert.ok(ms < 3000);
  client.close();
  await stub.close();
});

test('a server that never answers: unresolved after the timeout, no throw', async () => {
  const stub = await startStub(() => {});
  const client = createClient({ url: stub.url, timeoutMs: 300, logger: recordingLogger() });
  const [out, ms] = await resolvePage(client);
  out.forEach((r, j) => assert.equal(r, page[j]));
  assert.ok(ms >= 290 && ms < 2000, `${ms} ms`);
  client.close();
  await stub.close();
});

test('5xx, a refusal (400) and a malformed answer: unresolved, no throw', async () => {
  for (const answer of [
    (res) => { res.writeHead(502); res.end('bad gateway'); },
    (res) => { res.writeHead(400, { 'content-type': 'application/json' }); res.end('{"error":"nope"}'); },
    (res) => { res.writeHead(200); res.end('{"records": 3'); },
    (res) => { res.writeHead(200); res.end('{"records": [], "stats": {}}'); },
    (res) => { res.destroy(); },
  ]) {
    const stub = await startStub((req, body, res) => answer(res));
    const client = createClient({ url: stub.url, logger: recordingLogger() });
    const [out, ms] = await resolvePage(client);
    out.forEach((r, j) => assert.equal(r, page[j]));
    assert.ok(ms < 2000);
    client.close();
    await stub.close();
  }
});

test('no OIP_MEDIA_URL: records unresolved, one warning, never an in-memory resolver', async () => {
  const logger = recordingLogger();
  const client = createClient({ url: '', logger });
  const [out] = await resolvePage(client);
  out.forEach((r, j) => assert.equal(r, page[j]));
  assert.equal(logger.lines.length, 1);
  assert.match(logger.lines[0], /OIP_MEDIA_URL/);
  client.close();
});

test('bounded: batches in flight per process and records waiting', async () => {
  let running = 0;
  let most = 0;
  const stub = await startStub((req, body, res) => {
    running++;
    most = Math.max(most, running);
    setTimeout(() => {
      running--;
      echo(req, body, res);
    }, 20);
  });
  const client = createClient({ url: stub.url, batchMax: 10, maxInFlight: 2, maxQueuedRecords: 300, logger: recordingLogger() });
  const many = [];
  for (let i = 0; i < 10; i++) many.push(...page);
  const [out] = await resolvePage(client, many);
  assert.equal(most, 2, 'never more than maxInFlight batches at the server');
  assert.equal(stub.state.requests, 30, '300 records queued in batches of 10');
  assert.equal(client.stats().queueFull, 100, 'the rest came back unresolved at once');
  assert.equal(out.filter((r, j) => r === many[j]).length, 100);
  assert.equal(client.stats().queuedRecords, 0);
  client.close();
  await stub.close();
});

test('batches are cut by body bytes too', async () => {
  const stub = await startStub(echo);
  const size = Buffer.byteLength(JSON.stringify(page[0]));
  const client = createClient({ url: stub.url, batchBytes: size * 5 + 10, logger: recordingLogger() });
  const [out] = await resolvePage(client);
  assert.deepEqual(out, page);
  assert.ok(stub.state.batches.every((n) => n <= 5), JSON.stringify(stub.state.batches));
  assert.equal(stub.state.batches.reduce((a, b) => a + b, 0), page.length);
  client.close();
  await stub.close();
});

test('recordStats (when the server sends them) name the record cut short; the record is unchanged by them', async () => {
  const stub = await startStub((req, body, res) => {
    const records = JSON.parse(body.toString('utf8')).records;
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end(JSON.stringify({ records, stats: {}, recordStats: records.map((r, i) => ({ lookups: 1, boundsHit: i === 2 ? ['budget'] : [] })) }));
  });
  const logger = recordingLogger();
  const hits = [];
  const client = createClient({ url: stub.url, logger, onBoundsHit: (didCut, stats) => hits.push([didCut, stats.boundsHit]) });
  const [out] = await resolvePage(client, page.slice(0, 4));
  assert.deepEqual(out, page.slice(0, 4));
  assert.deepEqual(hits, [[page[2].oip.did, ['budget']]]);
  assert.match(logger.lines.join('\n'), new RegExp(`${page[2].oip.did} was cut short by oip-media's bounds \\(budget\\)`));
  assert.equal(client.stats().boundsHit, 1);
  client.close();
  await stub.close();
});

test('warnings are rate-limited', async () => {
  const logger = recordingLogger();
  const client = createClient({ url: await deadUrl(), breakerThreshold: 1000, logger });
  for (let i = 0; i < 20; i++) await client.resolveRecords(page[i], 1, []);
  assert.equal(client.stats().requests, 20);
  assert.equal(logger.lines.length, 1, logger.lines.join('\n'));
  client.close();
});
