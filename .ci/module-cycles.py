#!/usr/bin/env python3
"""Fail (exit 1) when modules of src/ import each other in a circle; exit 0 otherwise.

Graphs: the top-level modules declared by src/lib.rs and src/main.rs (the binary reaches the
library as `<lib_name>::X`), and the children of every directory module (e.g. keys::*).
Edge A -> B: a `crate::B`, `super::B`, `self::..` path or a (grouped, `pub`) `use` of one in
A's files; a name re-exported by lib.rs (or by a parent's mod.rs, for siblings) counts for the
module it comes from. Comments, strings, `#[cfg(test)]` items and tests.rs files are ignored.

Usage: .ci/module-cycles.py [CRATE_ROOT] | --self-test     (default root: parent of .ci/)
"""
import bisect
import re
import sys
import tempfile
from collections import deque
from pathlib import Path

RAW_STR = re.compile(r'b?r(#*)"')
TEST_ATTR = re.compile(r"#\s*\[\s*cfg\s*\(\s*test\s*\)\s*\](?:\s*#\s*\[[^\]]*\])*\s*")
USE = re.compile(r"(?:\b(pub)\b(?:\s*\([^)]*\))?\s+)?\buse\s+([^;]*);")
MOD_DECL = re.compile(r"\bmod\s+(\w+)\s*;")
INLINE_MOD = re.compile(r"\bmod\s+(\w+)\s*\{")


def literal_end(text, i):
    """If a comment or a string/char literal starts at text[i], the index just past it."""
    n = len(text)
    raw = RAW_STR.match(text, i) if not text[i - 1:i].isidentifier() else None
    if text.startswith("//", i):
        return n if text.find("\n", i) < 0 else text.find("\n", i)
    if text.startswith("/*", i):  # block comments nest
        depth, j = 0, i
        while j < n:
            depth += {"/*": 1, "*/": -1}.get(text[j:j + 2], 0)
            j += 2 if text[j:j + 2] in ("/*", "*/") else 1
            if depth == 0:
                return j
        return n
    if raw:
        close = text.find('"' + raw[1], raw.end())
        return n if close < 0 else close + 1 + len(raw[1])
    if text[i] == '"':
        j = i + 1
        while j < n and text[j] != '"':
            j += 2 if text[j] == "\\" else 1
        return j + 1
    if text[i] == "'" and text[i + 1:i + 2] == "\\":  # '\n', '\'', '\u{..}'
        return text.find("'", i + 3) + 1
    if text[i] == "'" and text[i + 2:i + 3] == "'":  # 'x'; a lifetime 'a has no closing quote
        return i + 3
    return None


def blank(text, start, stop):
    """text with [start, stop) replaced by spaces, newlines kept (so offsets and lines stay)."""
    return text[:start] + re.sub(r"[^\n]", " ", text[start:stop]) + text[stop:]


def strip_code(text):
    """Blank comments (doc comments too), string and char literals, and `#[cfg(test)]` items."""
    out, i = list(text), 0
    while i < len(text):
        j = literal_end(text, i)
        if j is not None:
            out[i:j] = ["\n" if ch == "\n" else " " for ch in text[i:j]]
        i = max(j or 0, i + 1)
    code, stop = "".join(out), 0
    for m in TEST_ATTR.finditer(code):  # blank the item after it: `mod x {..}`, `mod x;`, `use ..;`, ..
        if m.start() >= stop:  # (not one inside an item already blanked)
            ends = [k for k in (code.find(";", m.end()), code.find("{", m.end())) if k >= 0] or [len(code)]
            stop = code.find(";", m.end()) if code.startswith("use", m.end()) else min(ends)
            stop = matching_brace(code, stop) if code[stop:stop + 1] == "{" else stop + 1
            code = blank(code, m.start(), stop)
    return code


def matching_brace(code, i):
    """Index just past the brace that closes the one at code[i]."""
    depth = 0
    for j in range(i, len(code)):
        depth += {"{": 1, "}": -1}.get(code[j], 0)
        if depth == 0:
            return j + 1
    return len(code)


