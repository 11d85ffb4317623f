// The benchmark's comparison point: mppx, the official MPP TypeScript SDK,
// serving the same paid route as the gateway under scripts/bench.
//
//   node server.mjs PORT UPSTREAM_URL
//
// GET /weather.json      no credential: 402 with an mppx challenge for a
//                        fresh regtest BOLT11 invoice (1 sat); with a valid
//                        `Authorization: Payment ...` credential: the
//                        upstream's body, 200, and mppx's Payment-Receipt.
// POST /sandbox/pay      {"invoice": "lnbcrt..."} -> {"preimage": hex}, the
//                        stand-in payer, shaped like the gateway's sandbox.
//
// mppx ships no Lightning method, so `lightning`/`charge` is defined here
// with mppx's Method API, after draft-lightning-charge: the request carries
// amount (sats, decimal string), currency "sat", description and
// methodDetails {invoice, paymentHash, network}; the credential payload is
// {preimage}; the receipt's reference is the payment hash. Everything else
// (HMAC-bound challenge ids, header encoding, credential parsing, expiry,
// route binding, problem bodies, receipts, the replay store) is mppx's own.
//
// TEST MONEY ONLY: invoices are signed with a throwaway node key made at
// start-up and "paid" by the built-in payer; nothing moves.
//
// Environment: MPP_SECRET_KEY (default: random per start), MPP_REALM
// (default bench.local).

import { randomBytes, createHash } from 'node:crypto';
import * as http from 'node:http';

import { secp256k1 } from '@noble/curves/secp256k1';
import { bech32 } from '@scure/base';
import { Errors, Method, Receipt, Store, z } from 'mppx';
import { Mppx } from 'mppx/server/core';

const [port, upstreamArg] = process.argv.slice(2);
if (!port || !upstreamArg) {
  console.error('usage: node server.mjs PORT UPSTREAM_URL');
  process.exit(2);
}
const upstream = new URL(upstreamArg);

// The route, as scripts/bench configures it for the gateway.
const ROUTE = '/weather.json';
const SCOPE = 'weather';
const PRICE_SATS = 1;
const DESCRIPTION = 'Benchmark route';
const NETWORK = 'regtest';
const INVOICE_EXPIRY_SECS = 600;
const MIN_FINAL_CLTV_EXPIRY = 18;

// ---------------------------------------------------------------------------
// BOLT11: just enough to issue signed regtest invoices and read one back.

const HRP_PREFIX = { mainnet: 'lnbc', testnet: 'lntb', signet: 'lntbs', regtest: 'lnbcrt' };
// Tag numbers (their bech32 letters in comments).
const TAG = { paymentHash: 1 /* p */, paymentSecret: 16 /* s */, description: 13 /* d */, expiry: 6 /* x */, minFinalCltv: 24 /* c */, features: 5 /* 9 */ };
// var_onion_optin (bit 8) and payment_secret (bit 14), both required, as
// LDK's invoice builder sets them for an invoice with a payment secret.
const FEATURE_WORDS = [16, 8, 0];

// The amount part of the human-readable prefix: the shortest exact form.
function hrpAmount(msat) {
  const units = [[100_000_000_000n, ''], [100_000_000n, 'm'], [100_000n, 'u'], [100n, 'n']];
  for (const [per, suffix] of units) if (msat % per === 0n) return `${msat / per}${suffix}`;
  return `${msat * 10n}p`;
}

// An unsigned integer as big-endian 5-bit words, no leading zero words.
function uintWords(value, minWords = 0) {
  const words = [];
  for (let n = BigInt(value); n > 0n; n >>= 5n) words.unshift(Number(n & 31n));
  while (words.length < minWords) words.unshift(0);
  return words;
}

function tagged(tag, words) {
  if (words.length > 1023) throw new Error('tagged field too long');
  return [tag, words.length >> 5, words.length & 31, ...words];
}

