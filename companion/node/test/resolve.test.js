'use strict';
// The indexer's resolveRecords semantics through the companion, against the real
// oip-media binary (OIP_MEDIA_BIN) and an Elasticsearch stand-in.

const test = require('node:test');
const assert = require('node:assert/strict');
const { createClient } = require('..');
const { binary, startElastic, startServer, deepFreeze, recordingLogger } = require('./support');
const { did, workoutWorld, recipeWorld, cycleWorld, testSummary } = require('./fixtures');

const bin = binary();
const skip = bin ? false : 'skipped: OIP_MEDIA_BIN is not set and target/debug/oip-media is not built';
if (skip) console.log(skip);

const workouts = workoutWorld();
const recipes = recipeWorld();
const cycles = cycleWorld();
const orgRecord = { oip: { did: 'did:arweave:org000001', didTx: 'did:arweave:org000001', recordType: 'organization' }, data: { basic: { name: 'FitnessAlly Org' }, organization: {} } };
const world = deepFreeze([...workouts.records, ...recipes.records, ...cycles.records]);
const page = deepFreeze(workouts.page.slice(0, 50));

let elastic;
let server;
let client;
const logger = recordingLogger();

test.before(async () => {
  if (skip) return;
  elastic = await startElastic(world, [orgRecord]);
  server = await startServer(elastic.url);
  client = createClient({ url: server.url, logger });
});

test.after(async () => {
  if (client) client.close();
  if (server) await server.close();
  if (elastic) await elastic.close();
});

/** Runs `work` and returns [its result, /api/resolve requests the server answered meanwhile]. */
async function counted(work) {
  const before = await server.resolveRequests();
  const result = await work();
  return [result, (await server.resolveRequests()) - before];
}

test('depth 0, NaN, a falsy depth, a missing record or non-object data: the record as it is, no request', { skip }, async () => {
  const record = page[0];
  const noData = deepFreeze({ oip: { did: 'did:x:1' }, data: 'did:arweave:exr000001' });
  const [results, requests] = await counted(() =>
    Promise.all([
      client.resolveRecords(record, 0, []),
      client.resolveRecords(record, NaN, []),
      client.resolveRecords(record, parseInt(undefined, 10), []),
      client.resolveRecords(record, undefined, []),
      client.resolveRecords(record, null, []),
      client.resolveRecords(record, '', []),
      client.resolveRecords(record, -1, []),
      client.resolveRecords(noData, 3, []),
      client.resolveRecords(null, 3, []),
    ]),
  );
  for (const out of results.slice(0, 7)) assert.equal(out, record);
  assert.equal(results[7], noData);
  assert.equal(results[8], null);
  assert.equal(requests, 0, 'no request for a record that is returned as it is');
});

test('depth 1 replaces each reference by the record; depth 2 resolves theirs too', { skip }, async () => {
  const record = page[3];
  const one = await client.resolveRecords(record, 1, []);
  assert.notEqual(one, record);
  assert.equal(one.oip.did, record.oip.did);
  const exercises = one.data.workout.exercise;
  assert.equal(exercises.length, 12);
  exercises.forEach((exercise, i) => {
    assert.equal(exercise.oip.did, record.data.workout.exercise[i]);
    assert.equal(typeof exercise.data.basic.avatar, 'string', 'one level only');
    assert.ok(exercise.data.basic.avatar.startsWith('did:'));
  });
  assert.deepEqual(one.data.workout.exercise_amount, record.data.workout.exercise_amount);
  const two = await client.resolveRecords(record, 2, []);
  const first = two.data.workout.exercise[0];
  assert.equal(first.data.basic.avatar.data.image.webUrl.startsWith('https://x/'), true);
  assert.equal(first.data.exercise.equipmentRequired[0].oip.recordType, 'fitnessEquipment');
  assert.equal(typeof first.data.exercise.equipmentRequired[0].data.basic.avatar, 'string', 'depth 2 stops there');
});

