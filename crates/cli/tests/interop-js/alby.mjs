// Alby's @getalby/lightning-tools 9.0.1 paying gate402's 402s with each of
// its helpers: fetchWithL402, fetchWithMpp (saying it speaks MPP with
// Accept-Payment, as an MPP client does), fetchWithX402, and the
// dispatching fetch402 (also on a route that offers x402 alone). The
// wallet is the shape the package's types ask for, `payInvoice({invoice})
// -> {preimage}`, backed by the gateway's sandbox payer.
//
//   node alby.mjs BASE_URL PATH X402_ONLY_PATH
//
// Prints one JSON report, one entry per helper.

import { fetch402, fetchWithL402, fetchWithMpp, fetchWithX402 } from '@getalby/lightning-tools/402';

import { describe, sandboxPay } from './sandbox.mjs';

const [base, path, x402Path] = process.argv.slice(2);

function wallet(paid) {
  return {
    async payInvoice({ invoice }) {
      paid.push(invoice);
      return { preimage: await sandboxPay(base, invoice) };
    },
  };
}

async function run(helper, init, at = path) {
  const paid = [];
  try {
    const response = await helper(`${base}${at}`, init, { wallet: wallet(paid) });
    const report = await describe(response);
    report.paid = paid;
    report.credentialHeader = response.payment?.credentials?.header ?? null;
    report.credentialScheme = response.payment?.credentials?.value?.split(' ', 1)[0] ?? null;
    report.credential = response.payment?.credentials ?? null;
    return report;
  } catch (error) {
    return { error: String(error?.stack ?? error), cause: String(error?.cause ?? ''), paid };
  }
}

const report = {
  fetchWithL402: await run(fetchWithL402, {}),
  fetchWithMpp: await run(fetchWithMpp, { headers: { 'accept-payment': 'lightning/charge' } }),
  fetch402: await run(fetch402, {}),
  fetch402Mpp: await run(fetch402, { headers: { 'accept-payment': 'lightning/charge' } }),
  fetchWithX402: await run(fetchWithX402, {}),
  fetch402X402: await run(fetch402, {}, x402Path),
};
console.log(JSON.stringify(report));
