// A real OpenID Connect provider (npm oidc-provider, a certified
// implementation) on loopback for the console's sign-in test. Its own dev
// login and consent pages accept any login; the account's access token is a
// JWT (RFC 9068) for the archive's API with its scopes and tenants.
//   node provider.mjs PORT REDIRECT_URI RESOURCE
// Prints "ready <issuer>" when it listens.
import crypto from "node:crypto";
import Provider from "oidc-provider";

const [port, redirectUri, resource] = process.argv.slice(2);
const issuer = `http://127.0.0.1:${port}`;
const SCOPES = "dicom.read dicom.write dicom.delete admin";
const key = crypto.generateKeyPairSync("rsa", { modulusLength: 2048 }).privateKey.export({ format: "jwk" });

const provider = new Provider(issuer, {
  clients: [{
    client_id: "dicomserver-console",
    token_endpoint_auth_method: "none",  // a public client: PKCE protects the code
    redirect_uris: [redirectUri],
    grant_types: ["authorization_code"],
    response_types: ["code"],
  }],
  jwks: { keys: [{ ...key, kid: "test-key", use: "sig", alg: "RS256" }] },
  pkce: { required: () => true },
  scopes: ["openid", ...SCOPES.split(" ")],
  cookies: { keys: [crypto.randomBytes(16).toString("hex")] },
  features: {
    devInteractions: { enabled: true },
    resourceIndicators: {
      enabled: true,
      defaultResource: () => resource,
      useGrantedResource: () => true,
      getResourceServerInfo: () => ({
        scope: SCOPES, audience: resource, accessTokenTTL: 3600, accessTokenFormat: "jwt",
        jwt: { sign: { alg: "RS256" } },
      }),
    },
  },
  extraTokenClaims: () => ({ tenants: ["default"] }),
  findAccount: (_ctx, id) => ({ accountId: id, claims: () => ({ sub: id, name: id }) }),
});
provider.proxy = false;
provider.listen(Number(port), "127.0.0.1", () => { console.log(`ready ${issuer}`); });
