// The indexer's token check: jwt.verify(token, secret) of jsonwebtoken 9, with no options
// but the clock (clockTimestamp only replaces Math.floor(Date.now() / 1000), so every case
// is judged at the same second oip-media is asked about).
//
// stdin: one JSON object per line, {"token": "...", "secret": "...", "now": 1700000000}
// stdout: one line per input, "verifies" or "throws: <message>".
const jwt = require('jsonwebtoken');
const lines = require('fs').readFileSync(0, 'utf8').split('\n').filter((l) => l.trim());
for (const line of lines) {
  const { token, secret, now } = JSON.parse(line);
  try {
    jwt.verify(token, secret, { clockTimestamp: now });
    console.log('verifies');
  } catch (e) {
    console.log(`throws: ${e.message}`);
  }
}
