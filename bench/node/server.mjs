// The reference tus 1.0 server for bench/tus_throughput.py: @tus/server with a FileStore.
//
//   node server.mjs --port 1080 --dir /tmp/store [--host 127.0.0.1] [--path /files]
//
// Uploads are stored as <dir>/<upload id> (plus <upload id>.json for the upload's info).
// When it listens it prints one JSON line, {"listening": "http://host:port/files/", "pid": N},
// and it exits on SIGTERM or SIGINT after closing the listening socket.
import http from 'node:http';
import { parseArgs } from 'node:util';

import { FileStore } from '@tus/file-store';
import { Server } from '@tus/server';

const { values } = parseArgs({
  options: {
    host: { type: 'string', default: '127.0.0.1' },
    port: { type: 'string' },
    dir: { type: 'string' },
    path: { type: 'string', default: '/files' },
  },
});
if (!values.port || !values.dir) {
  console.error('usage: node server.mjs --port PORT --dir DIRECTORY [--host HOST] [--path /files]');
  process.exit(2);
}

const tus = new Server({
  path: values.path,
  datastore: new FileStore({ directory: values.dir }),
});

const server = http.createServer((req, res) => tus.handle(req, res));
// Large single-request uploads may take longer than Node's defaults allow.
server.requestTimeout = 0;
server.headersTimeout = 60_000;
server.keepAliveTimeout = 5_000;

server.listen(Number(values.port), values.host, () => {
  const { address, port } = server.address();
  const listening = `http://${address}:${port}${values.path}/`;
  process.stdout.write(`${JSON.stringify({ listening, pid: process.pid })}\n`);
});

function stop() {
  server.close(() => process.exit(0));
  server.closeAllConnections();
  setTimeout(() => process.exit(0), 2_000).unref();
}
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
