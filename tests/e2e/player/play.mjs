// Plays manifests in headless Chromium through player.html and prints what happened as one
// JSON object on stdout (tests/e2e/test_playback.py reads it).
//
//   node play.mjs --page http://127.0.0.1:PORT/player/player.html --lib hls|dash --src URL
//       [--switch] [--only NAME] [--debug] [--timeout-ms 60000] [--chromium /usr/bin/chromium]
//   node play.mjs --page ... [--parallel 4] --jobs '[{"id": "a", "lib": "hls", "src": "...",
//       "switch": true, "only": "flac", "stall_s": 8, "debug": true}, ...]'
//
// --page is player.html on an HTTP server that also serves the node_modules next to it; the
// job options are player.html's query parameters (see there). --jobs plays several,
// --parallel at a time, each page in its own browser context of one browser. Output:
//   {"browserVersion", "launchError", "results": [{id, lib, src, playback, timedOut,
//    console, pageErrors, requestsFailed, httpErrors}, ...]}
// where playback is player.html's window.playback once it is done (or when the timeout hit)
// and console holds the page's warnings and errors (everything with debug).
// Exit status: 0 when every page reported a result (ended or failed: the caller judges it),
// 2 when one did not within the timeout or the browser could not start (JSON still printed).
import { chromium } from "playwright-core";
import { parseArgs } from "node:util";

const { values: opts } = parseArgs({
  options: {
    page: { type: "string" },
    lib: { type: "string" },
    src: { type: "string" },
    switch: { type: "boolean", default: false },
    only: { type: "string" },
    debug: { type: "boolean", default: false },
    jobs: { type: "string" },
    parallel: { type: "string", default: "4" },
    "timeout-ms": { type: "string", default: "60000" },
    chromium: { type: "string", default: "/usr/bin/chromium" },
  },
});

function usage(message) {
  process.stderr.write(`play.mjs: ${message}\n`);
  process.exit(64);
}

if (!opts.page) usage("--page is required");
let jobs;
if (opts.jobs) {
  jobs = JSON.parse(opts.jobs);
} else if (opts.lib && opts.src) {
  const { lib, src, switch: forceSwitch, only, debug } = opts;
  jobs = [{ id: "main", lib, src, switch: forceSwitch, only, debug }];
} else {
  usage("give --lib and --src, or --jobs");
}
const timeoutMs = Number(opts["timeout-ms"]);
const parallel = Number(opts.parallel);

async function play(browser, job) {
  const out = {
    id: job.id,
    lib: job.lib,
    src: job.src,
    playback: null,
    timedOut: false,
    console: [],
    pageErrors: [],
    requestsFailed: [],
    httpErrors: [],
  };
  const context = await browser.newContext();
  try {
    const page = await context.newPage();
    page.on("console", (msg) => {
      if (job.debug || ["error", "warning"].includes(msg.type())) {
        out.console.push(`${msg.type()}: ${msg.text()}`);
      }
    });
    page.on("pageerror", (err) => out.pageErrors.push(String(err)));
    page.on("requestfailed", (req) => {
      out.requestsFailed.push(`${req.url()}: ${req.failure()?.errorText ?? "failed"}`);
    });
    page.on("response", (resp) => {
      if (resp.status() >= 400) out.httpErrors.push(`${resp.status()} ${resp.url()}`);
    });
    const url = new URL(opts.page);
    url.searchParams.set("lib", job.lib);
    url.searchParams.set("src", job.src);
    if (job.switch) url.searchParams.set("switch", "1");
    if (job.only) url.searchParams.set("only", job.only);
    if (job.stall_s) url.searchParams.set("stall_s", String(job.stall_s));
    if (job.debug) url.searchParams.set("debug", "1");
    await page.goto(url.href, { timeout: timeoutMs });
    try {
      await page.waitForFunction(() => window.playback && window.playback.done, null, {
        timeout: timeoutMs,
        polling: 100,
      });
    } catch (err) {
      if (err.name !== "TimeoutError") throw err;
      out.timedOut = true;
    }
    out.playback = await page.evaluate(() => window.playback ?? null);
  } catch (err) {
    out.pageErrors.push(`play.mjs: ${err && err.stack ? err.stack : err}`);
    out.timedOut = true;
  } finally {
    await context.close();
  }
  return out;
}

const report = { browserVersion: null, launchError: null, results: [] };
let browser;
try {
  browser = await chromium.launch({
    executablePath: opts.chromium,
    args: [
      "--no-sandbox",
      "--disable-gpu",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
      "--no-first-run",
      "--autoplay-policy=no-user-gesture-required",
    ],
  });
  report.browserVersion = browser.version();
  // A small pool: Chromium starts too many media pipelines at once slowly or not at all.
  const queue = jobs.map((job, i) => [i, job]);
  report.results = new Array(jobs.length);
  const worker = async () => {
    for (let next = queue.shift(); next; next = queue.shift()) {
      report.results[next[0]] = await play(browser, next[1]);
    }
  };
  await Promise.all(Array.from({ length: Math.max(1, parallel) }, worker));
} catch (err) {
  report.launchError = String(err && err.stack ? err.stack : err);
} finally {
  if (browser) await browser.close();
}
const status = report.launchError || report.results.some((r) => r.timedOut) ? 2 : 0;
// Exit only once stdout has taken it all: a pipe is written asynchronously.
process.stdout.write(`${JSON.stringify(report)}\n`, () => process.exit(status));
