// The requests the indexer's GUN client (helpers/gun.js) sends, built from GUN_PEERS the way
// it builds them: the first entry of the comma list is the API base, and every call is
// axios against `${base}/get` (params: soul), `${base}/put` (JSON {soul, data}) or
// `${base}/list` (params: publisherHash, limit, offset, recordType). axios is pinned to the
// indexer's version, so souls are encoded exactly as the indexer encodes them.
//
// Usage: GUN_PEERS=… node gun_client.js '<JSON array of operations>'
//   {"op":"get","soul":…}            axios.get(`${base}/get`, {params: {soul}})
//   {"op":"get_encoded","soul":…}    axios.get(`${base}/get?soul=${encodeURIComponent(soul)}`),
//                                    the encoding of the indexer's own /gun-relay/get proxy
//   {"op":"put","soul":…,"data":…}   axios.post(`${base}/put`, {soul, data})
//   {"op":"list","publisherHash":…}  axios.get(`${base}/list`, {params: {publisherHash, limit, offset}})
// Prints one JSON line per operation: {op, path, status, body} (path: what went on the wire),
// or {op, error} when no answer came.

'use strict';

const axios = require('axios');

const base = (process.env.GUN_PEERS || 'http://gun-relay:8765').split(',')[0];
const operations = JSON.parse(process.argv[2] || '[]');
const options = { timeout: 20000, validateStatus: () => true, headers: { 'Content-Type': 'application/json' } };

function send(operation) {
    switch (operation.op) {
        case 'get':
            return axios.get(`${base}/get`, { ...options, params: { soul: operation.soul } });
        case 'get_encoded':
            return axios.get(`${base}/get?soul=${encodeURIComponent(operation.soul)}`, options);
        case 'put':
            return axios.post(`${base}/put`, { soul: operation.soul, data: operation.data }, options);
        case 'list':
            return axios.get(`${base}/list`, {
                ...options,
                params: { publisherHash: operation.publisherHash, limit: 50, offset: 0 },
            });
        default:
            return Promise.reject(new Error(`unknown op ${operation.op}`));
    }
}

(async () => {
    for (const operation of operations) {
        try {
            const response = await send(operation);
            console.log(JSON.stringify({
                op: operation.op,
                path: response.request.path,
                status: response.status,
                body: response.data,
            }));
        } catch (error) {
            console.log(JSON.stringify({ op: operation.op, error: error.code || error.message }));
        }
    }
})();
