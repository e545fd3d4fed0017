// The OpenID provider the e2e tests run: panva's certified `oidc-provider`, configured for the
// bearer-token tests (tests/e2e/harness/oidc.rs starts it). Only test wiring lives here.
//
// Listens on 127.0.0.1 on an ephemeral port and prints `listening PORT` once ready; the issuer is
// http://127.0.0.1:PORT. Clients (client_credentials, secret = id + "-secret"):
//   gw     RS256 JWT access tokens, 300 s     gw-ps  PS256     gw-es  ES256     gw-ed  EdDSA
//   short  RS256 JWT access tokens that live 2 s
// Resources (the `resource` parameter, RFC 8707):
//   https://api.ringway.test          JWT access token, aud = the resource
//   https://api.ringway.test/opaque   opaque access token (introspect it), aud https://api.ringway.test
//   https://other.ringway.test        JWT access token for another audience
// Browser flow (authorization code + PKCE, dev login and consent pages: any login, any password):
//   web    secret web-secret, redirect_uri $RINGWAY_WEB/callback, post-logout $RINGWAY_WEB/bye,
//          scopes openid email, refresh tokens, opaque access tokens that live 3 s, userinfo
//          {sub, email: sub@ringway.test}. RINGWAY_WEB is the gateway's base URL (env).
// Test-only routes outside the provider:
//   POST /test/rotate   new signing keys (each alg) go first in the JWKS; the old ones stay listed
//   POST /test/drop-old the old keys leave the JWKS
//   POST /test/hold-introspection  the next introspection request waits until /test/release
//   POST /test/release             answers the held introspection
//   GET  /test/counts   {"jwks": n, "introspect": n, "discovery": n, "token": n}
import http from 'node:http';
import crypto from 'node:crypto';
import Provider from 'oidc-provider';

const API = 'https://api.ringway.test';
const OPAQUE = 'https://api.ringway.test/opaque';
const OTHER = 'https://other.ringway.test';
const ALG_OF = { gw: 'RS256', short: 'RS256', 'gw-ps': 'PS256', 'gw-es': 'ES256', 'gw-ed': 'EdDSA' };

const WEB = process.env.RINGWAY_WEB || 'http://127.0.0.1:1';

let generation = 0;
function keys() {
  generation += 1;
  const g = generation;
  const jwk = (type, opts, alg) => {
    const { privateKey } = crypto.generateKeyPairSync(type, opts);
    return { ...privateKey.export({ format: 'jwk' }), kid: `${alg.toLowerCase()}-${g}`, use: 'sig', alg };
  };
  return [
    jwk('rsa', { modulusLength: 2048 }, 'RS256'),
    jwk('rsa', { modulusLength: 2048 }, 'PS256'),
    jwk('ec', { namedCurve: 'P-256' }, 'ES256'),
    jwk('ed25519', {}, 'EdDSA'),
  ];
}

const counts = { jwks: 0, introspect: 0, discovery: 0, token: 0 };
const server = http.createServer();
await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
const { port } = server.address();
const issuer = `http://127.0.0.1:${port}`;

function provider(jwks) {
  const clients = Object.keys(ALG_OF).map((id) => ({
    client_id: id,
    client_secret: `${id}-secret`,
    grant_types: ['client_credentials'],
    redirect_uris: [],
    response_types: [],
    scope: 'read write admin',
  }));
  clients.push({
    client_id: 'web',
    client_secret: 'web-secret',
    grant_types: ['authorization_code', 'refresh_token'],
    response_types: ['code'],
    redirect_uris: [`${WEB}/callback`],
    post_logout_redirect_uris: [`${WEB}/bye`],
    scope: 'openid email',
  });
  const p = new Provider(issuer, {
    clients,
    claims: { openid: ['sub'], email: ['email'] },
    findAccount: (ctx, id) => ({
      accountId: id,
      claims: () => ({ sub: id, email: `${id}@ringway.test` }),
    }),
    issueRefreshToken: (ctx, client) => client.grantTypeAllowed('refresh_token'),
    cookies: { keys: ['ringway-test-only'] },
    jwks: { keys: jwks },
    scopes: ['read', 'write', 'admin'],
    features: {
      devInteractions: { enabled: true },
      clientCredentials: { enabled: true },
      introspection: { enabled: true },
      resourceIndicators: {
        enabled: true,
        // The browser client's access token is for userinfo (no resource), as a plain RP's is.
        defaultResource: (ctx, client) => (client && client.clientId === 'web' ? undefined : API),
        useGrantedResource: () => true,
        getResourceServerInfo: (ctx, resource, client) => {
          if (![API, OPAQUE, OTHER].includes(resource)) {
            throw new Error(`unknown resource ${resource}`);
          }
          const opaque = resource === OPAQUE;
          return {
            scope: 'read write admin',
            audience: opaque ? API : resource,
            accessTokenFormat: opaque ? 'opaque' : 'jwt',
            jwt: { sign: { alg: ALG_OF[client.clientId] || 'RS256' } },
          };
        },
      },
    },
    ttl: {
      AccessToken: (ctx, token, client) => (client && client.clientId === 'web' ? 3 : 3600),
      ClientCredentials: (ctx, token, client) => (client.clientId === 'short' ? 2 : 300),
    },
  });
  p.on('server_error', (ctx, err) => console.error('server_error', err));
  return p;
}

let hold = false;
const held = [];

let current = keys();
let old = [];
let handler = provider(current).callback();

server.on('request', (req, res) => {
  const path = req.url.split('?')[0];
  if (path === '/test/rotate' && req.method === 'POST') {
    old = current.concat(old);
    current = keys();
    handler = provider(current.concat(old)).callback();
    res.end(JSON.stringify({ kids: current.map((k) => k.kid) }));
    return;
  }
  if (path === '/test/drop-old' && req.method === 'POST') {
    old = [];
    handler = provider(current).callback();
    res.end('{}');
    return;
  }
  if (path === '/test/hold-introspection' && req.method === 'POST') {
    hold = true;
    res.end('{}');
    return;
  }
  if (path === '/test/release' && req.method === 'POST') {
    hold = false;
    held.splice(0).forEach((go) => go());
    res.end('{}');
    return;
  }
  if (path === '/test/counts') {
    res.setHeader('content-type', 'application/json');
    res.end(JSON.stringify(counts));
    return;
  }
  if (path === '/jwks') counts.jwks += 1;
  else if (path === '/token/introspection') {
    counts.introspect += 1;
    if (hold) {
      hold = false;
      const h = handler;
      held.push(() => h(req, res));
      return;
    }
  }
  else if (path === '/.well-known/openid-configuration') counts.discovery += 1;
  else if (path === '/token') counts.token += 1;
  handler(req, res);
});

console.log(`listening ${port}`);
