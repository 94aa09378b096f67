// A real, certified authorization server for freshen's tests: panva's
// oidc-provider (OpenID Certified), configured as the providers freshen
// meets are: refresh-token rotation with reuse detection, PKCE, the device
// flow, revocation, DPoP with required nonces. Users do not exist here: every login interaction
// is finished at once for the account "user", with the scopes asked for,
// so a test's "browser" only follows redirects and submits the device form.
//
// Usage: node server.mjs PORT [ACCESS_TTL_SECONDS]; prints "listening URL".
// The issuer is http://127.0.0.1:PORT, so PORT must be fixed (not 0).
// Endpoints: /auth, /token, /token/revocation, /device/auth, /device, /me.
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import Provider from 'oidc-provider';

const port = Number(process.argv[2] ?? 0);
const accessTtl = Number(process.argv[3] ?? 60);

// Signing keys are made in a child process with a timeout: exporting a key
// generated inside the server process once hung node 20 (a GC deadlock).
const keygen = `
  const { generateKeyPairSync } = require('node:crypto');
  const { privateKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
  const jwk = privateKey.export({ format: 'jwk' });
  process.stdout.write(JSON.stringify({ keys: [{ ...jwk, alg: 'ES256', use: 'sig', kid: 'k1' }] }));`;
const jwks = JSON.parse(execFileSync(process.execPath, ['-e', keygen], { timeout: 20_000 }));

const provider = new Provider(`http://127.0.0.1:${port}`, {
  jwks,
  clients: [
    {
      client_id: 'freshen-test',
      token_endpoint_auth_method: 'none',
      application_type: 'native',
      redirect_uris: ['http://127.0.0.1/callback'],
      grant_types: ['authorization_code', 'refresh_token', 'urn:ietf:params:oauth:grant-type:device_code'],
      response_types: ['code'],
      id_token_signed_response_alg: 'ES256',
    },
  ],
  pkce: { required: () => true },
  scopes: ['openid', 'offline_access'],
  rotateRefreshToken: true,
  issueRefreshToken: async () => true,
  ttl: { AccessToken: accessTtl, RefreshToken: 3600, DeviceCode: 600, Grant: 3600, Interaction: 600, Session: 3600 },
  findAccount: async (_ctx, accountId) => ({ accountId, claims: async () => ({ sub: accountId }) }),
  interactions: { url: (_ctx, interaction) => `/interaction/${interaction.uid}` },
  features: {
    devInteractions: { enabled: false },
    revocation: { enabled: true },
    // Every DPoP proof must carry the server's nonce (RFC 9449 §8, §9): the
    // first proof of a client is always challenged, at the token endpoint
    // and at the userinfo endpoint alike, and nonces rotate.
    dPoP: { enabled: true, nonceSecret: randomBytes(32), requireNonce: () => true },
    deviceFlow: {
      enabled: true,
      // Minimal forms a test can submit: every field is a hidden input.
      userCodeInputSource: async (ctx, form) => {
        ctx.body = `<!doctype html>${form}`;
      },
      userCodeConfirmSource: async (ctx, form) => {
        ctx.body = `<!doctype html>${form}`;
      },
      successSource: async (ctx) => {
        ctx.body = '<!doctype html><p>device login approved</p>';
      },
    },
  },
});
provider.proxy = false;

// Every interaction is finished at once: log in "user", grant what is asked.
provider.use(async (ctx, next) => {
  const match = /^\/interaction\/([^/]+)$/.exec(ctx.path);
  if (!match) return next();
  const details = await provider.interactionDetails(ctx.req, ctx.res);
  const { prompt, params, session, grantId } = details;
  let result;
  if (prompt.name === 'login') {
    result = { login: { accountId: 'user' } };
  } else {
    const grant = grantId
      ? await provider.Grant.find(grantId)
      : new provider.Grant({ accountId: session.accountId, clientId: params.client_id });
    if (prompt.details.missingOIDCScope) grant.addOIDCScope(prompt.details.missingOIDCScope.join(' '));
    if (prompt.details.missingOIDCClaims) grant.addOIDCClaims(prompt.details.missingOIDCClaims);
    for (const [indicator, scopes] of Object.entries(prompt.details.missingResourceScopes ?? {})) {
      grant.addResourceScope(indicator, scopes.join(' '));
    }
    result = { consent: { grantId: await grant.save() } };
  }
  ctx.respond = false;
  await provider.interactionFinished(ctx.req, ctx.res, result, { mergeWithLastSubmission: true });
});

const server = provider.listen(port, '127.0.0.1', () => {
  console.log(`listening http://127.0.0.1:${server.address().port}`);
});
