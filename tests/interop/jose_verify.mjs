// Verify a jwt-issuer token the way a Node service does: jose's createRemoteJWKSet.
// usage: node jose_verify.mjs JWKS_URL ISSUER AUDIENCE|- TOKEN  (EXPECT_TYP=at+jwt checks typ)
// Prints the claims as JSON and exits 0 when valid; prints the error and exits 1 otherwise.
import { createRemoteJWKSet, jwtVerify } from 'jose';

const [jwksUrl, issuer, audience, token] = process.argv.slice(2);
const jwks = createRemoteJWKSet(new URL(jwksUrl));
try {
  const options = { issuer, algorithms: ['ES256', 'RS256'], requiredClaims: ['exp', 'iat', 'nbf', 'sub', 'jti'] };
  if (audience !== '-') options.audience = audience;
  if (process.env.EXPECT_TYP) options.typ = process.env.EXPECT_TYP;
  const { payload, protectedHeader } = await jwtVerify(token, jwks, options);
  console.log(JSON.stringify({ payload, protectedHeader }));
} catch (err) {
  console.error(`${err.code ?? err.name}: ${err.message}`);
  process.exit(1);
}