def expand_use(body, base):
    """Expand a use tree `a::{self, b::c as d}` into (segments, bound name, offset) leaves."""
    toks = [(m[0], base + m.start()) for m in re.finditer(r"::|[{},*]|\$?\w+", body)] + [(",", 0)]
    leaves = []
    def tree(i, prefix):
        path, name, off = list(prefix), None, base
        while toks[i][0] not in ",}":
            tok, i = toks[i][0], i + 1
            if tok == "{":
                while toks[i][0] != "}":
                    i = tree(i, path)
                    i += toks[i][0] == ","
                return i + 1
            if tok == "as":
                name, i = toks[i][0], i + 1
            elif tok != "::" and not (tok == "self" and prefix and path == prefix):
                path.append(tok)
                off = toks[i - 1][1]
        if path:
            leaves.append((path, name or path[-1], off))
        return i
    tree(0, [])
    return leaves


def absolute(segs, cur, krate, lib_name):
    """(crate, absolute path) of a path written in module `cur`, or None for a bare path."""
    ups = next((k for k, seg in enumerate(segs) if seg != "super"), len(segs))
    if segs[0] in ("crate", "$crate") or (lib_name and segs[0] == lib_name):
        return ("lib" if segs[0] == lib_name else krate), tuple(segs[1:])
    if segs[0] == "self":
        return krate, cur + tuple(segs[1:])
    return (krate, cur[:len(cur) - ups] + tuple(segs[ups:])) if 0 < ups <= len(cur) else None


def parse_file(path, krate, mod, lib_name):
    """A module file's references [(crate, abs path, line, text)], re-exports and `mod x;` names."""
    text = path.read_text(encoding="utf-8")
    code = strip_code(text)
    inline = [(m.start(), matching_brace(code, m.end() - 1), m[1]) for m in INLINE_MOD.finditer(code)]
    cur_at = lambda off: mod + tuple(name for start, stop, name in inline if start <= off < stop)  # super::
    refs, reexports = [], {}
    for m in USE.finditer(code):
        for segs, name, off in expand_use(m[2], m.start(2)):
            target = absolute(segs, cur_at(off), krate, lib_name)
            refs += [(*target, off)] if target else []
            if m[1] and segs[-1] != "*" and cur_at(off) == mod:
                reexports[name] = (target or (krate, mod + tuple(segs)))[1]
    code = USE.sub(lambda m: blank(m[0], 0, len(m[0])), code)
    heads = r"\$crate|crate|super|self" + (f"|{lib_name}" if lib_name else "")
    for m in re.finditer(rf"(?<![\w:$])({heads})((?:\s*::\s*\w+)+)", code):
        target = absolute([m[1]] + re.findall(r"\w+", m[2]), cur_at(m.start()), krate, lib_name)
        refs += [(*target, m.start())] if target else []
    newlines, lines = [k for k, ch in enumerate(text) if ch == "\n"], text.split("\n")
    located = []
    for krate_, abs_path, off in sorted(refs, key=lambda ref: ref[2]):
        k = bisect.bisect_left(newlines, off)
        located.append((krate_, abs_path, k + 1, lines[k].strip()))
    return located, reexports, MOD_DECL.findall(code)


def lib_name_of(root):
    """The library's name as code writes it: `[lib] name`, else the package name, `-` -> `_`."""
    names, table = {}, None
    for line in (root / "Cargo.toml").read_text(encoding="utf-8").splitlines():
        if line.strip().startswith("["):
            table = line.strip().strip("[] ")
        elif m := re.match(r'\s*name\s*=\s*"([^"]+)"', line):
            names.setdefault(table, m[1])
    return (names.get("lib") or names.get("package") or "").replace("-", "_")


