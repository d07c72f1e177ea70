// node-oidc-provider 9 as the benchmark's peer at the token endpoint.
//
// client_credentials only, ES256-signed JWT access tokens (resourceIndicators with a default
// resource whose accessTokenFormat is 'jwt'), the built-in in-memory adapter, clients that
// authenticate with client_secret_post. Started by bench/run.py --peer; not for any real use.
//
// Environment:
//   PEER_PORT          port on 127.0.0.1 (required)
//   PEER_CLIENTS_FILE  JSON file: [{"client_id": "...", "client_secret": "..."}, ...] (required)
//   PEER_WORKERS       number of processes (node:cluster), default 1
//
// With more than one worker the primary generates the signing key once and hands it to every
// worker, so that all of them sign with the same key (the JWKS is then the same everywhere).

import cluster from 'node:cluster';
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';

import Provider from 'oidc-provider';

const HOST = '127.0.0.1';
const RESOURCE = 'urn:keyservice-bench:api';

function fail(message) {
  console.error(`peer: ${message}`);
  process.exit(2);
}

const port = Number.parseInt(process.env.PEER_PORT ?? '', 10);
if (!Number.isInteger(port) || port <= 0 || port > 65535) fail('PEER_PORT must be a port number');
const clientsFile = process.env.PEER_CLIENTS_FILE;
if (!clientsFile) fail('PEER_CLIENTS_FILE is required');
const workers = Number.parseInt(process.env.PEER_WORKERS ?? '1', 10);
if (!Number.isInteger(workers) || workers < 1 || workers > 64) fail('PEER_WORKERS must be 1..64');

function signingJwk() {
  const { privateKey } = crypto.generateKeyPairSync('ec', { namedCurve: 'P-256' });
  const jwk = privateKey.export({ format: 'jwk' });
  return { ...jwk, alg: 'ES256', use: 'sig', kid: crypto.randomUUID() };
}

function serve(jwk) {
  const entries = JSON.parse(fs.readFileSync(clientsFile, 'utf8'));
  const clients = entries.map(({ client_id: clientId, client_secret: clientSecret }) => ({
    client_id: clientId,
    client_secret: clientSecret,
    grant_types: ['client_credentials'],
    response_types: [],
    redirect_uris: [],
    token_endpoint_auth_method: 'client_secret_post',
  }));

  const provider = new Provider(`http://${HOST}:${port}`, {
    clients,
    jwks: { keys: [jwk] },
    clientDefaults: {
      id_token_signed_response_alg: 'ES256',
      grant_types: ['client_credentials'],
      response_types: [],
    },
    enabledJWA: { idTokenSigningAlgValues: ['ES256'] },
    features: {
      devInteractions: { enabled: false },
      clientCredentials: { enabled: true },
      resourceIndicators: {
        enabled: true,
        defaultResource: () => RESOURCE,
        useGrantedResource: () => true,
        getResourceServerInfo: () => ({
          scope: 'bench:read',
          audience: RESOURCE,
          accessTokenTTL: 7200,
          accessTokenFormat: 'jwt',
          jwt: { sign: { alg: 'ES256' } },
        }),
      },
    },
    ttl: { ClientCredentials: 7200 },
  });
  // Server errors are not expected under this load; say so loudly if one happens.
  provider.on('server_error', (_ctx, err) => console.error('peer: server_error', err));

  const server = provider.listen(port, HOST);
  server.keepAliveTimeout = 75_000;
  server.on('listening', () => console.error(`peer: pid ${process.pid} listening on ${HOST}:${port}`));
}

if (workers > 1 && cluster.isPrimary) {
  const jwk = signingJwk();
  for (let i = 0; i < workers; i += 1) {
    cluster.fork({ PEER_SIGNING_JWK: JSON.stringify(jwk) });
  }
  cluster.on('exit', (worker, code, signal) => {
    console.error(`peer: worker ${worker.process.pid} exited (${signal ?? code})`);
  });
  const stop = () => {
    for (const worker of Object.values(cluster.workers ?? {})) worker?.process.kill('SIGTERM');
    process.exit(0);
  };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
} else {
  const inherited = process.env.PEER_SIGNING_JWK;
  serve(inherited ? JSON.parse(inherited) : signingJwk());
}
