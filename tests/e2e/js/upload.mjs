// Uploads one file to a tus server with tus-js-client (its Node build) and prints one JSON
// line describing what happened. Driven by tests/e2e/test_tus_clients.py.
//
//   node upload.mjs --endpoint URL --file PATH [options]
//
//   --header "Name: value"   sent with every request (repeatable)
//   --token T                shorthand for --header "Authorization: Bearer T"
//   --metadata key=value     Upload-Metadata entry (repeatable)
//   --chunk-size N           bytes per PATCH (default: the whole rest of the file)
//   --parallel N             parallelUploads: N partial uploads, then a final concatenation
//   --stop-after N           abort once at least N bytes were accepted (sent, with --parallel),
//                            print the state and exit 0: a deliberately interrupted upload
//   --upload-url URL         resume this upload (the uploadUrl option)
//   --url-storage PATH       remember uploads in a JSON file (FileUrlStorage); on start,
//                            resume the most recent upload of this file found there
//   --with-creation          send the first chunk with the POST (creation-with-upload)
//   --defer-length           create with Upload-Defer-Length: 1, declare the length later
//   --buffer                 upload the file read into memory (a Buffer), not a file stream.
//                            Needed with --defer-length: tus-js-client 4.3.1's file source
//                            reports a short last chunk as full-sized (Content-Length) and
//                            never as the end, so that PATCH would hang; its Buffer source
//                            gets both right.
//
// Output: {"status": "complete"|"stopped", "url", "size", "bytes_accepted",
//          "bytes_patched", "head_offsets", "asset_id", "parallel_upload_urls",
//          "resumed_from_storage", "requests": [[method, status], ...]}
// An upload error prints {"status": "error", "error": ...} and exits 1.

import { createReadStream, readFileSync, statSync } from 'node:fs'
import { parseArgs } from 'node:util'

import { FileUrlStorage, Upload } from 'tus-js-client'

const { values: args } = parseArgs({
  options: {
    endpoint: { type: 'string' },
    file: { type: 'string' },
    header: { type: 'string', multiple: true, default: [] },
    token: { type: 'string' },
    metadata: { type: 'string', multiple: true, default: [] },
    'chunk-size': { type: 'string' },
    parallel: { type: 'string', default: '1' },
    'stop-after': { type: 'string' },
    'upload-url': { type: 'string' },
    'url-storage': { type: 'string' },
    'with-creation': { type: 'boolean', default: false },
    'defer-length': { type: 'boolean', default: false },
    buffer: { type: 'boolean', default: false },
  },
  strict: true,
})

if (!args.file || !(args.endpoint || args['upload-url'])) {
  process.stderr.write('usage: node upload.mjs --endpoint URL --file PATH [options]\n')
  process.exit(2)
}

const headers = {}
for (const line of args.header) {
  const colon = line.indexOf(':')
  if (colon < 1) throw new Error(`--header wants "Name: value", got ${JSON.stringify(line)}`)
  headers[line.slice(0, colon).trim()] = line.slice(colon + 1).trim()
}
if (args.token) headers.Authorization = `Bearer ${args.token}`

const metadata = {}
for (const entry of args.metadata) {
  const eq = entry.indexOf('=')
  if (eq < 1) throw new Error(`--metadata wants key=value, got ${JSON.stringify(entry)}`)
  metadata[entry.slice(0, eq)] = entry.slice(eq + 1)
}

const size = statSync(args.file).size
const parallel = Number(args.parallel)
const stopAfter = args['stop-after'] == null ? null : Number(args['stop-after'])

const state = {
  status: null,
  url: null,
  size,
  bytes_accepted: 0, // the offset the server confirmed last (single uploads only)
  bytes_patched: 0, // bytes of this process's PATCHes accepted, all partial uploads together
  head_offsets: {}, // upload URL -> Upload-Offset its HEAD reported (resumed uploads)
  asset_id: null, // Ingestd-Asset-Id, from the last response that carried it
  parallel_upload_urls: null,
  resumed_from_storage: false,
  requests: [],
}

function finish(status, extra = {}) {
  Object.assign(state, extra, { status })
  if (upload.url) state.url = upload.url
  if (upload._parallelUploadUrls) state.parallel_upload_urls = upload._parallelUploadUrls
  process.stdout.write(`${JSON.stringify(state)}\n`)
  // no process.exit(): let pending work (the URL storage update on success) finish
  process.exitCode = status === 'error' ? 1 : 0
}

let stopping = false
function stop() {
  if (stopping) return
  stopping = true
  // abort() stops every running request (and every partial upload); what the server has
  // accepted so far stays there, to be resumed by another process.
  upload.abort().then(
    () => finish('stopped'),
    (err) => finish('error', { error: String(err) }),
  )
}

const options = {
  endpoint: args.endpoint,
  uploadUrl: args['upload-url'] ?? null,
  headers,
  metadata,
  parallelUploads: parallel,
  retryDelays: null, // an error is a test failure, not something to paper over
  removeFingerprintOnSuccess: true,
  uploadDataDuringCreation: args['with-creation'],
  uploadLengthDeferred: args['defer-length'],
  onAfterResponse(req, res) {
    state.requests.push([req.getMethod(), res.getStatus()])
    const assetId = res.getHeader('Ingestd-Asset-Id')
    if (assetId) state.asset_id = assetId
    if (req.getMethod() === 'HEAD' && !(req.getURL() in state.head_offsets)) {
      const offset = res.getHeader('Upload-Offset')
      state.head_offsets[req.getURL()] = offset == null ? null : Number(offset)
    }
  },
  onChunkComplete(chunkSize, bytesAccepted) {
    state.bytes_accepted = bytesAccepted
    state.bytes_patched += chunkSize
    if (stopAfter != null && parallel === 1 && bytesAccepted >= stopAfter && bytesAccepted < size) {
      stop()
    }
  },
  onProgress(bytesSent) {
    if (stopAfter != null && parallel > 1 && bytesSent >= stopAfter) stop()
  },
  onSuccess() {
    if (!stopping) finish('complete')
  },
  onError(err) {
    finish('error', { error: String(err) })
  },
}
if (args['chunk-size']) options.chunkSize = Number(args['chunk-size'])
if (args['url-storage']) options.urlStorage = new FileUrlStorage(args['url-storage'])

// A path-backed read stream: tus-js-client reads slices of the file by position, which is
// what lets it resume at any offset and split the file for parallel uploads.
const input = args.buffer ? readFileSync(args.file) : createReadStream(args.file)
const upload = new Upload(input, options)

if (args['url-storage']) {
  const previous = await upload.findPreviousUploads()
  if (previous.length > 0) {
    previous.sort((a, b) => Date.parse(b.creationTime) - Date.parse(a.creationTime))
    upload.resumeFromPreviousUpload(previous[0])
    state.resumed_from_storage = true
  }
}
upload.start()
