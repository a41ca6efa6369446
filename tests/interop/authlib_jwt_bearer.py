"""Exchange a workload's token for a jwt-issuer access token the way a Python client does:
authlib's OAuth2Session sends the JWT bearer grant of RFC 7523 section 2.1 (grant_type
JWTBearerGrant.GRANT_TYPE, the token as `assertion`), without client authentication.

usage: authlib_jwt_bearer.py TOKEN_ENDPOINT CLIENT_ID ASSERTION_FILE [--scope S] [--without-client-id]
  ASSERTION_FILE: the token to present, read from a file as a CI job or a pod reads it.
  CLIENT_ID: the client the trusted issuers file maps the token to; without a client
  secret authlib's OAuth2Session authenticates with "none", which sends it as client_id.
  --without-client-id: build the session with no client id at all (OAuth2Session());
  authlib then sends client_id=None, which jwt-issuer refuses as naming another client.
Prints the token response as JSON and exits 0; prints the error and exits 1 otherwise.
"""
import json
import sys

from authlib.integrations.base_client import OAuthError
from authlib.integrations.requests_client import OAuth2Session
from authlib.oauth2.rfc7523 import JWTBearerGrant


def main() -> int:
    token_endpoint, client_id, assertion_file = sys.argv[1:4]
    extra = sys.argv[4:]
    scope = extra[extra.index("--scope") + 1] if "--scope" in extra else None
    with open(assertion_file, encoding="ascii") as f:
        assertion = f.read().strip()
    if "--without-client-id" in extra:
        session = OAuth2Session()
    else:
        session = OAuth2Session(client_id)
    try:
        token = session.fetch_token(
            token_endpoint,
            grant_type=JWTBearerGrant.GRANT_TYPE,
            assertion=assertion,
            scope=scope,
        )
    except OAuthError as err:  # the server's answer: its error code and description
        print(f"{err.error}: {err.description}", file=sys.stderr)
        return 1
    print(json.dumps(dict(token)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
