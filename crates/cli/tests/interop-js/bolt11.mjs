// The bolt11 package against gate402's invoices.
//
//   node bolt11.mjs decode BASE_URL PATH
//       GET PATH with Accept-Payment (the Payment challenge first), decode
//       the invoice of its 402 with the library; report it next to the
//       challenge's request.
//   node bolt11.mjs encode PRIVATE_KEY_HEX PAYMENT_HASH_HEX MSAT DESCRIPTION
//       A regtest invoice encoded and signed by the library.

import bolt11 from 'bolt11';

const REGTEST = { bech32: 'bcrt', pubKeyHash: 0x6f, scriptHash: 0xc4, validWitnessVersions: [0, 1] };

function describeInvoice(decoded) {
  const tags = decoded.tagsObject;
  return {
    network: decoded.network?.bech32,
    prefix: decoded.prefix,
    millisatoshis: decoded.millisatoshis,
    paymentHash: tags.payment_hash,
    paymentSecret: tags.payment_secret,
    description: tags.description,
    timestamp: decoded.timestamp,
    expiry: tags.expire_time,
    minFinalCltv: tags.min_final_cltv_expiry,
    payee: decoded.payeeNodeKey,
  };
}

// The Payment challenge's request, decoded (base64url JSON).
function paymentRequest(header) {
  const match = header.match(/\bPayment [^]*?\brequest="([^"]+)"/);
  if (!match) throw new Error(`no Payment challenge in ${header}`);
  return JSON.parse(Buffer.from(match[1], 'base64url').toString('utf8'));
}

const [command, ...args] = process.argv.slice(2);
if (command === 'decode') {
  const [base, path] = args;
  const response = await fetch(`${base}${path}`, { headers: { 'accept-payment': 'lightning/charge' } });
  if (response.status !== 402) throw new Error(`expected 402, got ${response.status}`);
  const request = paymentRequest(response.headers.get('www-authenticate'));
  const invoice = request.methodDetails.invoice;
  console.log(JSON.stringify({ invoice, request, decoded: describeInvoice(bolt11.decode(invoice)) }));
} else if (command === 'encode') {
  const [privateKey, paymentHash, msat, description] = args;
  const unsigned = bolt11.encode({
    network: REGTEST,
    millisatoshis: msat,
    timestamp: Math.floor(Date.now() / 1000),
    tags: [
      { tagName: 'payment_hash', data: paymentHash },
      { tagName: 'payment_secret', data: '11'.repeat(32) },
      { tagName: 'description', data: description },
      { tagName: 'expire_time', data: 3600 },
      { tagName: 'min_final_cltv_expiry', data: 18 },
    ],
  });
  const signed = bolt11.sign(unsigned, privateKey);
  console.log(JSON.stringify({ invoice: signed.paymentRequest, decoded: describeInvoice(bolt11.decode(signed.paymentRequest)) }));
} else {
  console.error('usage: node bolt11.mjs decode BASE PATH | encode PRIVATE_KEY PAYMENT_HASH MSAT DESCRIPTION');
  process.exit(2);
}
