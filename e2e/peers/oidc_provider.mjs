// A real OpenID Connect provider for the identity tests: node-oidc-provider (a certified
// OpenID Provider implementation) on 127.0.0.1:PORT, issuing ES256-signed JWT access tokens
// for the gateway's audience without a browser:
//   - grant_type=password (username/password of the test users below, registered as a grant
//     type of this provider), tokens carry sub, email (verified) and groups;
//   - grant_type=client_credentials for the agent client, sub = its client id.
// Client `mcp-tests` (secret `mcp-tests-secret`, sent in the form) may use both.
//
// With REDIRECT_URIS (comma-separated), it is also the login of a browser flow: confidential
// client `mcpgate` (secret `mcpgate-secret`, client_secret_basic) may use the authorization
// code grant (PKCE S256 required) and refresh tokens, scopes `openid email groups`. Its ID
// tokens carry sub (the user name), email, email_verified and groups. The users sign in on
// the form of /interaction/UID (inputs `username` and `password`, button `sign-in`); consent
// is implied for this first-party client. Authorization responses carry `iss` (RFC 9207).
// Cookies are not Secure over http and named idp<PORT>_* (cookies ignore ports: on 127.0.0.1
// they are shared with the gateway's and with other providers').
//
// With OIDC_UPSTREAM=1 it plays an MCP upstream's authorization server, the gateway being its
// client: every client's access tokens are JWTs for AUDIENCE (RFC 8707, the upstream's URL),
// dynamic client registration is open at /reg (RFC 7591), revocation is at /token/revocation
// (RFC 7009, each revoked grant logged as "revoked grant ID"), refresh tokens are issued to
// every client allowed the grant and rotated on each use, and consent is implied for every
// client. OIDC_ACCESS_TTL sets the access tokens' lifetime in seconds (default 600), to make
// the client refresh. With OIDC_TRUST_ISSUER (another provider's issuer) it also grants
// token exchange (RFC 8693, urn:ietf:params:oauth:grant-type:token-exchange) to client
// `mcpgate`: a subject_token that is a JWT of that issuer, verified with its published keys,
// becomes an access token for AUDIENCE whose subject is the subject token's `sub`.
//
// usage: node oidc_provider.mjs PORT AUDIENCE [REDIRECT_URIS]
import { generateKeyPairSync } from "node:crypto";

// The peers e2e/peers/install.sh installed into .cache/npm.
const modules = new URL("../../.cache/npm/node_modules/", import.meta.url);
const { default: Provider, errors } = await import(new URL("oidc-provider/lib/index.js", modules));

const [port, audience, redirects] = process.argv.slice(2);
if (!port || !audience) {
  console.error("usage: node oidc_provider.mjs PORT AUDIENCE [REDIRECT_URIS]");
  process.exit(2);
}
const issuer = `http://127.0.0.1:${port}`;
const upstream = process.env.OIDC_UPSTREAM === "1";
const trusted = process.env.OIDC_TRUST_ISSUER;
const accessTtl = Number(process.env.OIDC_ACCESS_TTL ?? 600);
const redirectUris = (redirects ?? "").split(",").map((uri) => uri.trim()).filter(Boolean);

// name -> password, email, groups
const USERS = {
  alice: { password: "alice-pw", email: "alice@example.com", groups: ["team-a"] },
  bob: { password: "bob-pw", email: "bob@example.com", groups: ["team-b"] },
};

// The browser-flow client (first-party: no consent asked).
const GATEWAY_CLIENT = "mcpgate";
const TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange";

const signing = generateKeyPairSync("ec", { namedCurve: "P-256" })
  .privateKey.export({ format: "jwk" });

const resource = {
  scope: "mcp",
  audience,
  accessTokenTTL: accessTtl,
  accessTokenFormat: "jwt",
  jwt: { sign: { alg: "ES256" } },
};

const clients = [
  {
    client_id: "mcp-tests",
    client_secret: "mcp-tests-secret",
    grant_types: ["client_credentials", "password"],
    redirect_uris: [],
    response_types: [],
    scope: "openid mcp",
    id_token_signed_response_alg: "ES256",
    token_endpoint_auth_method: "client_secret_post",
  },
];
if (redirectUris.length) {
  clients.push({
    client_id: GATEWAY_CLIENT,
    client_secret: "mcpgate-secret",
    grant_types: ["authorization_code", "refresh_token", ...(trusted ? [TOKEN_EXCHANGE] : [])],
    redirect_uris: redirectUris,
    response_types: ["code"],
    scope: upstream ? "openid email groups mcp" : "openid email groups",
    id_token_signed_response_alg: "ES256",
    token_endpoint_auth_method: "client_secret_basic",
  });
}