test('names only: the last level becomes data.basic.name', { skip }, async () => {
  const record = page[5];
  const names = await client.resolveRecords(record, 1, [], true);
  assert.deepEqual(
    names.data.workout.exercise,
    record.data.workout.exercise.map((d) => `Exercise ${Number(d.slice(15, 21))}`),
  );
  const two = await client.resolveRecords(record, 2, [], true);
  const exercise = two.data.workout.exercise[0];
  assert.equal(exercise.oip.recordType, 'exercise');
  assert.match(exercise.data.basic.avatar, /^Demo \d+$/);
  assert.match(exercise.data.exercise.equipmentRequired[0], /^Equipment \d+$/);
  // Recipes at the last level merge ingredient names with their comments.
  const dinner = await client.resolveRecords(recipes.dinner, 1, [], true);
  assert.deepEqual(dinner.data.recipe.ingredient, ['boneless chicken breast', 'rice', 'Garlic sauce', 'freshly ground black pepper']);
});

test('field names: only the named fields are resolved (SPEC §4)', { skip }, async () => {
  const record = page[7];
  for (const fields of [['workout.exercise'], ['data.workout.exercise'], 'workout.exercise', ['workout']]) {
    const out = await client.resolveRecords(record, 2, [], false, false, null, new Set(), fields, 0);
    const exercise = out.data.workout.exercise[0];
    assert.equal(exercise.oip.recordType, 'exercise', `${JSON.stringify(fields)} selects workout.exercise`);
    // Nested fields are not named, so they stay DIDs.
    assert.ok(exercise.data.basic.avatar.startsWith('did:'), JSON.stringify(fields));
    assert.ok(exercise.data.exercise.equipmentRequired[0].startsWith('did:'));
  }
  const avatarOnly = await client.resolveRecords(page[7], 2, [], false, false, null, new Set(), ['basic.avatar'], 0);
  assert.ok(avatarOnly.data.workout.exercise[0].startsWith('did:'), 'workout.exercise not named');
  const both = await client.resolveRecords(page[7], 2, [], false, false, null, new Set(), ['workout.exercise', 'basic.avatar'], 0);
  assert.equal(both.data.workout.exercise[0].data.basic.avatar.oip.recordType, 'image');
});

test('cycles become the indexer\'s stub; a DID not found stays in place', { skip }, async () => {
  const out = await client.resolveRecords(cycles.a, 3, []);
  const b = out.data.post.related;
  assert.equal(b.oip.did, cycles.b.oip.did);
  assert.deepEqual(b.data.post.related, { oip: cycles.a.oip, data: { basic: cycles.a.data.basic }, _circular: true });
  assert.equal(out.data.post.missing, did('gone', 1));
  // A record already on the caller's path is the stub at once.
  const stub = await client.resolveRecords(cycles.a, 2, [], false, false, null, new Set([cycles.a.oip.did]));
  assert.equal(stub._circular, true);
  // The organizations index is searched for what records lacks.
  const member = deepFreeze({ oip: { did: 'did:x:member' }, data: { basic: { name: 'm' }, member: { org: 'did:arweave:org000001' } } });
  const resolved = await client.resolveRecords(member, 1, []);
  assert.equal(resolved.data.member.org.data.basic.name, 'FitnessAlly Org');
});

