// mppx 0.11.0's client paying a gate402 402. mppx ships no Lightning
// method, so `lightning`/`charge` is defined here with its Method API: the
// credential pays the challenge's invoice through the gateway's sandbox
// payer and carries {preimage}. Everything else (finding the Payment
// challenge among the others, serializing the credential, the retry) is
// mppx's own.
//
//   node mppx-client.mjs BASE_URL PATH [always|never]
//
// The last argument is mppx's acceptPaymentPolicy: `always` (its default
// outside a browser) sends Accept-Payment, so the gateway puts its Payment
// challenge first; `never` leaves it out, so mppx must find the Payment
// challenge behind the L402 one. Prints one JSON report: the paid
// response, each request and answer on the wire, the challenge it
// answered and mppx's reading of the Payment-Receipt.

import { Credential, Method, Receipt, z } from 'mppx';
import { Mppx } from 'mppx/client';

import { describe, sandboxPay, sha256Hex } from './sandbox.mjs';

const [base, path, acceptPaymentPolicy = 'always'] = process.argv.slice(2);

const lightningCharge = Method.from({
  name: 'lightning',
  intent: 'charge',
  schema: {
    credential: { payload: z.object({ preimage: z.string() }) },
    request: z.object({
      amount: z.string(),
      currency: z.string(),
      description: z.optional(z.string()),
      methodDetails: z.object({ invoice: z.string(), paymentHash: z.string(), network: z.string() }),
    }),
  },
});

const challenges = [];
const lightning = Method.toClient(lightningCharge, {
  async createCredential({ challenge }) {
    challenges.push(challenge);
    const { invoice, paymentHash } = challenge.request.methodDetails;
    const preimage = await sandboxPay(base, invoice);
    if (sha256Hex(preimage) !== paymentHash) throw new Error('the preimage does not hash to the challenge paymentHash');
    return Credential.serialize(Credential.from({ challenge, payload: { preimage } }));
  },
});

const exchanges = [];
async function recordingFetch(input, init) {
  const request = new Request(input, init);
  const response = await fetch(request);
  exchanges.push({
    acceptPayment: request.headers.get('accept-payment'),
    authorization: request.headers.get('authorization')?.split(' ', 1)[0] ?? null,
    status: response.status,
    wwwAuthenticate: response.headers.get('www-authenticate'),
  });
  return response;
}

const mppx = Mppx.create({ methods: [lightning], polyfill: false, fetch: recordingFetch, acceptPaymentPolicy });
const response = await mppx.fetch(`${base}${path}`);
const report = await describe(response);
report.exchanges = exchanges;
report.challenges = challenges;
report.receipt = response.headers.has('payment-receipt') ? Receipt.fromResponse(response) : null;
console.log(JSON.stringify(report));
