// An MCP server on stdio, written with the official TypeScript SDK: the
// upstream that `gate402 mcp-proxy -- node stdio-server.mjs <SDK dir>`
// charges for. `shout` upper-cases its text; `crash` ends the server;
// `env` answers the names of its environment variables and the value of
// `GIVEN`.
const [sdk] = process.argv.slice(2);
const { Server } = await import(`${sdk}/dist/esm/server/index.js`);
const { StdioServerTransport } = await import(`${sdk}/dist/esm/server/stdio.js`);
const { ListToolsRequestSchema, CallToolRequestSchema } = await import(`${sdk}/dist/esm/types.js`);

const server = new Server({ name: 'shout', version: '1.0.0' }, { capabilities: { tools: {} } });
server.setRequestHandler(ListToolsRequestSchema, async () => ({
  tools: [
    {
      name: 'shout',
      description: 'Upper-cases its text',
      inputSchema: { type: 'object', properties: { text: { type: 'string' } }, required: ['text'] },
    },
    { name: 'crash', description: 'Ends the server', inputSchema: { type: 'object' } },
    { name: 'env', description: 'Its environment', inputSchema: { type: 'object' } },
  ],
}));
server.setRequestHandler(CallToolRequestSchema, async (request) => {
  if (request.params.name === 'crash') {
    process.exit(1);
  }
  if (request.params.name === 'env') {
    const names = Object.keys(process.env).sort().join(',');
    return { content: [{ type: 'text', text: `${names}|${process.env.GIVEN ?? ''}` }] };
  }
  return {
    content: [{ type: 'text', text: String(request.params.arguments?.text ?? '').toUpperCase() }],
  };
});
await server.connect(new StdioServerTransport());
