#!/usr/bin/env python3
"""Supply-chain checks over the locked dependency graph, with no network and no extra tools:

- advisories: every package in Cargo.lock against a RustSec advisory database (default:
  ../shared/advisory-db beside the repository, or $ADVISORY_DB); a vulnerability fails the
  check unless ACCEPTED below names it with the reason it cannot be reached; informational
  advisories (unmaintained, unsound) are listed as warnings;
- sources: every package comes from crates.io (no git or other registries);
- licenses: every package's license expression uses only the licenses in ALLOWED_LICENSES.

Usage: .ci/supply-chain.py [--self-test]
"""
import json
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# Vulnerabilities that cannot be reached, each with the reason (reviewed on each change).
ACCEPTED = {
    "RUSTSEC-2023-0071": (
        "rsa: Marvin timing side channel in RSA decryption and signing with the rsa crate. "
        "jwt-issuer signs and verifies with aws-lc-rs (constant time); the rsa crate only "
        "generates keys, parses PEM and derives public parameters, none of which an attacker "
        "can time over the network."
    ),
}

ALLOWED_LICENSES = {
    "MIT", "Apache-2.0", "Apache-2.0 WITH LLVM-exception", "BSD-2-Clause", "BSD-3-Clause",
    "ISC", "Unicode-3.0", "Unicode-DFS-2016", "Zlib", "CC0-1.0", "OpenSSL", "MPL-2.0",
    "BSL-1.0", "Unlicense", "CDLA-Permissive-2.0", "MIT-0",
}

CRATES_IO = "registry+https://github.com/rust-lang/crates.io-index"


def parse_version(text):
    """(major, minor, patch) of a version; a pre-release sorts just below its release."""
    core, _, pre = text.strip().partition("-")
    parts = [int(p) for p in core.split(".")] + [0, 0, 0]
    return (parts[0], parts[1], parts[2], 0 if pre else 1)


def matches(version, requirement):
    """Whether `version` satisfies a Cargo requirement like ">= 1.2, < 2" or "^0.9.1"."""
    v = parse_version(version)
    for comparator in requirement.split(","):
        m = re.fullmatch(r"\s*(>=|<=|>|<|=|\^|~)?\s*([0-9][0-9A-Za-z.+-]*)\s*", comparator)
        if not m:
            raise ValueError(f"cannot read requirement {requirement!r}")
        op, bound_text = m.group(1) or "^", m.group(2)
        bound = parse_version(bound_text)
        given = len(bound_text.split("-")[0].split("."))
        if op in ("^", "~"):
            if op == "^":
                # The left-most non-zero part given must stay the same.
                idx = next((i for i in range(given) if bound[i] != 0), given - 1)
                upper = list(bound[:3])
                upper[idx] += 1
                upper[idx + 1:] = [0] * (2 - idx)
            else:
                idx = 0 if given == 1 else 1
                upper = list(bound[:3])
                upper[idx] += 1
                upper[idx + 1:] = [0] * (2 - idx)
            if not (v >= bound and v < tuple(upper) + (0,)):
                return False
        elif op == "=":
            if v[:given] != bound[:given]:
                return False
        elif not {">=": v >= bound, "<=": v <= bound, ">": v > bound, "<": v < bound}[op]:
            return False
    return True


def read_advisory(path):
    """The TOML front matter of an advisory file, with its title (the first heading)."""
    text = path.read_text(encoding="utf-8")
    m = re.search(r"```toml\n(.*?)```", text, re.S)
    if not m:
        return None
    advisory = tomllib.loads(m.group(1))
    title = re.search(r"^# (.+)$", text[m.end():], re.M)
    advisory["advisory"].setdefault("title", title.group(1) if title else path.stem)
    return advisory


def affected(advisory, version):
    versions = advisory.get("versions", {})
    safe = versions.get("patched", []) + versions.get("unaffected", [])
    return not any(matches(version, req) for req in safe)


def main():
    db = Path(os.environ.get("ADVISORY_DB", ROOT.parent / "shared" / "advisory-db"))
    have_db = (db / "crates").is_dir()
    lock = tomllib.loads((ROOT / "Cargo.lock").read_text())
    packages = [p for p in lock["package"] if "source" in p]
    failures, warnings = [], []
    if not have_db:
        # Sources and licenses are still checked; the advisories need the snapshot.
        warnings.append(f"no advisory database at {db} (set ADVISORY_DB): advisories not checked")
    for pkg in packages:
        if pkg["source"] != CRATES_IO:
            failures.append(f"source: {pkg['name']} {pkg['version']} comes from {pkg['source']}")
        advisories = (db / "crates" / pkg["name"]).glob("*.md") if have_db else []
        for path in sorted(advisories):
            advisory = read_advisory(path)
            if not advisory or advisory["advisory"].get("withdrawn"):
                continue
            info = advisory["advisory"]
            if not affected(advisory, pkg["version"]):
                continue
            line = f"{info['id']}: {pkg['name']} {pkg['version']}: {info.get('title', path.stem)}"
            if info.get("informational"):
                warnings.append(f"{info['informational']}: {line}")
            elif info["id"] in ACCEPTED:
                warnings.append(f"accepted: {line} ({ACCEPTED[info['id']]})")
            else:
                failures.append(f"vulnerable: {line}")
    host = re.search(r"host: (\S+)", subprocess.run(
        ["rustc", "-vV"], check=True, capture_output=True, text=True).stdout).group(1)
    metadata = json.loads(subprocess.run(
        ["cargo", "metadata", "--format-version", "1", "--locked", "--filter-platform", host],
        cwd=ROOT, check=True, capture_output=True, text=True).stdout)
    for pkg in metadata["packages"]:
        if pkg.get("source") is None:
            continue
        expr = pkg.get("license") or ""
        names = {n.strip("() ") for n in re.split(r"\s+(?:OR|AND)\s+|/", expr) if n.strip("() ")}
        if not names or not names <= ALLOWED_LICENSES:
            failures.append(f"license: {pkg['name']} {pkg['version']}: {expr or 'none given'}")
    for line in warnings:
        print(f"warning: {line}")
    for line in failures:
        print(f"error: {line}")
    print(f"{len(packages)} locked packages checked against {db.name}: "
          f"{len(failures)} problems, {len(warnings)} warnings")
    return 1 if failures else 0


def self_test():
    cases = [("1.2.3", ">= 1.2.0", True), ("1.1.9", ">= 1.2.0", False),
             ("0.9.8", "^0.9.1", True), ("0.10.0", "^0.9.1", False), ("0.9.0", "^0.9.1", False),
             ("1.5.0", ">= 1.0, < 2", True), ("2.0.0", ">= 1.0, < 2", False),
             ("0.3.5", "~0.3.1", True), ("0.4.0", "~0.3.1", False), ("1.0.0-rc.1", ">= 1.0.0", False)]
    bad = [c for c in cases if matches(c[0], c[1]) != c[2]]
    advisory = {"versions": {"patched": [">= 0.9.7"], "unaffected": ["< 0.8"]}}
    bad += [v for v, want in [("0.9.6", True), ("0.9.7", False), ("0.7.0", False)]
            if affected(advisory, v) != want]
    print("self-test:", "ok" if not bad else f"FAILED {bad}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(self_test() if sys.argv[1:] == ["--self-test"] else main())
