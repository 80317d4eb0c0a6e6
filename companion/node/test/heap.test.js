'use strict';
// A flat Node heap over 20,000 calls: the companion keeps nothing per call once a page
// is answered (no record cache, no growing queue or map), against the real binary.

const test = require('node:test');
const assert = require('node:assert/strict');
const v8 = require('node:v8');
const vm = require('node:vm');
const { createClient } = require('..');
const { binary, startElastic, startServer, recordingLogger } = require('./support');
const { workoutWorld } = require('./fixtures');

const bin = binary();
const skip = bin ? false : 'skipped: OIP_MEDIA_BIN is not set and target/debug/oip-media is not built';
if (skip) console.log(skip);

/** `gc()`, with or without --expose-gc. */
function collector() {
  if (typeof global.gc === 'function') return global.gc;
  v8.setFlagsFromString('--expose-gc');
  return vm.runInNewContext('gc');
}

test('heapUsed after 20,000 calls stays within 4 MiB of what it was after warm-up', { skip, timeout: 300000 }, async () => {
  const gc = collector();
  const { records, page } = workoutWorld({ workoutCount: 100 });
  const elastic = await startElastic(records, []);
  const server = await startServer(elastic.url);
  const client = createClient({ url: server.url, logger: recordingLogger() });
  const recordsInDB = [];
  const heap = () => {
    gc();
    gc();
    return process.memoryUsage().heapUsed;
  };
  let calls = 0;
  const runPages = async (n) => {
    for (let p = 0; p < n; p++) {
      const out = await Promise.all(page.map((r) => client.resolveRecords(r, 1, recordsInDB, false, false, null, new Set(), null, 0)));
      calls += out.length;
      assert.equal(out[p % out.length].data.workout.exercise[0].oip.recordType, 'exercise');
    }
  };
  try {
    await runPages(20);
    const warm = heap();
    await runPages(180);
    const end = heap();
    const stats = client.stats();
    console.log(`heap: ${calls} calls, heapUsed after warm-up ${(warm / 1048576).toFixed(2)} MiB, at the end ${(end / 1048576).toFixed(2)} MiB, ${stats.requests} requests`);
    assert.equal(calls, 20000);
    assert.equal(stats.unresolved, 0);
    assert.equal(stats.requests, 200, 'one request per page of 100');
    assert.ok(end - warm < 4 * 1048576, `heapUsed grew by ${((end - warm) / 1048576).toFixed(2)} MiB`);
  } finally {
    client.close();
    await server.close();
    await elastic.close();
  }
});
