"""PyJWT with a shared secret, as a Python service using HS256 would.

usage: SECRET=... hs256_pyjwt.py verify TOKEN      -> prints the claims
       SECRET=... hs256_pyjwt.py sign ISSUER AUD   -> prints a token
"""
import json
import os
import sys
import time

import jwt

secret = os.environ["SECRET"]
command, *args = sys.argv[1:]
try:
    if command == "verify":
        print(json.dumps(jwt.decode(args[0], secret, algorithms=["HS256"], options={"verify_aud": False})))
    else:
        now = int(time.time())
        claims = {"sub": "python-svc", "iss": args[0], "aud": args[1], "iat": now, "exp": now + 300}
        print(jwt.encode(claims, secret, algorithm="HS256"))
except jwt.PyJWTError as err:
    print(f"{type(err).__name__}: {err}", file=sys.stderr)
    sys.exit(1)
