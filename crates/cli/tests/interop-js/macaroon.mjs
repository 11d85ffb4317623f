// js-macaroon (the npm package `macaroon`, by the go-macaroon authors)
// against gate402's L402 macaroons.
//
//   node macaroon.mjs decode BASE_URL PATH
//       GET PATH for its 402, take the macaroon of the L402 challenge and
//       decode it with the library: location, identifier, caveats,
//       signature, plus the challenge's invoice.
//   node macaroon.mjs verify MACAROON_B64 ROOT_KEY_HEX
//       The library's own signature check (go-macaroon's key derivation and
//       HMAC chain), first-party caveats accepted as they are.
//   node macaroon.mjs mint ROOT_KEY_HEX IDENTIFIER_HEX LOCATION CAVEAT...
//       A macaroon made by the library, in the V2 binary format, base64.

import macaroon from 'macaroon';

const hex = (bytes) => Buffer.from(bytes).toString('hex');
const utf8 = (bytes) => Buffer.from(bytes).toString('utf8');

function describeMacaroon(m) {
  return {
    location: m.location,
    identifier: hex(m.identifier),
    caveats: m.caveats.map((c) => utf8(c.identifier)),
    signature: hex(m.signature),
  };
}

// The L402 challenge's auth-params, from the value fetch joined.
function l402Params(header) {
  const start = header.search(/\bL402 /);
  if (start < 0) throw new Error(`no L402 challenge in ${header}`);
  const params = {};
  for (const [, key, value] of header.slice(start + 5).matchAll(/(\w+)="([^"]*)"/g)) {
    if (key in params) break; // the next challenge
    params[key] = value;
  }
  return params;
}

const [command, ...args] = process.argv.slice(2);
if (command === 'decode') {
  const [base, path] = args;
  const response = await fetch(`${base}${path}`);
  if (response.status !== 402) throw new Error(`expected 402, got ${response.status}`);
  const params = l402Params(response.headers.get('www-authenticate'));
  const m = macaroon.importMacaroon(params.macaroon);
  console.log(JSON.stringify({ ...describeMacaroon(m), macaroon: params.macaroon, invoice: params.invoice }));
} else if (command === 'verify') {
  const [b64, rootKey] = args;
  const m = macaroon.importMacaroon(b64);
  m.verify(Buffer.from(rootKey, 'hex'), () => null);
  console.log(JSON.stringify({ verified: true, ...describeMacaroon(m) }));
} else if (command === 'mint') {
  const [rootKey, identifier, location, ...caveats] = args;
  const m = macaroon.newMacaroon({
    identifier: Buffer.from(identifier, 'hex'),
    location,
    rootKey: Buffer.from(rootKey, 'hex'),
    version: 2,
  });
  for (const caveat of caveats) m.addFirstPartyCaveat(caveat);
  const b64 = macaroon.bytesToBase64(m.exportBinary());
  console.log(JSON.stringify({ macaroon: b64, ...describeMacaroon(m) }));
} else {
  console.error('usage: node macaroon.mjs decode BASE PATH | verify B64 ROOT_KEY | mint ROOT_KEY ID LOCATION CAVEAT...');
  process.exit(2);
}
