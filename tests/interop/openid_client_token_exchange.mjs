// Exchange a workload's token for a jwt-issuer access token the way a Node client does:
// openid-client (v6) discovers the issuer, then sends an RFC 8693 token exchange request
// through its generic grant, without client authentication (None: client_id in the form).
// usage: node openid_client_token_exchange.mjs ISSUER CLIENT_ID SUBJECT_TOKEN_FILE [AUDIENCE]
//   SUBJECT_TOKEN_FILE: the token to exchange, read from a file as a pod reads its projected
//   service-account token; CLIENT_ID: the client the trusted issuers file maps it to
//   (openid-client needs one, and sends it); AUDIENCE: asked for when given.
// Prints the token response as JSON and exits 0; prints the error and exits 1 otherwise.
import { readFileSync } from 'node:fs';

import * as client from 'openid-client';

const [issuer, clientId, tokenFile, audience] = process.argv.slice(2);
try {
  const config = await client.discovery(
    new URL(issuer),
    clientId,
    undefined,
    client.None(),
    // The test server is plain http on 127.0.0.1; a deployment's issuer is https.
    { execute: [client.allowInsecureRequests] },
  );
  const parameters = {
    subject_token: readFileSync(tokenFile, 'utf8').trim(),
    subject_token_type: 'urn:ietf:params:oauth:token-type:jwt',
    requested_token_type: 'urn:ietf:params:oauth:token-type:access_token',
  };
  if (audience) parameters.audience = audience;
  const tokens = await client.genericGrantRequest(
    config,
    'urn:ietf:params:oauth:grant-type:token-exchange',
    parameters,
  );
  console.log(JSON.stringify(tokens));
} catch (err) {
  // A refusal by the server is a ResponseBodyError carrying the OAuth error code.
  console.error(`${err.error ?? err.code ?? err.name}: ${err.error_description ?? err.message}`);
  process.exit(1);
}
