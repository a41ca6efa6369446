"""The client side of scripts/soak.sh: token requests, JWKS fetches with If-None-Match and a
caching verifier (PyJWT's PyJWKClient) checking every token, for a bounded time.

usage: soak-driver.py BASE_URL SECONDS CLIENTS_FILE RESTARTS_FILE [THREADS]
  CLIENTS_FILE   "id secret" per line; read again every second (soak.sh appends the
                 clients it registers once the server accepts them)
  RESTARTS_FILE  "from_ms to_ms" per line: when the server was down on purpose; requests
                 refused then are expected, any other is a failure
env JWT_ISSUER_JWKS_MAX_AGE  the server's JWKS max-age in seconds: the verifiers' cache
                 lifespan (PyJWKClient ignores Cache-Control, so it is told; with a longer
                 lifespan it would miss a rotated key until its 30 s unknown-kid cooldown)
stdout: one JSON object with the counts. Exits 0 whatever it counted (soak.sh decides).
"""
import base64
import collections
import json
import os
import random
import sys
import threading
import time
import urllib.error
import urllib.request

import jwt

# A token is verified when issued and once more this long after (a verifier holding it
# across rotations: its key must still be published, retired or not).
RECHECK_AFTER = 10.0


def now_ms():
    return int(time.time() * 1000)


class Counts:
    def __init__(self):
        self.lock = threading.Lock()
        self.requests = collections.Counter()  # kind -> n
        self.statuses = collections.Counter()  # "kind status" -> n
        self.verified = 0
        self.reverified = 0
        self.verify_failures = []  # (ms, text, connection error?)
        self.refused_at = []  # ms of requests without an answer
        self.kids = collections.defaultdict(set)  # alg -> kids that signed
        self.driver_errors = []  # a worker that died: its counts stop there

    def add(self, kind, status):
        with self.lock:
            self.requests[kind] += 1
            self.statuses[f"{kind} {status}"] += 1


def read_clients(path):
    """Whole lines only: one soak.sh is appending may not have its newline yet."""
    try:
        with open(path) as f:
            lines = f.read().split("\n")[:-1]
    except FileNotFoundError:
        return []
    return [tuple(line.split()) for line in lines if len(line.split()) == 2]


def request(req, timeout=10):
    """(status, headers, body); status None when there was no answer."""
    try:
        with urllib.request.urlopen(req, timeout=timeout) as res:
            return res.status, res.headers, res.read()
    except urllib.error.HTTPError as err:
        return err.code, err.headers, err.read()
    except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
        return None, None, b""


def worker(base, deadline, clients_file, counts, seed):
    try:
        run(base, deadline, clients_file, counts, seed)
    except Exception as err:  # noqa: BLE001 - reported, and fails the soak
        with counts.lock:
            counts.driver_errors.append(f"{type(err).__name__}: {err}")


def run(base, deadline, clients_file, counts, seed):
    rng = random.Random(seed)
    issuer = base
    lifespan = float(os.environ.get("JWT_ISSUER_JWKS_MAX_AGE", "300"))
    verifier = jwt.PyJWKClient(
        f"{base}/.well-known/jwks.json", cache_keys=True, lifespan=lifespan
    )
    etag = None
    pending = collections.deque()  # (recheck at, token)
    clients, clients_read = [], 0.0
    while time.time() < deadline:
        if time.time() - clients_read > 1.0:
            clients, clients_read = read_clients(clients_file), time.time()
        # About one JWKS fetch per four token requests, as a fleet of verifiers would.
        if rng.random() < 0.2:
            headers = {"If-None-Match": etag} if etag else {}
            req = urllib.request.Request(f"{base}/.well-known/jwks.json", headers=headers)
            status, res_headers, body = request(req)
            if status is None:
                with counts.lock:
                    counts.refused_at.append(now_ms())
                time.sleep(0.02)
                continue
            counts.add("jwks", status)
            if status == 200:
                try:
                    if json.loads(body)["keys"]:
                        etag = res_headers.get("ETag")
                except (ValueError, KeyError):
                    counts.add("jwks", "200-unparseable")
            continue
        if not clients:
            time.sleep(0.1)
            continue
        client_id, secret = rng.choice(clients)
        auth = base64.b64encode(f"{client_id}:{secret}".encode()).decode()
        req = urllib.request.Request(
            f"{base}/oauth2/token",
            data=b"grant_type=client_credentials",
            headers={
                "Authorization": f"Basic {auth}",
                "Content-Type": "application/x-www-form-urlencoded",
            },
        )
        status, _, body = request(req)
        if status is None:
            with counts.lock:
                counts.refused_at.append(now_ms())
            time.sleep(0.02)
            continue
        counts.add("token", status)
        if status != 200:
            continue
        try:
            token = json.loads(body)["access_token"]
        except (ValueError, KeyError):
            counts.add("token", "200-unparseable")
            continue
        verify(verifier, token, issuer, counts, recheck=False)
        pending.append((time.time() + RECHECK_AFTER, token))
        while pending and pending[0][0] <= time.time():
            verify(verifier, pending.popleft()[1], issuer, counts, recheck=True)


def verify(verifier, token, issuer, counts, recheck):
    header = jwt.get_unverified_header(token)
    try:
        key = verifier.get_signing_key_from_jwt(token)
        # The algorithm comes from the key, never from the token header.
        jwt.decode(
            token,
            key.key,
            algorithms=[key.algorithm_name],
            issuer=issuer,
            audience="api",
            options={"require": ["exp", "iat", "nbf", "iss", "sub", "jti"]},
        )
    except Exception as err:  # noqa: BLE001 - every failure is counted with its reason
        with counts.lock:
            counts.verify_failures.append(
                (
                    now_ms(),
                    f"{'recheck' if recheck else 'fresh'} kid {header.get('kid')}: {type(err).__name__}: {err}",
                    isinstance(err, jwt.PyJWKClientConnectionError),
                )
            )
        return
    with counts.lock:
        if recheck:
            counts.reverified += 1
        else:
            counts.verified += 1
            counts.kids[header["alg"]].add(header["kid"])


def main():
    base, seconds, clients_file, restarts_file = sys.argv[1:5]
    threads = int(sys.argv[5]) if len(sys.argv) > 5 else 4
    deadline = time.time() + float(seconds)
    counts = Counts()
    workers = [
        threading.Thread(target=worker, args=(base, deadline, clients_file, counts, i))
        for i in range(threads)
    ]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    windows = []
    if os.path.exists(restarts_file):
        with open(restarts_file) as f:
            windows = [tuple(map(int, line.split())) for line in f if line.strip()]
    def in_window(t):
        return any(a <= t <= b for a, b in windows)

    expected = [t for t in counts.refused_at if in_window(t)]
    # A JWKS fetch the server could not answer while it was down on purpose is not a
    # verification failure; every other failure is.
    failures = [f for f in counts.verify_failures if not (f[2] and in_window(f[0]))]
    print(
        json.dumps(
            {
                "requests": dict(counts.requests),
                "statuses": dict(counts.statuses),
                "verified": counts.verified,
                "reverified": counts.reverified,
                "verify_failures": len(failures),
                "verify_failure_samples": [f[1] for f in failures[:10]],
                "verify_fetch_refused_during_restart": len(counts.verify_failures) - len(failures),
                "refused_during_restart": len(expected),
                "refused_otherwise": len(counts.refused_at) - len(expected),
                "kids_signed": {alg: len(kids) for alg, kids in counts.kids.items()},
                "driver_errors": counts.driver_errors,
            }
        )
    )


if __name__ == "__main__":
    main()