def load(root):
    """Follow `mod x;` from src/lib.rs and src/main.rs: {(crate, module path): parsed file}, notes."""
    lib_name, files, notes = lib_name_of(root), {}, []
    queue = [(krate, (), [root / "src" / f]) for krate, f in (("lib", "lib.rs"), ("bin", "main.rs"))]
    while queue:
        krate, mod, candidates = queue.pop(0)
        path = next((p for p in candidates if p.exists()), None)
        if "tests" in mod or (path is None and not mod):
            continue
        if path is None:
            notes.append(f"note: {krate} module {'::'.join(mod)} has no file (skipped)")
            continue
        files[(krate, mod)] = (path, *parse_file(path, krate, mod, lib_name))
        here = path.parent if path.name in ("lib.rs", "main.rs", "mod.rs") else path.with_suffix("")
        for child in files[(krate, mod)][3]:
            queue.append((krate, mod + (child,), [here / f"{child}.rs", here / child / "mod.rs"]))
    used = {f[0] for f in files.values()} | set((root / "src").rglob("tests.rs"))
    stray = sorted(str(p.relative_to(root)) for p in (root / "src").rglob("*.rs") if p not in used)
    notes += [f"note: not declared by any module (ignored): {', '.join(stray)}"] if stray else []
    return files, notes


def analyse(root):
    """The crate's graph nodes, edges {(a, b): (file, line, text)}, cycles and notes."""
    root = Path(root)
    files, notes = load(root)
    def through(krate, prefix, abs_path):
        """Replace a name re-exported by module `prefix` with the path it comes from."""
        n, table = len(prefix), files.get((krate, prefix), (None, None, {}))[2]
        if abs_path[:n] != prefix or len(abs_path) <= n or (krate, abs_path[:n + 1]) in files:
            return abs_path  # not below prefix, or a real module
        return table[abs_path[n]] + abs_path[n + 1:] if abs_path[n] in table else abs_path
    def label(krate, mod):
        """`keys`, `keys::lifecycle`; binary modules get `bin:` if the library has one of that name."""
        return ("bin:" if krate == "bin" and ("lib", mod[:1]) in files else "") + "::".join(mod[:2])
    nodes = {label(k, m) for k, m in files if len(m) in (1, 2)}
    edges = {}
    for (krate, mod), (path, refs, _, _) in sorted(files.items()):
        for target_crate, abs_path, line, text in refs if mod else []:
            example = (str(path.relative_to(root)), line, text)
            abs_path = through(target_crate, (), abs_path)  # crate::KeySet -> keys::KeySet
            top = (target_crate, abs_path[:1])
            if abs_path and top in files and top != (krate, mod[:1]):
                edges.setdefault((label(krate, mod[:1]), label(target_crate, abs_path[:1])), example)
            if len(mod) > 1 and target_crate == krate and abs_path[:1] == mod[:1]:
                abs_path = through(krate, mod[:1], abs_path)  # super::AppState -> server::state::AppState
                if (krate, abs_path[:2]) in files and len(abs_path) > 1 and abs_path[:2] != mod[:2]:
                    edges.setdefault((label(krate, mod), label(krate, abs_path)), example)
    return nodes, edges, find_cycles(edges), notes


def find_cycles(edges):
    """For each edge on a cycle, the shortest cycle through it (deduplicated, smallest node first)."""
    cycles = set()
    for a, b in edges:
        prev, todo = {b: None}, deque([b])  # breadth-first from b back to a
        while todo and a not in prev:
            node = todo.popleft()
            for nxt in sorted(y for x, y in edges if x == node and y not in prev):
                prev[nxt] = node
                todo.append(nxt)
        cycle = [a] if a in prev else []
        while cycle and prev[cycle[-1]] is not None:
            cycle.append(prev[cycle[-1]])
        if cycle:
            cycle = [a] + cycle[:0:-1]
            k = cycle.index(min(cycle))
            cycles.add(tuple(cycle[k:] + cycle[:k]))
    return sorted(cycles, key=lambda c: (len(c), c))


def report(root):
    """Print the cycles of the crate at root, with one example per edge; return the exit code."""
    nodes, edges, cycles, notes = analyse(root)
    print("\n".join(notes + [f"{len(cycles) or 'no'} module cycles"]), f"({len(nodes)} modules, {len(edges)} edges)")
    for cycle in cycles:
        ring = list(cycle) + [cycle[0]]
        print("\n  " + " -> ".join(ring))
        for a, b in zip(ring, ring[1:]):
            print(f"    {a} -> {b}: %s:%s: %s" % edges[(a, b)])
    return 1 if cycles else 0


