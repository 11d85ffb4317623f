// Buys COUNT single-use MPP credentials from server.mjs (one sandbox
// payment each) and writes one `Authorization` value per line, the file
// ../credentials.lua feeds to wrk.
//
//   node credentials.mjs BASE_URL PATH COUNT OUT [PARALLEL]
//
// For each: GET PATH -> 402, take the `Payment` challenge (parsed by mppx),
// POST /sandbox/pay {invoice} -> {preimage}, check that the preimage hashes
// to the challenge's payment hash, and serialize the credential with mppx.
// Challenges expire after mppx's default 5 minutes: spend them before.

import { createHash } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import * as http from 'node:http';

import { Challenge, Credential } from 'mppx';

const [base, path, countArg, out, parallelArg = '8'] = process.argv.slice(2);
if (!base || !path || !countArg || !out) {
  console.error('usage: node credentials.mjs BASE_URL PATH COUNT OUT [PARALLEL]');
  process.exit(2);
}
const count = Number(countArg);
const parallel = Math.max(1, Math.min(Number(parallelArg), count || 1));
const agent = new http.Agent({ keepAlive: true, maxSockets: parallel });

function call(method, target, body) {
  return new Promise((resolve, reject) => {
    const headers = body === undefined ? {} : { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(body) };
    const req = http.request(new URL(target, base), { method, agent, headers }, (res) => {
      const chunks = [];
      res.on('data', (chunk) => chunks.push(chunk));
      res.on('end', () => resolve({ status: res.statusCode, headers: res.headers, body: Buffer.concat(chunks).toString('utf8') }));
      res.on('error', reject);
    });
    req.on('error', reject);
    req.end(body);
  });
}

async function buyOne() {
  const offer = await call('GET', path);
  if (offer.status !== 402) throw new Error(`GET ${path}: expected 402, got ${offer.status}`);
  const headers = new Headers();
  for (const value of [].concat(offer.headers['www-authenticate'] ?? [])) headers.append('WWW-Authenticate', value);
  const challenge = Challenge.fromHeaders(headers);
  if (challenge.method !== 'lightning' || challenge.intent !== 'charge')
    throw new Error(`unexpected challenge ${challenge.method}/${challenge.intent}`);
  const { invoice, paymentHash } = challenge.request.methodDetails;
  const paid = await call('POST', '/sandbox/pay', JSON.stringify({ invoice }));
  if (paid.status !== 200) throw new Error(`POST /sandbox/pay: ${paid.status} ${paid.body}`);
  const { preimage } = JSON.parse(paid.body);
  if (createHash('sha256').update(Buffer.from(preimage, 'hex')).digest('hex') !== paymentHash)
    throw new Error('the payer answered a preimage that does not match the payment hash');
  return Credential.serialize(Credential.from({ challenge, payload: { preimage } }));
}

const lines = [];
let next = 0;
async function worker() {
  while (next < count) {
    next += 1;
    lines.push(await buyOne());
  }
}
const started = performance.now();
await Promise.all(Array.from({ length: parallel }, worker));
writeFileSync(out, lines.map((line) => `${line}\n`).join(''));
agent.destroy();
const seconds = (performance.now() - started) / 1000;
console.error(`bought ${lines.length} MPP credentials from mppx in ${seconds.toFixed(1)}s`);
