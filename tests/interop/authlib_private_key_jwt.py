"""Get a token from jwt-issuer the way a Python client does: authlib's OAuth2Session with
private_key_jwt client authentication (PrivateKeyJWT), client credentials grant.

usage: authlib_private_key_jwt.py TOKEN_ENDPOINT CLIENT_ID KEY_PEM [--authlib-default-lifetime]
  KEY_PEM: the client's PKCS#8 private key (P-256 or RSA).
  --authlib-default-lifetime: sign assertions as authlib does by default (exp an hour ahead),
  which jwt-issuer refuses; without it they live 60 s.
Prints the token response as JSON and exits 0; prints the error and exits 1 otherwise.
"""
import json
import sys

from authlib.integrations.base_client import OAuthError
from authlib.integrations.requests_client import OAuth2Session
from authlib.oauth2.rfc7523 import PrivateKeyJWT, private_key_jwt_sign
from cryptography.hazmat.primitives.asymmetric.ec import EllipticCurvePrivateKey
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from joserfc.jwk import ECKey, RSAKey

# How long our assertions live. jwt-issuer refuses an exp more than 5 minutes
# ahead; an assertion is made for one request, so a minute covers clock skew.
ASSERTION_LIFETIME = 60


class ShortLivedPrivateKeyJWT(PrivateKeyJWT):
    """PrivateKeyJWT with assertions that live ASSERTION_LIFETIME seconds.

    authlib's PrivateKeyJWT signs exp = iat + 3600 and takes no option for it (authlib 1.9;
    authlib issue 857), so this overrides sign() to pass expires_in, which authlib's own
    private_key_jwt_sign forwards.
    """

    def sign(self, auth, token_endpoint):
        return private_key_jwt_sign(
            auth.client_secret,
            client_id=auth.client_id,
            token_endpoint=token_endpoint,
            # A copy: authlib stores the jti it adds in the dict it is given, so passing
            # self.claims itself would send the same jti with every request.
            claims=dict(self.claims or {}),
            header=self.headers,
            alg=self.alg,
            expires_in=ASSERTION_LIFETIME,
        )


def main() -> int:
    token_endpoint, client_id, key_file = sys.argv[1:4]
    authlib_default = "--authlib-default-lifetime" in sys.argv[4:]
    with open(key_file, encoding="ascii") as f:
        pem = f.read()
    # PrivateKeyJWT signs RS256 unless told otherwise: an EC key needs alg="ES256".
    if isinstance(load_pem_private_key(pem.encode(), password=None), EllipticCurvePrivateKey):
        key, alg = ECKey.import_key(pem), "ES256"
    else:
        key, alg = RSAKey.import_key(pem), "RS256"
    auth = (PrivateKeyJWT if authlib_default else ShortLivedPrivateKeyJWT)(
        token_endpoint, alg=alg
    )
    session = OAuth2Session(client_id, key, token_endpoint_auth_method="private_key_jwt")
    session.register_client_auth_method(auth)
    try:
        token = session.fetch_token(token_endpoint, grant_type="client_credentials")
    except OAuthError as err:  # the server's answer: its error code and description
        print(f"{err.error}: {err.description}", file=sys.stderr)
        return 1
    print(json.dumps(dict(token)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
