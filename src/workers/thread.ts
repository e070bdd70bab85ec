// An engine worker thread: its own engine and App, fed by the main thread (src/workers/group.ts).

import { parentPort, workerData } from 'node:worker_threads';
import { App } from '../app.js';
import type { WorkerInit } from './messages.js';
import { WorkerSide } from './side.js';

const init = workerData as WorkerInit;
if (!parentPort) throw new Error('src/workers/thread.ts runs as a worker thread (started by the main thread of etd)');
const side = new WorkerSide(parentPort, init);
const app = new App(init.config, side.logger(init.config.log.level), side);
app.start().then(
  () => side.ready(),
  (e: unknown) => side.failed(e),
);
