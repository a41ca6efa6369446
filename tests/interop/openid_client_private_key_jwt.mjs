// Get a token from jwt-issuer the way a Node client does: openid-client (v6) discovers the
// issuer, then runs the client credentials grant authenticated with private_key_jwt.
// usage: node openid_client_private_key_jwt.mjs ISSUER CLIENT_ID KEY_PEM [KID]
//   KEY_PEM: the client's PKCS#8 private key (P-256 or RSA); KID: sent in the assertion's
//   header when given (openid-client sends none by default).
// Prints the token response as JSON and exits 0; prints the error and exits 1 otherwise.
import { createPrivateKey } from 'node:crypto';
import { readFileSync } from 'node:fs';

import { importPKCS8 } from 'jose';
import * as client from 'openid-client';

const [issuer, clientId, keyFile, kid] = process.argv.slice(2);
try {
  const pem = readFileSync(keyFile, 'utf8');
  // openid-client takes the assertion's alg from the CryptoKey: import an RSA key as RS256
  // (RSASSA-PKCS1-v1_5); imported as PS256 (RSA-PSS) it would sign PS256, which jwt-issuer
  // does not take.
  const alg = { ec: 'ES256', rsa: 'RS256' }[createPrivateKey(pem).asymmetricKeyType];
  const key = await importPKCS8(pem, alg);
  const config = await client.discovery(
    new URL(issuer),
    clientId,
    undefined,
    client.PrivateKeyJwt(kid ? { key, kid } : key),
    // The test server is plain http on 127.0.0.1; a deployment's issuer is https.
    { execute: [client.allowInsecureRequests] },
  );
  const tokens = await client.clientCredentialsGrant(config);
  console.log(JSON.stringify(tokens));
} catch (err) {
  // A refusal by the server is a ResponseBodyError carrying the OAuth error code.
  console.error(`${err.error ?? err.code ?? err.name}: ${err.error_description ?? err.message}`);
  process.exit(1);
}
