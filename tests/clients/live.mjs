#!/usr/bin/env node
// The npm `graphql-ws` and `graphql-sse` clients (from npm) run one subscription against a BFF and
// report what they received: one JSON line on stdout, {"events": [payload, ...], "error"}. After
// the first event it POSTs to `--after-post URL` (e.g. the fixtures' admin API, which changes the
// data and publishes the event), so the second event is the change. The Rust tests
// (tests/api/subscriptions.rs) assert on the line.
//
// Usage: node live.mjs ws|sse <url> '<subscription>' [--token JWT] [--count N=2]
//                      [--after-post URL] [--timeout SECONDS=10]
import { createClient as createWsClient } from 'graphql-ws';
import { createClient as createSseClient } from 'graphql-sse';
import WebSocket from 'ws';

const argv = process.argv.slice(2);
const opts = {};
const pos = [];
for (let i = 0; i < argv.length; i++) {
  if (argv[i].startsWith('--')) opts[argv[i].slice(2)] = argv[++i];
  else pos.push(argv[i]);
}
const [transport, url, query] = pos;
if (!['ws', 'sse'].includes(transport) || !url || !query) {
  console.error("usage: node live.mjs ws|sse <url> '<subscription>' [--token JWT] [--count N] [--after-post URL]");
  process.exit(2);
}
const want = Number(opts.count ?? 2);
const timeoutMs = Number(opts.timeout ?? 10) * 1000;
const client = transport === 'ws'
  ? createWsClient({
      url, webSocketImpl: WebSocket, lazy: true, retryAttempts: 0,
      connectionParams: opts.token ? { token: opts.token } : undefined,
    })
  : createSseClient({
      url, singleConnection: false, retryAttempts: 0,
      headers: opts.token ? { authorization: `Bearer ${opts.token}` } : {},
    });
const events = [];
let error = null;
await new Promise((resolve) => {
  const timer = setTimeout(() => { error ??= 'timed out'; resolve(); }, timeoutMs);
  const dispose = client.subscribe({ query }, {
    next: (v) => {
      events.push(v);
      if (events.length === 1 && opts['after-post']) {
        fetch(opts['after-post'], { method: 'POST' }).catch((e) => { error ??= `after-post: ${e}`; });
      }
      if (events.length >= want) { clearTimeout(timer); dispose(); resolve(); }
    },
    error: (e) => {
      error = Array.isArray(e) ? JSON.stringify(e) : (e?.message ?? (e && 'code' in e ? `closed ${e.code} ${e.reason}` : String(e)));
      clearTimeout(timer); resolve();
    },
    complete: () => { clearTimeout(timer); resolve(); },
  });
});
await client.dispose();
console.log(JSON.stringify({ events, error }));