// 5-bit words packed into bytes, zero bits appended to the last byte.
function packWords(words) {
  const out = new Uint8Array(Math.ceil((words.length * 5) / 8));
  let acc = 0;
  let bits = 0;
  let i = 0;
  for (const word of words) {
    acc = ((acc << 5) | word) & 0xfff;
    bits += 5;
    if (bits >= 8) {
      bits -= 8;
      out[i++] = (acc >> bits) & 0xff;
    }
  }
  if (bits > 0) out[i] = (acc << (8 - bits)) & 0xff;
  return out;
}

const nodeKey = secp256k1.utils.randomPrivateKey();

function encodeInvoice({ amountMsat, paymentHash, paymentSecret, description, expirySecs, timestamp }) {
  const hrp = HRP_PREFIX[NETWORK] + hrpAmount(amountMsat);
  const data = [
    ...uintWords(timestamp, 7),
    ...tagged(TAG.paymentHash, bech32.toWords(paymentHash)),
    ...tagged(TAG.paymentSecret, bech32.toWords(paymentSecret)),
    ...tagged(TAG.description, bech32.toWords(Buffer.from(description, 'utf8'))),
    ...tagged(TAG.expiry, uintWords(expirySecs)),
    ...tagged(TAG.minFinalCltv, uintWords(MIN_FINAL_CLTV_EXPIRY)),
    ...tagged(TAG.features, FEATURE_WORDS),
  ];
  const digest = createHash('sha256').update(Buffer.from(hrp, 'utf8')).update(packWords(data)).digest();
  const signature = secp256k1.sign(digest, nodeKey);
  const signed = new Uint8Array(65);
  signed.set(signature.toCompactRawBytes());
  signed[64] = signature.recovery;
  return bech32.encode(hrp, [...data, ...bech32.toWords(signed)], false);
}

// The payment hash of an invoice, or null when it does not decode.
function invoicePaymentHash(invoice) {
  let words;
  try {
    ({ words } = bech32.decode(invoice.toLowerCase(), false));
  } catch {
    return null;
  }
  const end = words.length - 104; // the signature: 65 bytes
  for (let at = 7; at + 3 <= end; ) {
    const tag = words[at];
    const length = (words[at + 1] << 5) | words[at + 2];
    const start = at + 3;
    if (tag === TAG.paymentHash && length === 52)
      return Buffer.from(bech32.fromWords(words.slice(start, start + length))).toString('hex');
    at = start + length;
  }
  return null;
}

// ---------------------------------------------------------------------------
// The invoices this node issued, by payment hash, until they expire.

const invoices = new Map(); // paymentHash -> { bolt11, preimage, expiresAt (ms), paid }

function createInvoice({ amountSats, description }) {
  const preimage = randomBytes(32);
  const paymentHash = createHash('sha256').update(preimage).digest();
  const timestamp = Math.floor(Date.now() / 1000);
  const bolt11 = encodeInvoice({
    amountMsat: BigInt(amountSats) * 1000n,
    paymentHash,
    paymentSecret: randomBytes(32),
    description,
    expirySecs: INVOICE_EXPIRY_SECS,
    timestamp,
  });
  const hash = paymentHash.toString('hex');
  invoices.set(hash, {
    bolt11,
    preimage: preimage.toString('hex'),
    expiresAt: (timestamp + INVOICE_EXPIRY_SECS) * 1000,
    paid: false,
  });
  return { bolt11, paymentHash: hash };
}

setInterval(() => {
  const now = Date.now();
  for (const [hash, invoice] of invoices) if (invoice.expiresAt <= now) invoices.delete(hash);
}, 30_000).unref();

// ---------------------------------------------------------------------------
// The Lightning charge method.

const NETWORKS = ['mainnet', 'regtest', 'signet', 'testnet'];
const HEX32 = /^[0-9a-f]{64}$/;

