// An mppx 0.11.0 server selling one route over the Payment scheme with a
// Lightning charge method, for `gate402 get` to pay.
//
//   node mppx-server.mjs PORT
//
// GET /weather         402 with mppx's challenge for a fresh regtest invoice
//                      (7 sat); with a valid credential, 200, a JSON body and
//                      mppx's Payment-Receipt.
// POST /sandbox/pay    {"invoice"} -> {"preimage", "amount_msat"}: this
//                      server's stand-in payer, the same endpoint a gate402
//                      sandbox gateway mounts, so `gate402 get` with no wallet
//                      configured (the sandbox payer of the origin that sent
//                      the 402) pays these invoices.
//
// The method is scripts/bench.d/mppx/server.mjs's (draft-lightning-charge:
// request {amount, currency "sat", description, methodDetails {invoice,
// paymentHash, network}}, payload {preimage}, receipt reference = payment
// hash); challenge ids, parsing, expiry, binding, problems, receipts and
// the replay store are mppx's. Invoices are signed by the bolt11 package
// with a throwaway key. TEST MONEY: nothing moves.

import { createHash, randomBytes } from 'node:crypto';
import * as http from 'node:http';

import bolt11 from 'bolt11';
import { Errors, Method, Receipt, Store, z } from 'mppx';
import { Mppx } from 'mppx/server/core';

const [port] = process.argv.slice(2);
const ROUTE = '/weather';
const PRICE_SATS = 7;
const DESCRIPTION = 'Weather from mppx';
const NETWORK = 'regtest';
const INVOICE_EXPIRY_SECS = 600;
const BODY = JSON.stringify({ city: 'Oslo', sky: 'clear', served_by: 'mppx' });
const REGTEST = { bech32: 'bcrt', pubKeyHash: 0x6f, scriptHash: 0xc4, validWitnessVersions: [0, 1] };

const nodeKey = randomBytes(32).toString('hex');
const invoices = new Map(); // paymentHash -> { bolt11, preimage, expiresAt (ms), paid }

function createInvoice({ amountSats, description }) {
  const preimage = randomBytes(32);
  const paymentHash = createHash('sha256').update(preimage).digest('hex');
  const timestamp = Math.floor(Date.now() / 1000);
  const unsigned = bolt11.encode({
    network: REGTEST,
    satoshis: Number(amountSats),
    timestamp,
    tags: [
      { tagName: 'payment_hash', data: paymentHash },
      { tagName: 'payment_secret', data: randomBytes(32).toString('hex') },
      { tagName: 'description', data: description },
      { tagName: 'expire_time', data: INVOICE_EXPIRY_SECS },
      { tagName: 'min_final_cltv_expiry', data: 18 },
    ],
  });
  const { paymentRequest } = bolt11.sign(unsigned, nodeKey);
  invoices.set(paymentHash, {
    bolt11: paymentRequest,
    preimage: preimage.toString('hex'),
    expiresAt: (timestamp + INVOICE_EXPIRY_SECS) * 1000,
    paid: false,
  });
  return { bolt11: paymentRequest, paymentHash };
}

const HEX32 = /^[0-9a-f]{64}$/;

