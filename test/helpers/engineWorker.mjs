// A worker thread that runs its own engine (the built dist/) on a listening fd the main thread made and passed by number (test/integration/engineThreads.test.ts).
//
// workerData: { fd, name, profile }. Every ACCEPT is answered by the current mode: 'reply'
// (`250 <name>` and close), 'hold' (held for a minute; the profile's teaser names the worker),
// 'drop' (RST). Messages in: { mode }, { counts: true } (answered with { counts }),
// { throw: message } (an uncaught exception on the worker's loop, outside the engine's callback).
// Messages out: { ready: true }, { accepted: n }, { counts }.

import { parentPort, workerData } from 'node:worker_threads';
import { loadEngine } from '../../dist/src/native/engine.js';

const EV_ACCEPT = 1;
const engine = loadEngine();
const { fd, name, profile } = workerData;
let mode = 'reply';
let accepted = 0;

engine.defineProfile(0, profile);
engine.start((batch) => {
  for (const ev of batch) {
    if (ev[0] !== EV_ACCEPT) continue;
    accepted++;
    const id = ev[1];
    if (mode === 'hold') engine.hold(id, { windowMs: 60_000, profile: 0 });
    else if (mode === 'drop') engine.drop(id);
    else engine.reply(id, { text: `250 ${name}\r\n`, profile: 0 });
    parentPort.postMessage({ accepted });
  }
});
engine.listen(fd, 1);

parentPort.on('message', (m) => {
  if (m.mode) mode = m.mode;
  if (m.counts) parentPort.postMessage({ counts: engine.counts() });
  if (m.throw)
    setImmediate(() => {
      throw new Error(m.throw);
    });
});
parentPort.postMessage({ ready: true });
