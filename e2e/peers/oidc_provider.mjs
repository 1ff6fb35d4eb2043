// A real OpenID Connect provider for the identity tests: node-oidc-provider (a certified
// OpenID Provider implementation) on 127.0.0.1:PORT, issuing ES256-signed JWT access tokens
// for the gateway's audience without a browser:
//   - grant_type=password (username/password of the test users below, registered as a grant
//     type of this provider), tokens carry sub, email (verified) and groups;
//   - grant_type=client_credentials for the agent client, sub = its client id.
// Client `mcp-tests` (secret `mcp-tests-secret`, sent in the form) may use both.
//
// usage: node oidc_provider.mjs PORT AUDIENCE
import { generateKeyPairSync } from "node:crypto";

// The peers e2e/peers/install.sh installed into .cache/npm.
const modules = new URL("../../.cache/npm/node_modules/", import.meta.url);
const { default: Provider, errors } = await import(new URL("oidc-provider/lib/index.js", modules));

const [port, audience] = process.argv.slice(2);
if (!port || !audience) {
  console.error("usage: node oidc_provider.mjs PORT AUDIENCE");
  process.exit(2);
}
const issuer = `http://127.0.0.1:${port}`;

// name -> password, email, groups
const USERS = {
  alice: { password: "alice-pw", email: "alice@example.com", groups: ["team-a"] },
  bob: { password: "bob-pw", email: "bob@example.com", groups: ["team-b"] },
};

const signing = generateKeyPairSync("ec", { namedCurve: "P-256" })
  .privateKey.export({ format: "jwk" });

const resource = {
  scope: "mcp",
  audience,
  accessTokenTTL: 600,
  accessTokenFormat: "jwt",
  jwt: { sign: { alg: "ES256" } },
};

const provider = new Provider(issuer, {
  clients: [
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
  ],
  scopes: ["openid", "mcp"],
  ttl: { AccessToken: 600, ClientCredentials: 600 },
  jwks: { keys: [{ ...signing, kid: "test-es256", alg: "ES256", use: "sig" }] },
  features: {
    devInteractions: { enabled: false },
    clientCredentials: { enabled: true },
    resourceIndicators: {
      enabled: true,
      defaultResource: () => audience,
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

provider.listen(Number(port), "127.0.0.1", () => {
  console.log(`oidc provider ${issuer} (audience ${audience})`);
});