const provider = new Provider(issuer, {
  clients,
  scopes: ["openid", "mcp"],
  // The claims of each scope; with conformIdTokenClaims off they go into the ID token itself.
  claims: {
    openid: ["sub"],
    email: ["email", "email_verified"],
    groups: ["groups"],
  },
  conformIdTokenClaims: false,
  findAccount: (_ctx, sub) => {
    const user = USERS[sub];
    if (!user) return undefined;
    return {
      accountId: sub,
      claims: async () => ({
        sub,
        email: user.email,
        email_verified: true,
        groups: user.groups,
      }),
    };
  },
  // Plain http on loopback: node-oidc-provider marks cookies Secure only on https requests;
  // SameSite=Lax suits the top-level redirects of the flow.
  cookies: {
    names: {
      session: `idp${port}_session`,
      interaction: `idp${port}_interaction`,
      resume: `idp${port}_interaction_resume`,
    },
    long: { httpOnly: true, sameSite: "lax" },
    short: { httpOnly: true, sameSite: "lax" },
  },
  pkce: {
    required: (_ctx, client) =>
      client.clientId === GATEWAY_CLIENT || client.clientAuthMethod === "none",
  },
  // The gateway's client gets a refresh token without asking for offline_access.
  issueRefreshToken: async (_ctx, client, source) =>
    client.grantTypeAllowed("refresh_token")
    && (upstream || client.clientId === GATEWAY_CLIENT || source.scopes.has("offline_access")),
  rotateRefreshToken: upstream ? true : undefined,
  ttl: { AccessToken: accessTtl, ClientCredentials: 600 },
  jwks: { keys: [{ ...signing, kid: "test-es256", alg: "ES256", use: "sig" }] },
  features: {
    devInteractions: { enabled: false },
    clientCredentials: { enabled: true },
    registration: { enabled: upstream },
    revocation: { enabled: upstream },
    resourceIndicators: {
      enabled: true,
      // The browser flow's access token is only for userinfo (unless a resource is asked).
      defaultResource: (_ctx, client) =>
        (client?.clientId === GATEWAY_CLIENT && !upstream ? undefined : audience),
      useGrantedResource: () => true,
      getResourceServerInfo: (_ctx, indicator) => {
        if (indicator !== audience) throw new errors.InvalidTarget();
        return resource;
      },
    },
  },
  extraTokenClaims: (_ctx, token) => {
    const user = USERS[token.accountId];
    return user ? { email: user.email, email_verified: true, groups: user.groups } : undefined;
  },
});

provider.registerGrantType(
  "password",
  async (ctx) => {
    const { client, params } = ctx.oidc;
    const user = USERS[params.username];
    if (!user || user.password !== params.password) {
      throw new errors.InvalidGrant("wrong username or password");
    }
    const token = new provider.AccessToken({
      accountId: params.username,
      client,
      gty: "password",
      scope: "mcp",
    });
    token.resourceServer = new provider.ResourceServer(audience, resource);
    ctx.oidc.entity("AccessToken", token);
    const value = await token.save();
    ctx.body = {
      access_token: value,
      token_type: "Bearer",
      expires_in: token.expiration,
      scope: token.scope,
    };
  },
  ["username", "password", "scope"],
);

if (trusted) {
  const { createRemoteJWKSet, jwtVerify } = await import(new URL("jose/dist/webapi/index.js", modules));
  const discovery = await (await fetch(`${trusted}/.well-known/openid-configuration`)).json();
  const keys = createRemoteJWKSet(new URL(discovery.jwks_uri));
  provider.registerGrantType(
    TOKEN_EXCHANGE,
    async (ctx) => {
      const { client, params } = ctx.oidc;
      if (params.subject_token_type !== "urn:ietf:params:oauth:token-type:access_token") {
        throw new errors.InvalidRequest("subject_token_type must be an access token");
      }
      if (params.resource && params.resource !== audience) throw new errors.InvalidTarget();
      let claims;
      try {
        ({ payload: claims } = await jwtVerify(params.subject_token, keys, { issuer: trusted }));
      } catch (error) {
        throw new errors.InvalidGrant(`subject_token refused: ${error.message}`);
      }
      const token = new provider.AccessToken({
        accountId: claims.sub,
        client,
        gty: "token-exchange",
        scope: "mcp",
      });
      token.resourceServer = new provider.ResourceServer(audience, resource);
      ctx.oidc.entity("AccessToken", token);
      const value = await token.save();
      console.log(`exchanged a token of ${claims.sub}`);
      ctx.body = {
        access_token: value,
        issued_token_type: "urn:ietf:params:oauth:token-type:access_token",
        token_type: "Bearer",
        expires_in: token.expiration,
      };
    },
    ["subject_token", "subject_token_type", "requested_token_type", "resource", "audience", "scope"],
  );
}

