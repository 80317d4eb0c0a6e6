'use strict';
// Parity with the indexer: the companion (through the real oip-media binary) and the
// indexer's own resolveRecords (loaded from OIP_INDEXER_DIR, with an in-memory
// Elasticsearch holding the same records) on the same records and options, the
// indexer's own addRecipeNutritionalSummary passed to both.

const test = require('node:test');
const assert = require('node:assert/strict');
const util = require('node:util');
const { createClient } = require('..');
const { binary, startElastic, startServer, deepFreeze, recordingLogger } = require('./support');
const { did, oip, workoutWorld, recipeWorld, cycleWorld } = require('./fixtures');
const { loadIndexer, quiet } = require('./indexer');

const dir = process.env.OIP_INDEXER_DIR;
const bin = binary();
const skip = !dir
  ? 'skipped: OIP_INDEXER_DIR is not set (a checkout of DevonJames/oip-arweave-indexer)'
  : !bin
    ? 'skipped: OIP_MEDIA_BIN is not set and target/debug/oip-media is not built'
    : false;
if (skip) console.log(skip);

/** The first path where two values differ, for the report. */
function firstDifference(a, b, at = '$') {
  if (util.isDeepStrictEqual(a, b)) return null;
  if (a && b && typeof a === 'object' && typeof b === 'object' && Array.isArray(a) === Array.isArray(b)) {
    for (const key of new Set([...Object.keys(a), ...Object.keys(b)])) {
      const found = firstDifference(a[key], b[key], `${at}.${key}`);
      if (found) return found;
    }
  }
  const show = (v) => (v === undefined ? 'undefined' : JSON.stringify(v).slice(0, 120));
  return `${at}: companion ${show(a)} vs indexer ${show(b)}`;
}

function world() {
  const workouts = workoutWorld({ workoutCount: 6 });
  const recipes = recipeWorld();
  const cycles = cycleWorld();
  const org = { oip: oip('did:arweave:org000001', 'organization'), data: { basic: { name: 'Org' }, organization: { members: 3 } } };
  const tagged = {
    oip: oip(did('tag', 1), 'post'),
    data: { basic: { name: 'Tagged', avatar: did('img', 3) }, tags: [did('exr', 1), 'plain', did('gone', 7)], post: { org: 'did:arweave:org000001', author: did('exr', 2) } },
  };
  // Two recipes that use each other (a cycle through recipes) and a plan listing a recipe twice.
  const loopA = { oip: oip(did('rcp', 31), 'recipe'), data: { basic: { name: 'Loop A' }, recipe: { servings: 1, ingredient: [did('rcp', 32), did('ing', 0)], ingredient_amount: [1, 50], ingredient_unit: ['unit', 'g'], ingredient_comment: ['', 'chopped'] } } };
  const loopB = { oip: oip(did('rcp', 32), 'recipe'), data: { basic: { name: 'Loop B' }, recipe: { servings: 2, ingredient: [did('rcp', 31), did('ing', 1)], ingredient_amount: [1, 30], ingredient_unit: ['unit', 'g'], ingredient_comment: ['', ''] } } };
  const twice = { oip: oip(did('pln', 2), 'mealPlan'), data: { basic: { name: 'Twice' }, mealPlan: { meals: [did('rcp', 2), did('rcp', 31)], dinner: did('rcp', 2) } } };
  const records = [...workouts.records, ...recipes.records, ...cycles.records, loopA, loopB];
  const inputs = [...workouts.page, recipes.plan, recipes.dinner, recipes.sauce, cycles.a, cycles.b, tagged, twice, loopA];
  return { records, organizations: [org], inputs, ingredients: recipes.ingredients };
}

const CIRCULAR = Symbol('circular');

/** A cache whose lookups and inserts copy: the indexer can no longer write into shared records. */
function copying(cache) {
  const copy = structuredClone(cache);
  copy.find = function find(predicate) {
    const found = Array.prototype.find.call(this, predicate);
    return found && structuredClone(found);
  };
  copy.push = function push(...items) {
    return Array.prototype.push.apply(this, items.map((item) => structuredClone(item)));
  };
  return copy;
}

/** The indexer's answers for `inputs` (each on a copy, with a fresh cache), as JSON values. */
async function runIndexer(indexer, inputs, freshCache, [depth, namesOnly, summarize, summary, fields]) {
  const restore = quiet();
  try {
    const out = [];
    for (const r of inputs) {
      const answer = await indexer.resolveRecords(structuredClone(r), depth, freshCache(), namesOnly, summarize, summary, new Set(), fields, 0);
      try {
        out.push(JSON.parse(JSON.stringify(answer)));
      } catch (_) {
        out.push(CIRCULAR);
      }
    }
    return out;
  } finally {
    restore();
  }
}

