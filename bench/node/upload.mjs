// One tus upload of one file with tus-js-client in Node, for bench/tus_throughput.py.
//
//   TUS_HEADERS='{"Authorization": "Bearer KEY"}' \
//     node upload.mjs --endpoint http://127.0.0.1:1080/files/ --file FILE [--chunk-size 8388608]
//
// The file is given to tus-js-client as an fs.ReadStream of a path, so the client reads each
// chunk from disk as it sends it (memory stays at about one chunk). Extra request headers
// come from the environment (TUS_HEADERS, a JSON object), not the command line, so that a
// key does not show in the process list. Retries are off: an error ends the run.
// On success it prints one JSON line:
//   {"url": ..., "bytes": N, "seconds": S, "requests": {"POST": 1, "PATCH": K}}
// where seconds runs from just before the creation request to the last response.
import fs from 'node:fs';
import path from 'node:path';
import { performance } from 'node:perf_hooks';
import { parseArgs } from 'node:util';

import { Upload } from 'tus-js-client';

const { values } = parseArgs({
  options: {
    endpoint: { type: 'string' },
    file: { type: 'string' },
    'chunk-size': { type: 'string', default: String(8 * 1024 * 1024) },
  },
});
if (!values.endpoint || !values.file) {
  console.error('usage: node upload.mjs --endpoint URL --file FILE [--chunk-size BYTES]');
  process.exit(2);
}
const chunkSize = Number(values['chunk-size']);
if (!Number.isSafeInteger(chunkSize) || chunkSize <= 0) {
  console.error(`not a chunk size: ${values['chunk-size']}`);
  process.exit(2);
}
const headers = process.env.TUS_HEADERS ? JSON.parse(process.env.TUS_HEADERS) : {};
const { size } = fs.statSync(values.file);
const requests = {};

const started = performance.now();
const upload = new Upload(fs.createReadStream(values.file), {
  endpoint: values.endpoint,
  chunkSize,
  headers,
  metadata: { filename: path.basename(values.file), filetype: 'application/octet-stream' },
  retryDelays: null,
  storeFingerprintForResuming: false,
  onAfterResponse(req) {
    const method = req.getMethod();
    requests[method] = (requests[method] ?? 0) + 1;
  },
  onError(error) {
    console.error(`upload failed: ${error}`);
    process.exit(1);
  },
  onSuccess() {
    const seconds = (performance.now() - started) / 1000;
    process.stdout.write(
      `${JSON.stringify({ url: upload.url, bytes: size, seconds, requests })}\n`,
    );
  },
});
upload.start();
