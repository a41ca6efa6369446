"""Verify a jwt-issuer token the way a Python service does: PyJWT's PyJWKClient.

usage: pyjwt_verify.py JWKS_URL ISSUER AUDIENCE|- TOKEN  (EXPECT_TYP=at+jwt checks typ)
Prints the claims as JSON and exits 0 when valid; prints the error and exits 1 otherwise.
"""
import json
import os
import sys

import jwt


def main() -> int:
    jwks_url, issuer, audience, token = sys.argv[1:5]
    client = jwt.PyJWKClient(jwks_url, cache_keys=True)
    try:
        signing_key = client.get_signing_key_from_jwt(token)
        # The algorithm comes from the key (its JWK "alg"), never from the token header.
        claims = jwt.decode(
            token,
            signing_key.key,
            algorithms=[signing_key.algorithm_name],
            issuer=issuer,
            audience=None if audience == "-" else audience,
            options={
                "require": ["exp", "iat", "nbf", "iss", "sub", "jti"],
                "verify_aud": audience != "-",
            },
        )
        expected_typ = os.environ.get("EXPECT_TYP")
        if expected_typ and jwt.get_unverified_header(token).get("typ") != expected_typ:
            raise jwt.InvalidTokenError(f"typ is not {expected_typ}")
    except jwt.PyJWTError as err:
        print(f"{type(err).__name__}: {err}", file=sys.stderr)
        return 1
    print(json.dumps(claims))
    return 0


if __name__ == "__main__":
    sys.exit(main())