const lightningCharge = Method.from({
  name: 'lightning',
  intent: 'charge',
  schema: {
    credential: {
      payload: z.object({ preimage: z.string().check(z.regex(HEX32)) }),
    },
    // Route options and the request hook speak the flat form; the wire
    // form nests the invoice under methodDetails.
    request: z.pipe(
      z.object({
        amount: z.string().check(z.regex(/^(0|[1-9][0-9]*)$/)),
        currency: z.literal('sat'),
        description: z.optional(z.string()),
        invoice: z.optional(z.string()),
        paymentHash: z.optional(z.string().check(z.regex(HEX32))),
        network: z.enum(NETWORKS),
      }),
      z.transform(({ invoice, paymentHash, network, ...rest }) => ({
        ...rest,
        methodDetails: {
          ...(invoice !== undefined && { invoice }),
          ...(paymentHash !== undefined && { paymentHash }),
          network,
        },
      })),
    ),
  },
});

class InvalidPreimageError extends Errors.VerificationFailedError {
  name = 'InvalidPreimageError';
  title = 'Invalid Preimage';
  type = 'https://paymentauth.org/problems/lightning/invalid-preimage';
}

// mppx's own replay store; a payment hash is redeemed once.
const redeemed = Store.memory({ keyPrefix: 'lightning-charge:' });

function challengedHash(credential) {
  const hash = credential.challenge.request?.methodDetails?.paymentHash;
  return typeof hash === 'string' && HEX32.test(hash) ? hash : null;
}

const lightning = Method.toServer(lightningCharge, {
  defaults: { currency: 'sat', network: NETWORK, description: DESCRIPTION },

  // mppx resolves the route's request on every call, with or without a
  // credential. Without one, that is a fresh invoice. With one naming an
  // open invoice of ours, the same invoice (minting another would only be
  // thrown away); mppx then checks the echoed challenge's HMAC and binding.
  async request({ request, credential }) {
    const echoed = credential?.challenge?.request?.methodDetails;
    if (echoed && typeof echoed.paymentHash === 'string') {
      const open = invoices.get(echoed.paymentHash);
      if (open && open.bolt11 === echoed.invoice && open.expiresAt > Date.now())
        return { ...request, invoice: open.bolt11, paymentHash: echoed.paymentHash };
    }
    const created = createInvoice({ amountSats: request.amount, description: request.description ?? '' });
    return { ...request, invoice: created.bolt11, paymentHash: created.paymentHash };
  },

  // Besides amount and currency (mppx's default), the network is part of
  // what a credential must match.
  stableBinding: (request) => ({
    amount: request.amount,
    currency: request.currency,
    network: request.methodDetails?.network,
  }),

  // Non-mutating: the preimage must hash to the challenge's payment hash.
  async validate({ credential }) {
    const hash = challengedHash(credential);
    if (!hash) throw new Errors.InvalidChallengeError({ id: credential.challenge.id, reason: 'no payment hash' });
    const preimage = Buffer.from(credential.payload.preimage, 'hex');
    if (createHash('sha256').update(preimage).digest('hex') !== hash) throw new InvalidPreimageError({ reason: 'preimage does not match the payment hash' });
    return {
      challenge: credential.challenge,
      credential,
      details: { paymentHash: hash },
      intent: 'charge',
      method: 'lightning',
      request: credential.challenge.request,
    };
  },

  // Settles: redeems the payment hash (atomically, in mppx's store) and
  // returns the receipt. mppx calls validate() just before this.
  async broadcast({ credential }) {
    const hash = challengedHash(credential);
    const expires = invoices.get(hash)?.expiresAt ?? Date.now() + INVOICE_EXPIRY_SECS * 1000;
    if (!(await Store.tryClaim(redeemed, hash, expires)))
      throw new Errors.InvalidChallengeError({ id: credential.challenge.id, reason: 'this payment was already redeemed' });
    invoices.delete(hash);
    return Receipt.from({
      method: 'lightning',
      reference: hash,
      status: 'success',
      timestamp: new Date().toISOString(),
      challengeId: credential.challenge.id,
    });
  },
});

const mppx = Mppx.create({
  methods: [lightning],
  realm: process.env.MPP_REALM ?? 'bench.local',
  secretKey: process.env.MPP_SECRET_KEY ?? randomBytes(32).toString('base64'),
});