// The interaction pages: the login form, consent implied for the gateway's client.
const escape = (text) =>
  String(text).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);

function page(title, body) {
  return `<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>${escape(title)}</title></head>
<body><h1>${escape(title)}</h1>${body}</body></html>`;
}

function loginForm(uid, clientId, error, username = "") {
  return page("Sign in", `
<p>to continue to <code>${escape(clientId)}</code></p>
${error ? `<p id="error" role="alert">${escape(error)}</p>` : ""}
<form method="post" action="/interaction/${escape(uid)}/login" autocomplete="off">
  <label>User <input id="username" name="username" value="${escape(username)}" autofocus></label>
  <label>Password <input id="password" name="password" type="password"></label>
  <button type="submit" id="sign-in">Sign in</button>
</form>`);
}

async function formBody(ctx) {
  const chunks = [];
  let size = 0;
  for await (const chunk of ctx.req) {
    size += chunk.length;
    if (size > 16384) ctx.throw(413, "form too large");
    chunks.push(chunk);
  }
  return new URLSearchParams(Buffer.concat(chunks).toString("utf8"));
}

// Grants what the (first-party) client asked for, then resumes the authorization.
async function consent(ctx, details) {
  const { prompt, grantId, session, params } = details;
  const grant = grantId
    ? await provider.Grant.find(grantId)
    : new provider.Grant({ accountId: session.accountId, clientId: params.client_id });
  const missing = prompt.details;
  if (missing.missingOIDCScope) grant.addOIDCScope(missing.missingOIDCScope.join(" "));
  if (missing.missingOIDCClaims) grant.addOIDCClaims(missing.missingOIDCClaims);
  for (const [indicator, scopes] of Object.entries(missing.missingResourceScopes ?? {})) {
    grant.addResourceScope(indicator, scopes.join(" "));
  }
  const result = { consent: { grantId: await grant.save() } };
  ctx.redirect(await provider.interactionResult(ctx.req, ctx.res, result, {
    mergeWithLastSubmission: true,
  }));
  ctx.status = 303;
}

provider.use(async (ctx, next) => {
  const match = /^\/interaction\/([^/]+)(\/login)?$/.exec(ctx.path);
  if (!match) return next();
  const [, uid, login] = match;
  ctx.set("Cache-Control", "no-store");
  let details;
  try {
    details = await provider.interactionDetails(ctx.req, ctx.res);
  } catch (error) {
    ctx.status = 400;
    ctx.type = "html";
    ctx.body = page("Sign-in failed", `<p id="error">${escape(error.message)}</p>`);
    return undefined;
  }
  if (details.uid !== uid) ctx.throw(400, "interaction mismatch");
  const clientId = details.params.client_id;
  const { name } = details.prompt;

  if (name === "consent") {
    if (clientId !== GATEWAY_CLIENT && !upstream) {
      ctx.throw(403, "consent is only implied for mcpgate");
    }
    return consent(ctx, details);
  }
  if (name !== "login") ctx.throw(501, `prompt ${name} not implemented`);

  ctx.type = "html";
  if (ctx.method === "GET" && !login) {
    ctx.body = loginForm(uid, clientId);
    return undefined;
  }
  if (ctx.method !== "POST" || !login) ctx.throw(405);
  const form = await formBody(ctx);
  const username = form.get("username") ?? "";
  const user = USERS[username];
  if (!user || user.password !== (form.get("password") ?? "")) {
    ctx.status = 200;
    ctx.body = loginForm(uid, clientId, "Wrong user name or password.", username);
    return undefined;
  }
  ctx.redirect(await provider.interactionResult(ctx.req, ctx.res, {
    login: { accountId: username },
  }, { mergeWithLastSubmission: false }));
  ctx.status = 303;
  return undefined;
});

provider.on("grant.revoked", (_ctx, grantId) => console.log(`revoked grant ${grantId}`));
provider.on("registration_create.success", (_ctx, client) =>
  console.log(`registered client ${client.clientId}`));
// Refresh grants, counted by the tests (one refresh per expiry, however many replicas).
provider.on("grant.success", (ctx) => {
  if (ctx.oidc.params?.grant_type === "refresh_token") console.log("refreshed tokens");
});
provider.on("grant.error", (ctx, error) => {
  if (ctx.oidc.params?.grant_type === "refresh_token") {
    console.log(`refused a refresh token: ${error.error ?? error.message}`);
  }
});

provider.listen(Number(port), "127.0.0.1", () => {
  const extra = redirectUris.length ? `, client ${GATEWAY_CLIENT} -> ${redirectUris.join(" ")}` : "";
  const mode = upstream ? `, upstream authorization server, access tokens ${accessTtl} s` : "";
  console.log(`oidc provider ${issuer} (audience ${audience}${extra}${mode})`);
});