test('nested recipes get addRecipeNutritionalSummary where the indexer applies it', { skip }, async () => {
  const recordsInDB = deepFreeze([...recipes.ingredients]);
  const calls = [];
  const summary = async (record, db) => {
    calls.push(record.oip.did);
    // recordsInDB itself, or (once a reference it lacks was met) a copy with the records
    // the indexer would have pushed into it by then: never the caller's array changed.
    assert.ok(db === recordsInDB || recordsInDB.every((r, i) => db[i] === r), 'recordsInDB is passed through');
    return testSummary(record, db);
  };
  // A meal plan at depth 2: its recipes (level 1) are resolved with their ingredients
  // (level 2); the sauce used as an ingredient is summarized first, then the dinner.
  const plan = await client.resolveRecords(recipes.plan, 2, recordsInDB, false, true, summary);
  const [dinner, sauce, missing] = plan.data.mealPlan.meals;
  assert.equal(missing, did('rcp', 404));
  assert.deepEqual(calls, [did('rcp', 1), did('rcp', 2), did('rcp', 1)]);
  const nestedSauce = dinner.data.recipe.ingredient[2];
  // The sauce at level 2 kept its ingredient DIDs (depth exhausted): its summary came from recordsInDB.
  assert.deepEqual(nestedSauce.data.summaryNutritionalInfo.names, ['db:olive oil', 'db:garlic']);
  assert.deepEqual(dinner.data.summaryNutritionalInfo.names, ['chicken breast', 'rice', 'Garlic sauce', 'black pepper']);
  assert.ok(sauce.data.summaryNutritionalInfoPerServing.calories > 0);
  assert.equal(plan.data.summaryNutritionalInfo, undefined, 'the top-level record is getRecords\' to summarize');
  // A top-level recipe is not summarized here; its nested recipe is.
  calls.length = 0;
  const top = await client.resolveRecords(recipes.dinner, 1, recordsInDB, false, true, summary);
  assert.equal(top.data.summaryNutritionalInfo, undefined);
  assert.deepEqual(calls, [did('rcp', 1)]);
  // Names only at the last level: nothing to summarize there.
  calls.length = 0;
  await client.resolveRecords(recipes.plan, 1, recordsInDB, true, true, summary);
  assert.deepEqual(calls, []);
  // Without summarizeRecipe (or without the function) nothing is called.
  await client.resolveRecords(recipes.plan, 2, recordsInDB, false, false, summary);
  await client.resolveRecords(recipes.plan, 2, recordsInDB, false, true, null);
  assert.deepEqual(calls, []);
  // A summary function that throws leaves the recipe resolved without a summary.
  const thrown = await client.resolveRecords(recipes.dinner, 1, recordsInDB, false, true, () => { throw new Error('boom'); });
  assert.equal(thrown.data.recipe.ingredient[2].oip.did, did('rcp', 1));
  assert.equal(thrown.data.recipe.ingredient[2].data.summaryNutritionalInfo, undefined);
});

test('inputs are never changed (deep-frozen records and recordsInDB; same JSON after)', { skip }, async () => {
  const recordsInDB = deepFreeze([...recipes.ingredients, ...workouts.records.slice(0, 10)]);
  const inputs = deepFreeze([page[0], page[1], recipes.plan, cycles.a]);
  const before = JSON.stringify([inputs, recordsInDB]);
  for (const depth of [1, 2, 3]) {
    for (const namesOnly of [false, true]) {
      await Promise.all(inputs.map((r) => client.resolveRecords(r, depth, recordsInDB, namesOnly, true, testSummary)));
    }
  }
  assert.equal(JSON.stringify([inputs, recordsInDB]), before);
  assert.ok(inputs.every(Object.isFrozen));
});

test('a page of 50 concurrent calls is ONE request at the server, each caller gets its own record', { skip }, async () => {
  const [results, requests] = await counted(() =>
    Promise.all(page.map((record) => client.resolveRecords(record, 2, [], false, false, null, new Set(), null, 0))),
  );
  assert.equal(requests, 1);
  results.forEach((out, i) => {
    assert.equal(out.oip.did, page[i].oip.did);
    assert.equal(out.data.workout.exercise[0].oip.did, page[i].data.workout.exercise[0]);
  });
  // The getRecords shape: an async mapper per record.
  const [, again] = await counted(() => Promise.all(page.map(async (record) => client.resolveRecords(record, 1, []))));
  assert.equal(again, 1);
});

