// Get a DPoP-bound token from jwt-issuer and use it the way a Node client does: openid-client
// (v6) discovers the issuer, runs the client credentials grant (client_secret_basic) with its
// DPoP handle (a fresh ES256 key pair), then calls a protected resource with the same handle,
// twice (each call signs a new proof), and once without it (the token sent as Bearer).
// usage: CLIENT_SECRET=... node openid_client_dpop.mjs ISSUER CLIENT_ID RESOURCE_URL
// Prints {token, calls: [{status, body}], as_bearer: {status, challenges}} as JSON and exits
// 0; prints the error and exits 1 when the token request or a DPoP call fails.
import * as client from 'openid-client';

const [issuer, clientId, resource] = process.argv.slice(2);

// A challenge (WWW-Authenticate) makes openid-client throw: report its parse of it.
async function call(config, token, options) {
  try {
    const res = await client.fetchProtectedResource(
      config, token, new URL(resource), 'GET', null, undefined, options);
    return { status: res.status, body: await res.json() };
  } catch (err) {
    if (err instanceof client.WWWAuthenticateChallengeError) {
      return { status: err.response.status, challenges: err.cause };
    }
    throw err;
  }
}

try {
  const config = await client.discovery(
    new URL(issuer),
    clientId,
    undefined,
    client.ClientSecretBasic(process.env.CLIENT_SECRET),
    // The test servers are plain http on 127.0.0.1; a deployment's issuer is https.
    { execute: [client.allowInsecureRequests] },
  );
  const DPoP = client.getDPoPHandle(config, await client.randomDPoPKeyPair('ES256'));
  const token = await client.clientCredentialsGrant(config, {}, { DPoP });
  const calls = [];
  for (let i = 0; i < 2; i++) {
    const result = await call(config, token.access_token, { DPoP });
    if (result.status !== 200) {
      throw new Error(`DPoP call ${i + 1}: ${JSON.stringify(result)}`);
    }
    calls.push(result);
  }
  const asBearer = await call(config, token.access_token, undefined);
  console.log(JSON.stringify({ token, calls, as_bearer: asBearer }));
} catch (err) {
  console.error(`${err.error ?? err.code ?? err.name}: ${err.error_description ?? err.message}`);
  process.exit(1);
}
