'use strict';
// Loads the indexer's own resolveRecords and addRecipeNutritionalSummary from a checkout
// named by OIP_INDEXER_DIR, without its npm packages: every module that is not installed
// becomes an inert stub, and `@elastic/elasticsearch` an in-memory client answering the
// indexer's `term` searches from the records it is given. Nothing of the indexer is
// copied here; it is read from the checkout at test time.

const Module = require('node:module');
const path = require('node:path');
const fs = require('node:fs');

/** A stand-in for a package that is not installed: callable, constructible, any property. */
function inert() {
  const target = function () {};
  const proxy = new Proxy(target, {
    get(_, key) {
      if (key === 'then' || typeof key === 'symbol' || key === '__esModule') return undefined;
      return proxy;
    },
    apply: () => proxy,
    construct: () => proxy,
  });
  return proxy;
}

/** The in-memory Elasticsearch: `search({index, body: {query}})` over `indices`. */
function elasticClient(indices, counter) {
  const termValue = (clause) => {
    const term = clause && clause.term;
    if (!term) return undefined;
    return term['oip.did.keyword'] !== undefined ? term['oip.did.keyword'] : term['oip.didTx.keyword'];
  };
  return class InMemoryElastic {
    async search({ index, body }) {
      counter.searches++;
      const should = (body && body.query && body.query.bool && body.query.bool.should) || [];
      const wanted = new Set(should.map(termValue).filter((v) => v !== undefined));
      const hits = (indices[index] || [])
        .filter((doc) => wanted.has(doc.oip.did) || wanted.has(doc.oip.didTx))
        // A real client parses a fresh answer each time.
        .map((doc) => ({ _index: index, _source: structuredClone(doc) }));
      return { hits: { total: { value: hits.length }, hits } };
    }
    close() {}
  };
}

/**
 * `{resolveRecords, addRecipeNutritionalSummary, counter, setIndices, quiet}` of the
 * indexer at `dir`, or throws if the files are not there.
 */
function loadIndexer(dir) {
  const utilsPath = path.join(dir, 'helpers', 'utils.js');
  const esPath = path.join(dir, 'helpers', 'elasticsearch.js');
  if (!fs.existsSync(utilsPath) || !fs.existsSync(esPath)) {
    throw new Error(`${dir} has no helpers/utils.js and helpers/elasticsearch.js`);
  }
  const indices = { records: [], organizations: [] };
  const counter = { searches: 0, stubbed: new Set() };
  const Client = elasticClient(indices, counter);
  const stub = inert();
  const original = Module._load;
  Module._load = function load(request, parent, isMain) {
    const from = parent && parent.filename;
    const inIndexer = from && from.startsWith(path.resolve(dir));
    if (inIndexer && request === '@elastic/elasticsearch') return { Client };
    try {
      return original.call(this, request, parent, isMain);
    } catch (error) {
      if (inIndexer && error.code === 'MODULE_NOT_FOUND') {
        counter.stubbed.add(request);
        return stub;
      }
      throw error;
    }
  };
  const restore = quiet();
  try {
    const utils = require(utilsPath);
    const elasticsearch = require(esPath);
    return {
      resolveRecords: utils.resolveRecords,
      addRecipeNutritionalSummary: elasticsearch.addRecipeNutritionalSummary,
      counter,
      setIndices(records, organizations) {
        indices.records = records;
        indices.organizations = organizations;
      },
    };
  } finally {
    restore();
  }
}

/** Silences console.log/warn/error/info (the indexer logs every lookup); returns the undo. */
function quiet() {
  const saved = { log: console.log, warn: console.warn, error: console.error, info: console.info };
  console.log = console.warn = console.error = console.info = () => {};
  return () => Object.assign(console, saved);
}

module.exports = { loadIndexer, quiet };
