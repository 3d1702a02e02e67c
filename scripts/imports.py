#!/usr/bin/env python3
"""The graph of `crate::` imports between the files of src/: cycles, and imports that run up.

Usage: scripts/imports.py [--edges]
Prints every strongly connected component with more than one file (a cycle) and every import
from a module to one in a higher layer (LAYERS below, the same as lib.rs's "Layers"); exits 1
if there is any. Test modules count: a test may only use what its module may.
"""
import os, re, sys
from collections import defaultdict

ROOT = os.path.join(os.path.dirname(__file__), "..", "src")

def module_of(path):
    rel = os.path.relpath(path, ROOT)[:-3]
    parts = rel.split(os.sep)
    if parts[-1] in ("mod", "lib", "main"):
        parts = parts[:-1]
    return "::".join(parts)

files = {}
for d, _, fs in os.walk(ROOT):
    for f in fs:
        if f.endswith(".rs"):
            p = os.path.join(d, f)
            files[module_of(p)] = p

mods = set(files)

def resolve(path):
    parts = path.split("::")
    while parts:
        m = "::".join(parts)
        if m in mods:
            return m
        parts = parts[:-1]
    return None

def expand(prefix, body):
    # body: contents of a use tree (after crate::); returns full paths
    out = []
    body = body.strip()
    if body.startswith("{") and body.endswith("}"):
        depth = 0; cur = ""
        for ch in body[1:-1]:
            if ch == "{": depth += 1
            if ch == "}": depth -= 1
            if ch == "," and depth == 0:
                out += expand(prefix, cur); cur = ""
            else:
                cur += ch
        if cur.strip(): out += expand(prefix, cur)
        return out
    m = re.match(r"([\w:]*?)(::)?(\{.*\})$", body, re.S)
    if m and m.group(3):
        p = (prefix + "::" + m.group(1)).strip(":") if m.group(1) else prefix
        return expand(p, m.group(3))
    name = re.split(r"\s+as\s+", body)[0].strip()
    if name in ("self", "*"):
        return [prefix]
    return [(prefix + "::" + name).strip(":")]

edges = defaultdict(set)
for mod, p in files.items():
    src = open(p).read()
    src = re.sub(r"//[^\n]*", "", src)
    # test modules count too, but files named tests.rs are excluded as sources of layering
    for m in re.finditer(r"\buse\s+crate::(.*?);", src, re.S):
        for full in expand("", m.group(1)):
            t = resolve(full)
            if t and t != mod and not mod.startswith(t + "::") and not t.startswith(mod + "::"):
                edges[mod].add(t)
    for m in re.finditer(r"\bcrate::((?:\w+::)*\w+)", src):
        t = resolve(m.group(1))
        if t and t != mod and not mod.startswith(t + "::") and not t.startswith(mod + "::"):
            edges[mod].add(t)
    # super:: references
    for m in re.finditer(r"\bsuper::((?:\w+::)*\w+)", src):
        base = mod.split("::")[:-1]
        if p.endswith("mod.rs"):
            base = mod.split("::")[:-1]
        t = resolve("::".join(base + m.group(1).split("::")))
        if t and t != mod and not mod.startswith(t + "::") and not t.startswith(mod + "::"):
            edges[mod].add(t)

# Tarjan
index = {}; low = {}; stack = []; on = set(); sccs = []; i = [0]
sys.setrecursionlimit(10000)
def strong(v):
    index[v] = low[v] = i[0]; i[0] += 1; stack.append(v); on.add(v)
    for w in edges.get(v, ()):
        if w not in index:
            strong(w); low[v] = min(low[v], low[w])
        elif w in on:
            low[v] = min(low[v], index[w])
    if low[v] == index[v]:
        c = []
        while True:
            w = stack.pop(); on.discard(w); c.append(w)
            if w == v: break
        sccs.append(c)
for v in sorted(mods):
    if v not in index: strong(v)

if "--edges" in sys.argv:
    for a in sorted(edges):
        print(a, "->", ", ".join(sorted(edges[a])))
# Top first; a module may import its own layer (without cycles) and the layers below it.
# The longest matching prefix places a module.
LAYERS = [
    ["", "cli", "commands"],
    ["daemon", "recovery"],
    ["settings"],
    ["ha"],
    ["scheduler", "finish", "executor"],
    ["scan", "watcher", "plan::catalog"],
    ["api::client", "api::credentials", "api::iam", "api::service_clock"],
    ["store", "journal", "retention"],
    ["plan", "value_files", "results", "schedule"],
    ["emulator"],
    ["api", "auth", "issue", "yaml", "secret", "duration", "wall_clock", "signals",
     "telemetry", "metrics", "zone"],
]

def layer(m):
    best, at = -1, None
    for i, names in enumerate(LAYERS):
        for n in names:
            if (m == n or m.startswith(n + "::") or n == "") and len(n) > best:
                best, at = len(n), i
    return at

upward = [(a, b) for a in sorted(edges) for b in sorted(edges[a]) if layer(b) < layer(a)]
for a, b in upward:
    print(f"up: {a} (layer {layer(a)}) -> {b} (layer {layer(b)})")

cycles = [c for c in sccs if len(c) > 1]
for c in cycles:
    c = sorted(c)
    print("cycle:", " ".join(c))
    for a in c:
        for b in sorted(edges[a]):
            if b in c: print("   ", a, "->", b)
sys.exit(1 if cycles or upward else 0)
