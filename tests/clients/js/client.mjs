// Drives the query-service with clients from npm that this project did not write, for the
// system tests (tests/tests/subscriptions.rs). Prints one JSON object per line on stdout:
//
//   node client.mjs subscribe '{"url", "query", "variables", "connectionParams", "headers"}'
//     graphql-ws (graphql-transport-ws protocol) over ws: {"connected":true}, then
//     {"next": <execution result>} per message, then {"complete":true} or
//     {"error": {"code", "reason"} | [graphql errors]} and exit code 1.
//   node client.mjs query '{"url", "query", "variables", "headers"}'
//     graphql-request over HTTP: {"data": ...} or {"error": ...}.
import { createClient } from 'graphql-ws';
import { GraphQLClient, ClientError } from 'graphql-request';
import WebSocket from 'ws';

const print = (value) => process.stdout.write(JSON.stringify(value) + '\n');

async function subscribe({ url, query, variables, connectionParams, headers }) {
  // The upgrade request carries the headers (browsers cannot set them; Node clients can).
  class HeaderedWebSocket extends WebSocket {
    constructor(address, protocols) {
      super(address, protocols, { headers: headers ?? {} });
    }
  }
  const client = createClient({
    url,
    webSocketImpl: HeaderedWebSocket,
    connectionParams,
    retryAttempts: 0,
    on: { connected: () => print({ connected: true }) },
  });
  const outcome = await new Promise((resolve) => {
    client.subscribe(
      { query, variables },
      {
        next: (result) => print({ next: result }),
        error: (error) => {
          if (error && typeof error === 'object' && 'code' in error && 'reason' in error) {
            print({ error: { code: error.code, reason: error.reason } });
          } else if (Array.isArray(error)) {
            print({ error });
          } else {
            print({ error: String(error) });
          }
          resolve(1);
        },
        complete: () => {
          print({ complete: true });
          resolve(0);
        },
      },
    );
  });
  await client.dispose();
  return outcome;
}

async function query({ url, query, variables, headers }) {
  const client = new GraphQLClient(url, { headers: headers ?? {} });
  try {
    print({ data: await client.request(query, variables ?? {}) });
    return 0;
  } catch (error) {
    if (error instanceof ClientError) {
      print({ error: error.response.errors ?? error.response });
    } else {
      print({ error: String(error) });
    }
    return 1;
  }
}

const [mode, options] = process.argv.slice(2);
const modes = { subscribe, query };
if (!modes[mode] || !options) {
  process.stderr.write('usage: node client.mjs subscribe|query <json options>\n');
  process.exit(2);
}
process.exitCode = await modes[mode](JSON.parse(options));