const FIELD_SETS = [
  null,
  ['workout.exercise'],
  ['data.workout.exercise', 'exercise.equipmentRequired'],
  ['basic.avatar', 'mealPlan'],
  ['recipe.ingredient', 'mealPlan.meals'],
  ['post'],
  // A bare word that is a key of another category (SPEC §4: selects only the category).
  ['exercise'],
];

test('the companion\'s output equals the indexer\'s resolveRecords on the same records and options', { skip, timeout: 600000 }, async () => {
  const indexer = loadIndexer(dir);
  const { records, organizations, inputs, ingredients } = world();
  deepFreeze(records);
  deepFreeze(inputs);
  indexer.setIndices(records, organizations);
  const elastic = await startElastic(records, organizations);
  const server = await startServer(elastic.url);
  const client = createClient({ url: server.url, logger: recordingLogger() });
  const summary = indexer.addRecipeNutritionalSummary;
  const caches = {
    // What getRecords passes: its record cache, here holding every record...
    full: deepFreeze([...records]),
    // ...only the ingredients (the rest come from Elasticsearch)...
    ingredients: deepFreeze([...ingredients]),
    // ...or nothing (every lookup goes to Elasticsearch).
    empty: deepFreeze([]),
  };
  let cases = 0;
  let summarized = 0;
  const differences = [];
  try {
    for (const [cacheName, cache] of Object.entries(caches)) {
      for (const depth of [1, 2, 3]) {
        for (const namesOnly of [false, true]) {
          for (const fields of FIELD_SETS) {
            for (const summarize of [false, true]) {
              if (!summarize && cacheName !== 'full') continue; // the cache only matters to summaries
              // The companion: a page in one tick, as getRecords calls it.
              const ours = await Promise.all(
                inputs.map((r) => client.resolveRecords(r, depth, cache, namesOnly, summarize, summary, new Set(), fields, 0)),
              );
              // The indexer: on copies (it writes into its records and its cache), each
              // record with a fresh cache so one record's writes cannot leak into the next;
              // once as it is, once with a cache that hands out copies, which undoes its
              // writing resolved records into shared objects (SPEC §4: not copied).
              const raw = await runIndexer(indexer, inputs, () => structuredClone(cache), [depth, namesOnly, summarize, summary, fields]);
              const clean = await runIndexer(indexer, inputs, () => copying(cache), [depth, namesOnly, summarize, summary, fields]);
              if (summarize) summarized += ours.filter((r) => JSON.stringify(r).includes('"summaryNutritionalInfo"')).length;
              inputs.forEach((input, i) => {
                cases++;
                const vsClean = firstDifference(ours[i], clean[i]);
                const vsRaw = raw[i] === CIRCULAR ? 'circular' : firstDifference(ours[i], raw[i]);
                if (!vsRaw) return;
                const d = { input: input.oip.did, depth, namesOnly, fields, summarize, cache: cacheName };
                if (!vsClean) differences.push({ ...d, mutation: true, difference: vsRaw === 'circular' ? 'the indexer\'s answer is circular JSON' : vsRaw });
                else differences.push({ ...d, difference: vsClean });
              });
            }
          }
        }
      }
    }
  } finally {
    client.close();
    await server.close();
    await elastic.close();
  }
  // `exercise` is both a category and workout's key: a bare word selects only the
  // category on both sides (SPEC §4), so those cases must be identical too.
  const mutation = differences.filter((d) => d.mutation);
  const failing = differences.filter((d) => !d.mutation);
  console.log(`parity: ${cases - differences.length}/${cases} cases identical to the indexer's resolveRecords (${inputs.length} records × depths 1-3 × names only × ${FIELD_SETS.length} field sets × summaries × 3 caches); ${mutation.length} only from the indexer writing resolved records into shared objects (identical once its cache hands out copies), ${failing.length} other`);
  for (const d of [...mutation.slice(0, 3), ...failing.slice(0, 12)]) console.log(`parity: differs: ${JSON.stringify({ ...d, difference: undefined })} ${d.difference}`);
  assert.ok(indexer.counter.searches > 0, 'the indexer did search its Elasticsearch');
  console.log(`parity: ${summarized} answers carry the indexer's own nested recipe summaries`);
  assert.ok(summarized > 0, 'the indexer\'s addRecipeNutritionalSummary made summaries');
  assert.deepEqual(failing, []);
  // Give back the timers the indexer's modules started at load.
  setImmediate(() => process.exit(process.exitCode || 0)).unref();
});