test('batches split by record count and by options', { skip }, async () => {
  const small = createClient({ url: server.url, batchMax: 20, logger });
  try {
    const [out, requests] = await counted(() => Promise.all(page.map((r) => small.resolveRecords(r, 1, []))));
    assert.equal(requests, 3, '50 records at 20 a batch');
    out.forEach((r, i) => assert.equal(r.oip.did, page[i].oip.did));
    const [, mixed] = await counted(() =>
      Promise.all([...page.slice(0, 10).map((r) => small.resolveRecords(r, 1, [])), ...page.slice(0, 10).map((r) => small.resolveRecords(r, 1, [], true))]),
    );
    assert.equal(mixed, 2, 'one request per set of options');
  } finally {
    small.close();
  }
});

test('a lookup failure (Elasticsearch down) leaves every DID in place', { skip }, async () => {
  const deadElastic = await startElastic([], []);
  const url = deadElastic.url;
  await deadElastic.close();
  const lonely = await startServer(url, { ELASTICSEARCH_TIMEOUT: '500ms' });
  const own = createClient({ url: lonely.url, logger: recordingLogger() });
  try {
    const out = await own.resolveRecords(page[2], 2, []);
    assert.deepEqual(out, page[2]);
  } finally {
    own.close();
    await lonely.close();
  }
});

test('the real server\'s 413 (RESOLVE_BODY_LIMIT) and 503 (RESOLVE_MAX_IN_FLIGHT, RESOLVE_MAX_QUEUE 0): split and retried, never thrown', { skip }, async () => {
  const pageBytes = page.slice(0, 20).reduce((n, r) => n + Buffer.byteLength(JSON.stringify(r)), 0);
  // A body limit that fits about 6 records: a 20-record batch is refused, then split.
  const limit = Math.floor((pageBytes / 20) * 6);
  const tight = await startServer(elastic.url, { RESOLVE_BODY_LIMIT: String(limit), RESOLVE_MAX_IN_FLIGHT: '1', RESOLVE_MAX_QUEUE: '0' });
  // The split, alone: one request at a time, so the server's single slot never sheds
  // one (a shed part retried and shed again gives back the caller's record, which the
  // round of sheds below checks; here every record must come back resolved).
  const serialLog = recordingLogger();
  const serial = createClient({ url: tight.url, batchMax: 20, maxInFlight: 1, retryAfterMaxMs: 300, logger: serialLog });
  const own = createClient({ url: tight.url, batchMax: 20, maxInFlight: 4, retryAfterMaxMs: 300, logger: recordingLogger() });
  try {
    const records = page.slice(0, 20);
    const out = await Promise.all(records.map((r) => serial.resolveRecords(r, 1, [])));
    out.forEach((r, i) => assert.equal(r.data.workout.exercise[0].oip?.did, records[i].data.workout.exercise[0], `record ${i} resolved: ${JSON.stringify(serial.stats())} ${serialLog.lines.join(' | ')}`));
    const stats = serial.stats();
    assert.ok(stats.splits >= 2, `split on 413: ${JSON.stringify(stats)}`);
    // Four batches at once against one slot and no queue: some are shed, retried once.
    // (Rounds until one overlaps: resolving 10 cached records takes milliseconds.)
    const many = page.slice(0, 40);
    for (let round = 0; round < 20 && own.stats().shed === 0; round++) {
      const results = await Promise.all(many.map((r, i) => own.resolveRecords(r, 1, [], false, false, null, new Set(), i % 4 === 0 ? null : ['workout.exercise', `basic.x${i % 4}`], 0)));
      assert.equal(results.length, 40);
      assert.ok(results.every((r, i) => r === many[i] || r.data.workout.exercise[0].oip), 'resolved, or (shed twice) the caller\'s record');
    }
    const after = own.stats();
    assert.ok(after.shed > 0 && after.retries > 0, `the server shed some, retried: ${JSON.stringify(after)}`);
  } finally {
    serial.close();
    own.close();
    await tight.close();
  }
});

test('the server\'s Elasticsearch stand-in saw only well-formed searches', { skip }, () => {
  assert.deepEqual(elastic.state.violations, []);
  assert.ok(elastic.state.searches > 0);
});