const paidRoute = Mppx.toNodeListener(
  mppx.charge({ amount: String(PRICE_SATS), description: DESCRIPTION, scope: SCOPE }),
);

// ---------------------------------------------------------------------------
// HTTP.

const agent = new http.Agent({ keepAlive: true, maxSockets: 256 });

function fetchUpstream() {
  return new Promise((resolve, reject) => {
    const req = http.get(upstream, { agent }, (res) => {
      const chunks = [];
      res.on('data', (chunk) => chunks.push(chunk));
      res.on('end', () => resolve({ status: res.statusCode, type: res.headers['content-type'], body: Buffer.concat(chunks) }));
      res.on('error', reject);
    });
    req.on('error', reject);
  });
}

function readBody(req, limit = 64 * 1024) {
  return new Promise((resolve, reject) => {
    const chunks = [];
    let size = 0;
    req.on('data', (chunk) => {
      size += chunk.length;
      if (size > limit) reject(new Error('body too large'));
      else chunks.push(chunk);
    });
    req.on('end', () => resolve(Buffer.concat(chunks).toString('utf8')));
    req.on('error', reject);
  });
}

function json(res, status, value) {
  const body = JSON.stringify(value);
  res.writeHead(status, { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(body) });
  res.end(body);
}

async function servePaid(req, res) {
  const result = await paidRoute(req, res);
  if (result.status === 402) return; // mppx wrote the challenge
  // Paid: mppx has set Payment-Receipt and Cache-Control on res.
  let answer;
  try {
    answer = await fetchUpstream();
  } catch (error) {
    return json(res, 502, { error: `upstream: ${error.message}` });
  }
  const headers = { 'Content-Length': answer.body.length };
  if (answer.type) headers['Content-Type'] = answer.type;
  res.writeHead(answer.status, headers);
  res.end(answer.body);
}

// The stand-in payer: settles an invoice this node issued, once; paying it
// again answers 409 with the same preimage, as the gateway's sandbox does.
async function sandboxPay(req, res) {
  let invoice;
  try {
    ({ invoice } = JSON.parse(await readBody(req)));
  } catch {
    return json(res, 400, { error: 'body must be JSON {"invoice": "lnbcrt..."}' });
  }
  const hash = typeof invoice === 'string' ? invoicePaymentHash(invoice) : null;
  const issued = hash && invoices.get(hash);
  if (!issued || issued.bolt11 !== invoice.toLowerCase())
    return json(res, 422, { error: 'this payer pays only open invoices its node issued' });
  if (issued.expiresAt <= Date.now()) return json(res, 422, { error: 'invoice expired' });
  const answer = { preimage: issued.preimage, amount_msat: PRICE_SATS * 1000 };
  if (issued.paid) return json(res, 409, answer);
  issued.paid = true;
  return json(res, 200, answer);
}

const server = http.createServer(async (req, res) => {
  try {
    const path = (req.url ?? '/').split('?', 1)[0];
    if (path === ROUTE && (req.method === 'GET' || req.method === 'HEAD')) return await servePaid(req, res);
    if (path === '/sandbox/pay' && req.method === 'POST') return await sandboxPay(req, res);
    if (path === '/healthz') return json(res, 200, { ok: true });
    return json(res, 404, { error: 'not found' });
  } catch (error) {
    console.error(error);
    if (!res.headersSent) json(res, 500, { error: 'internal error' });
    else res.destroy();
  }
});
server.keepAliveTimeout = 65_000;
server.listen(Number(port), '127.0.0.1', () => {
  const node = Buffer.from(secp256k1.getPublicKey(nodeKey, true)).toString('hex');
  console.error(`mppx ${ROUTE} on 127.0.0.1:${port} -> ${upstream.href}; regtest node ${node} (sandbox, TEST MONEY)`);
});
for (const signal of ['SIGINT', 'SIGTERM']) process.on(signal, () => process.exit(0));
