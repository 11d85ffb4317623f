// A client written against the official TypeScript MCP SDK: lists the
// tools of a gate402 gateway, meets -32042, pays the invoice with the
// sandbox payer, calls again with the credential in _meta and reads the
// receipt; then the same through create_payment and paymentId. Prints one
// JSON report for the Rust test to check.
//
// usage: node client.mjs <gateway base URL> <SDK directory>
const [base, sdk] = process.argv.slice(2);
const { Client } = await import(`${sdk}/dist/esm/client/index.js`);
const { StreamableHTTPClientTransport } = await import(`${sdk}/dist/esm/client/streamableHttp.js`);
const { McpError } = await import(`${sdk}/dist/esm/types.js`);

const CREDENTIAL = 'org.paymentauth/credential';
const RECEIPT = 'org.paymentauth/receipt';

async function sandboxPay(invoice) {
  const response = await fetch(`${base}/sandbox/pay`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ invoice }),
  });
  if (!response.ok) throw new Error(`sandbox pay: ${response.status} ${await response.text()}`);
  return (await response.json()).preimage;
}

async function expectError(promise) {
  try {
    await promise;
  } catch (e) {
    if (!(e instanceof McpError)) throw e;
    return { code: e.code, data: e.data };
  }
  throw new Error('the call succeeded unpaid');
}

const client = new Client({ name: 'gate402-ts-test', version: '1.0.0' });
await client.connect(new StreamableHTTPClientTransport(new URL(`${base}/mcp`)));
const report = {};
report.tools = (await client.listTools()).tools.map((t) => ({
  name: t.name,
  price: t._meta?.['org.paymentauth/price']?.amount ?? null,
}));

// The payment transport.
const unpaid = await expectError(client.callTool({ name: 'weather', arguments: { city: 'Oslo' } }));
report.unpaid = { code: unpaid.code, httpStatus: unpaid.data.httpStatus };
const challenge = unpaid.data.challenges[0];
const preimage = await sandboxPay(challenge.request.methodDetails.invoice);
const credential = { challenge, payload: { preimage } };
const paid = await client.callTool({
  name: 'weather',
  arguments: { city: 'Oslo' },
  _meta: { [CREDENTIAL]: credential },
});
report.paid = { content: paid.content[0].text, receipt: paid._meta?.[RECEIPT], challengeId: challenge.id };
const replay = await expectError(
  client.callTool({ name: 'weather', arguments: { city: 'Oslo' }, _meta: { [CREDENTIAL]: credential } }),
);
report.replay = { code: replay.code, freshChallenge: replay.data.challenges[0].id !== challenge.id };

// A credential for one tool on another.
const second = await expectError(client.callTool({ name: 'weather', arguments: { city: 'Rome' } }));
const secondPreimage = await sandboxPay(second.data.challenges[0].request.methodDetails.invoice);
const crossTool = await expectError(
  client.callTool({
    name: 'translate',
    arguments: { text: 'hello', to: 'fr' },
    _meta: { [CREDENTIAL]: { challenge: second.data.challenges[0], payload: { preimage: secondPreimage } } },
  }),
);
report.crossTool = { code: crossTool.code };

// The paymentId flow.
const created = await client.callTool({ name: 'create_payment', arguments: { tool: 'weather' } });
const payment = created.structuredContent;
await sandboxPay(payment.invoice);
const byId = await client.callTool({ name: 'weather', arguments: { city: 'Lima', paymentId: payment.paymentId } });
report.paymentId = { amountSats: payment.amountSats, content: byId.content[0].text, receipt: byId._meta?.[RECEIPT] };
const idReplay = await expectError(
  client.callTool({ name: 'weather', arguments: { city: 'Lima', paymentId: payment.paymentId } }),
);
const idOtherTool = await expectError(
  client.callTool({ name: 'translate', arguments: { text: 'x', to: 'fr', paymentId: payment.paymentId } }),
);
report.paymentIdReplay = { code: idReplay.code };
report.paymentIdOtherTool = { code: idOtherTool.code };

await client.close();
console.log(JSON.stringify(report));
