// The official TypeScript MCP client (@modelcontextprotocol/client 2.4.0), pinned to the
// 2026-07-28 revision: lists the tools of a server and calls echo and search_users.
// Usage: node list_and_call.mjs URL TOKEN; prints one JSON line with what it got.
import { Client, StreamableHTTPClientTransport } from "@modelcontextprotocol/client";

const [url, token] = process.argv.slice(2);
const transport = new StreamableHTTPClientTransport(new URL(url), {
  requestInit: { headers: { Authorization: `Bearer ${token}` } },
});
const client = new Client(
  { name: "qmcp-ts-test", version: "1.0.0" },
  { versionNegotiation: { mode: { pin: "2026-07-28" } } },
);
await client.connect(transport);
const listed = await client.listTools();
const echoed = await client.callTool({ name: "echo", arguments: { message: "from node" } });
const found = await client.callTool({ name: "search_users", arguments: { query: "Nodeclient" } });
console.log(
  JSON.stringify({
    protocolVersion: transport.protocolVersion ?? null,
    sessionId: transport.sessionId ?? null,
    tools: listed.tools.map((t) => t.name),
    echo: echoed.content.map((c) => c.text).join(""),
    found: found.structuredContent,
    isError: [echoed.isError ?? false, found.isError ?? false],
  }),
);
await client.close();