const lightningCharge = Method.from({
  name: 'lightning',
  intent: 'charge',
  schema: {
    credential: { payload: z.object({ preimage: z.string().check(z.regex(HEX32)) }) },
    // Route options speak the flat form; the wire form nests the invoice
    // under methodDetails.
    request: z.pipe(
      z.object({
        amount: z.string().check(z.regex(/^(0|[1-9][0-9]*)$/)),
        currency: z.literal('sat'),
        description: z.optional(z.string()),
        invoice: z.optional(z.string()),
        paymentHash: z.optional(z.string().check(z.regex(HEX32))),
        network: z.enum(['mainnet', 'regtest', 'signet']),
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

const redeemed = Store.memory({ keyPrefix: 'lightning-charge:' });

function challengedHash(credential) {
  const hash = credential.challenge.request?.methodDetails?.paymentHash;
  return typeof hash === 'string' && HEX32.test(hash) ? hash : null;
}

const lightning = Method.toServer(lightningCharge, {
  defaults: { currency: 'sat', network: NETWORK, description: DESCRIPTION },

  // Without a credential, a fresh invoice; with one naming an open invoice
  // of ours, that invoice again (mppx re-resolves the request to bind it).
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

  stableBinding: (request) => ({
    amount: request.amount,
    currency: request.currency,
    network: request.methodDetails?.network,
  }),

  async validate({ credential }) {
    const hash = challengedHash(credential);
    if (!hash) throw new Errors.InvalidChallengeError({ id: credential.challenge.id, reason: 'no payment hash' });
    const preimage = Buffer.from(credential.payload.preimage, 'hex');
    if (createHash('sha256').update(preimage).digest('hex') !== hash)
      throw new InvalidPreimageError({ reason: 'preimage does not match the payment hash' });
    return {
      challenge: credential.challenge,
      credential,
      details: { paymentHash: hash },
      intent: 'charge',
      method: 'lightning',
      request: credential.challenge.request,
    };
  },

  async broadcast({ credential }) {
    const hash = challengedHash(credential);
    const expires = invoices.get(hash)?.expiresAt ?? Date.now() + INVOICE_EXPIRY_SECS * 1000;
    if (!(await Store.tryClaim(redeemed, hash, expires)))
      throw new Errors.InvalidChallengeError({ id: credential.challenge.id, reason: 'this payment was already redeemed' });
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
  realm: 'mppx.test',
  secretKey: randomBytes(32).toString('base64'),
});
const paidRoute = Mppx.toNodeListener(mppx.charge({ amount: String(PRICE_SATS), description: DESCRIPTION, scope: 'weather' }));

function readBody(req) {
  return new Promise((resolve, reject) => {
    const chunks = [];
    req.on('data', (chunk) => chunks.push(chunk));
    req.on('end', () => resolve(Buffer.concat(chunks).toString('utf8')));
    req.on('error', reject);
  });
}

function json(res, status, value) {
  const body = typeof value === 'string' ? value : JSON.stringify(value);
  res.writeHead(status, { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(body) });
  res.end(body);
}

// Settles an invoice this server issued, once; paying it again answers 409
// with the same preimage, as the gateway's sandbox does.
async function sandboxPay(req, res) {
  let invoice;
  try {
    ({ invoice } = JSON.parse(await readBody(req)));
  } catch {
    return json(res, 400, { detail: 'body must be JSON {"invoice": "lnbcrt..."}' });
  }
  let hash = null;
  try {
    hash = bolt11.decode(invoice).tagsObject.payment_hash;
  } catch {}
  const issued = hash && invoices.get(hash);
  if (!issued || issued.bolt11 !== invoice) return json(res, 403, { detail: 'this payer pays only invoices its server issued' });
  if (issued.expiresAt <= Date.now()) return json(res, 410, { detail: 'invoice expired' });
  const answer = { preimage: issued.preimage, amount_msat: PRICE_SATS * 1000 };
  if (issued.paid) return json(res, 409, answer);
  issued.paid = true;
  return json(res, 200, answer);
}

const server = http.createServer(async (req, res) => {
  try {
    const path = (req.url ?? '/').split('?', 1)[0];
    if (path === ROUTE && req.method === 'GET') {
      const result = await paidRoute(req, res);
      if (result.status === 402) return; // mppx wrote the challenge
      return json(res, 200, BODY); // mppx set Payment-Receipt on res
    }
    if (path === '/sandbox/pay' && req.method === 'POST') return await sandboxPay(req, res);
    if (path === '/healthz') return json(res, 200, { ok: true });
    return json(res, 404, { detail: 'not found' });
  } catch (error) {
    console.error(error);
    if (!res.headersSent) json(res, 500, { detail: 'internal error' });
    else res.destroy();
  }
});
server.listen(Number(port), '127.0.0.1', () => console.error(`mppx on 127.0.0.1:${port}`));
for (const signal of ['SIGINT', 'SIGTERM']) process.on(signal, () => process.exit(0));
