#!/usr/bin/env node
// Apollo Client 3 (from npm) reads a deferred query over multipart/mixed and reports what it
// rendered: one JSON line on stdout, {"contentType", "emissions": [{"ms", "loading", "data"}],
// "errors"}, one emission per result Apollo Client hands a watching UI. The Rust test
// (tests/api/defer.rs) asserts on it.
//
// Usage: node defer.mjs <http-url> '<query>' [--token JWT] [--timeout SECONDS=10]
import pkg from '@apollo/client/core/core.cjs';
const { ApolloClient, ApolloLink, InMemoryCache, HttpLink, Observable, gql } = pkg;

const argv = process.argv.slice(2);
const opts = {};
const pos = [];
for (let i = 0; i < argv.length; i++) {
  if (argv[i].startsWith('--')) opts[argv[i].slice(2)] = argv[++i];
  else pos.push(argv[i]);
}
const [url, query] = pos;
if (!url || !query) {
  console.error("usage: node defer.mjs <http-url> '<query>' [--token JWT] [--timeout S]");
  process.exit(2);
}
const t0 = Date.now();
let contentType = null;
const fetchAndLog = async (input, init) => {
  const res = await fetch(input, init);
  contentType = res.headers.get('content-type');
  return res;
};
const headers = opts.token ? { authorization: `Bearer ${opts.token}` } : {};
// Apollo Client shows no sign of the last part (`loading` is false from the first one on): a
// link in front of HttpLink says when the answer ended, every part handed on by then.
let answerEnded;
const ended = new Promise((resolve) => { answerEnded = resolve; });
const endLink = new ApolloLink((operation, forward) => new Observable((observer) => {
  const sub = forward(operation).subscribe({
    next: (v) => observer.next(v),
    error: (e) => { answerEnded(); observer.error(e); },
    complete: () => { answerEnded(); observer.complete(); },
  });
  return () => sub.unsubscribe();
}));
const client = new ApolloClient({
  link: endLink.concat(new HttpLink({ uri: url, fetch: fetchAndLog, headers })),
  cache: new InMemoryCache(),
});
const emissions = [];
const errors = [];
const sub = client
  .watchQuery({ query: gql(query), fetchPolicy: 'network-only', errorPolicy: 'all' })
  .subscribe({
    next: (r) => {
      emissions.push({ ms: Date.now() - t0, loading: r.loading, data: r.data ?? null });
      for (const e of r.errors ?? []) errors.push(e.message);
    },
    error: (e) => { errors.push(String(e?.message ?? e)); answerEnded(); },
  });
const timeout = new Promise((resolve) => setTimeout(() => { errors.push('timed out'); resolve(); }, Number(opts.timeout ?? 10) * 1000));
await Promise.race([ended, timeout]);
// The cache broadcasts the last result to watchers in a task of its own.
await new Promise((resolve) => setTimeout(resolve, 0));
sub.unsubscribe();
console.log(JSON.stringify({ contentType, emissions, errors }));
process.exit(0);