LIB_AB = "pub mod a;\npub mod b;\n"
SELF_TESTS = {  # name: (files, expected cycles, edges that must exist, edges that must not)
    "cycle via use crate::": ({
        "src/lib.rs": LIB_AB,
        "src/a.rs": "use crate::b::f;\n",
        "src/b.rs": "pub fn f() { crate::a::g() }\n",
    }, [("a", "b")], [], []),
    "cycle via lib.rs re-export": ({
        "src/lib.rs": "pub mod a;\nmod b;\npub use b::{Thing as T, f};\n",
        "src/a.rs": "use crate::{T, x::y};\n",
        "src/b.rs": "use crate::a;\n",
    }, [("a", "b")], [], []),
    "sibling cycle via super::": ({
        "src/lib.rs": "pub mod p;\n",
        "src/p/mod.rs": "mod x;\nmod y;\nmod z;\npub use x::X;\npub struct P;\n",
        "src/p/x.rs": "use super::{y::Y, P};\npub struct X;\n",
        "src/p/y.rs": "pub struct Y(super::X);\n",
        "src/p/z.rs": "fn x() {}\nmod inner { use super::x; fn f() -> super::super::P { super::super::P } }\n",
    }, [("p::x", "p::y")], [("p::x", "p::y"), ("p::y", "p::x")], [("p::z", "p::x")]),
    "comments, strings, test code": ({
        "src/lib.rs": LIB_AB,
        "src/a.rs": "use crate::b;\n#[cfg(test)]\nmod tests;\n",
        "src/a/tests.rs": "use crate::b;\n",
        "src/b.rs": "//! see [crate::a]\n/// crate::a::f\nfn f() { /* crate::a /* nested */ crate::a */\n"
                    "    let s = \"use crate::a;\\\"\"; let r = r#\"x \"crate::a::f\" y\"#; let c = '{'; let q = '\\''; }\n"
                    "fn g<'a>(x: &'a str) -> &'a str { x }\n#[cfg(test)]\nmod tests { use crate::a::f; }\n",
    }, [], [("a", "b")], [("b", "a")]),
    "acyclic, with a binary": ({
        "Cargo.toml": '[package]\nname = "demo-crate"\n',
        "src/lib.rs": LIB_AB + "pub use a::A;\n",
        "src/a.rs": "pub struct A(crate::b::B);\n",
        "src/b.rs": "pub struct B;\n",
        "src/main.rs": "mod cli;\nmod util;\n",
        "src/cli.rs": "use demo_crate::A;\nuse crate::util;\n",
        "src/util.rs": "pub fn u() -> demo_crate::b::B { demo_crate::b::B }\n",
    }, [], [("a", "b"), ("cli", "a"), ("cli", "util"), ("util", "b")], [("b", "a")]),
}


def self_test():
    """Run the check on the synthetic trees of SELF_TESTS; return the exit code."""
    failures = 0
    for name, (tree, want_cycles, must, must_not) in SELF_TESTS.items():
        with tempfile.TemporaryDirectory() as tmp:
            for rel, text in {"Cargo.toml": '[package]\nname = "demo"\n', **tree}.items():
                (Path(tmp) / rel).parent.mkdir(parents=True, exist_ok=True)
                (Path(tmp) / rel).write_text(text, encoding="utf-8")
            _, edges, cycles, _ = analyse(tmp)
        problems = [f"cycles {cycles} != {want_cycles}"] if cycles != want_cycles else []
        problems += [f"missing edge {e}" for e in must if e not in edges]
        problems += [f"unexpected edge {e}: {edges[e]}" for e in must_not if e in edges]
        print(f"{'FAIL' if problems else 'ok  '} {name}" + "".join(f"\n       {p}" for p in problems))
        failures += bool(problems)
    print(f"self-test: {len(SELF_TESTS) - failures}/{len(SELF_TESTS)} passed")
    return 1 if failures else 0


def main(argv):
    """`--self-test`, or check the crate at argv[0] (default: the repo root)."""
    if argv == ["--self-test"]:
        return self_test()
    root = Path(argv[0]) if argv else Path(__file__).resolve().parent.parent
    if len(argv) > 1 or argv[:1] and argv[0].startswith("-") or not (root / "Cargo.toml").exists():
        print(f"usage: {sys.argv[0]} [CRATE_ROOT (with Cargo.toml)] | --self-test", file=sys.stderr)
        return 2
    return report(root)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
