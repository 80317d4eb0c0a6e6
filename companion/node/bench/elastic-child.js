'use strict';
// The benchmark's Elasticsearch stand-in in a process of its own, so that its records
// and its work count in neither resolver's memory or time. Prints its URL, then serves
// until stdin closes.
const { startElastic } = require('../test/support');
const { workoutWorld } = require('../test/fixtures');

const workouts = Number(process.argv[2] || 200);
startElastic(workoutWorld({ workoutCount: workouts }).records, []).then((elastic) => {
  process.stdout.write(`${elastic.url}\n`);
  process.stdin.resume();
  process.stdin.on('end', () => process.exit(0));
});
