// The sandbox payer of a gate402 gateway (`POST /sandbox/pay`) as the
// wallet of every JavaScript peer here: test money, settled at once.

import { createHash } from 'node:crypto';

/** Pays `invoice` through the sandbox at `base`; the preimage, in hex. */
export async function sandboxPay(base, invoice) {
  const response = await fetch(`${base}/sandbox/pay`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ invoice }),
  });
  const text = await response.text();
  if (!response.ok) throw new Error(`POST ${base}/sandbox/pay: ${response.status} ${text}`);
  return JSON.parse(text).preimage;
}

export function sha256Hex(hex) {
  return createHash('sha256').update(Buffer.from(hex, 'hex')).digest('hex');
}

/** Everything a response carried, for the Rust side to assert on. */
export async function describe(response) {
  return {
    status: response.status,
    headers: Object.fromEntries(response.headers),
    body: await response.text(),
  };
}
