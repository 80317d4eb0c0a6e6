#!/usr/bin/env node
// A GUN relay with the indexer's HTTP API (SPEC §3), for tests/gun_real_relay.rs.
//
//   GET  /get?soul=<soul>       200 {"success":true,"data":{…}} | 404 {"error":"Not found"}
//                               | 400 {"error":"Soul parameter required"}
//   POST /put {"soul","data"}   200 {"success":true,"soul":…} | 500 {"error":<GUN's ack.err>}
//                               | 400 {"error":"Invalid JSON"} | 400 {"error":"Soul parameter required"}
//   anything else               404 {"error":"Endpoint not found"}
//
// Like the real relay it answers a miss only after waiting for peers (RELAY_MISS_WAIT_MS,
// default 3000), stores through GUN's radisk (put acks come from the disk write), parses
// string `data`/`oip` fields before answering, and leaves nested nodes as {"#": soul} links.
//
// Environment:
//   RELAY_PORT          port to listen on (0 = any free port; default 8765)
//   RELAY_HOST          address to listen on (default 127.0.0.1; 0.0.0.0 in a container)
//   RELAY_MISS_WAIT_MS  how long a miss takes to answer (default 3000)
//   RELAY_DATA_DIR      radisk folder (default: a fresh temporary folder, removed on exit)
//
// Prints `RELAY_PORT=<port>` on stdout once it accepts connections.
'use strict';

const fs = require('fs');
const http = require('http');
const os = require('os');
const path = require('path');
const Gun = require('gun');

const port = Number(process.env.RELAY_PORT || 8765);
const host = process.env.RELAY_HOST || '127.0.0.1';
const missWaitMs = Number(process.env.RELAY_MISS_WAIT_MS || 3000);
const ownDataDir = !process.env.RELAY_DATA_DIR;
const dataDir = process.env.RELAY_DATA_DIR || fs.mkdtempSync(path.join(os.tmpdir(), 'oip-relay-'));

function cleanUpAndExit() {
  if (ownDataDir) {
    fs.rmSync(dataDir, { recursive: true, force: true });
  }
  process.exit(0);
}
process.on('SIGTERM', cleanUpAndExit);
process.on('SIGINT', cleanUpAndExit);

const gun = Gun({ file: dataDir, peers: [], localStorage: false, axe: false, multicast: false });

function send(res, status, body) {
  const text = JSON.stringify(body);
  res.writeHead(status, {
    'Content-Type': 'application/json',
    'Content-Length': Buffer.byteLength(text),
  });
  res.end(text);
}

// GUN keeps its metadata under `_`; the relay answers with the record's own fields, with
// the string-encoded `data` and `oip` fields parsed.
function clean(node) {
  const out = {};
  for (const [key, value] of Object.entries(node)) {
    if (key === '_') continue;
    if ((key === 'data' || key === 'oip') && typeof value === 'string') {
      try {
        out[key] = JSON.parse(value);
        continue;
      } catch (_) {
        // Not JSON: keep the string as stored.
      }
    }
    out[key] = value;
  }
  return out;
}

function handleGet(res, soul) {
  if (!soul) {
    send(res, 400, { error: 'Soul parameter required' });
    return;
  }
  const started = Date.now();
  gun.get(soul).once((node) => {
    if (node) {
      send(res, 200, { success: true, data: clean(node) });
    } else {
      // The real relay waits for peers before it gives up on a soul.
      const left = Math.max(0, missWaitMs - (Date.now() - started));
      setTimeout(() => send(res, 404, { error: 'Not found' }), left);
    }
  });
}

function handlePut(req, res) {
  let body = '';
  req.setEncoding('utf8');
  req.on('data', (chunk) => { body += chunk; });
  req.on('end', () => {
    let parsed;
    try {
      parsed = JSON.parse(body);
    } catch (_) {
      send(res, 400, { error: 'Invalid JSON' });
      return;
    }
    const soul = parsed && parsed.soul;
    if (!soul || typeof soul !== 'string') {
      send(res, 400, { error: 'Soul parameter required' });
      return;
    }
    gun.get(soul).put(parsed.data, (ack) => {
      if (ack.err) {
        send(res, 500, { error: ack.err });
      } else {
        send(res, 200, { success: true, soul });
      }
    });
  });
}

const server = http.createServer((req, res) => {
  const url = new URL(req.url, 'http://relay.invalid');
  try {
    if (req.method === 'GET' && url.pathname === '/get') {
      handleGet(res, url.searchParams.get('soul'));
    } else if (req.method === 'POST' && url.pathname === '/put') {
      handlePut(req, res);
    } else {
      send(res, 404, { error: 'Endpoint not found' });
    }
  } catch (error) {
    send(res, 500, { error: String(error && error.message ? error.message : error) });
  }
});

server.listen(port, host, () => {
  process.stdout.write(`RELAY_PORT=${server.address().port}\n`);
});
