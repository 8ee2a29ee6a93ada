#!/usr/bin/env python3
"""test_layers: the include lines of grid's sources point down only.

Reads the module table of docs/architecture.md (layer, module, files) and
checks every C file under common/, grid/src/ and client/src/:
  - every file is in the table, and every file the table names exists;
  - an #include "x" names a file of the same module or of a lower layer
    (system headers, and the generated grid.pb-c.h, are open to all);
  - no two modules include each other;
  - nothing below the client includes grid.h, and no client file but
    embedded.c includes a header of grid/src/;
  - foundation-shim/ (Thing state) sees grid through grid.h alone.

usage: test_layers.py SOURCE_DIR
"""
import os
import re
import sys


def read_table(root):
    path = os.path.join(root, "docs", "architecture.md")
    rows = {}
    for line in open(path, encoding="utf-8"):
        m = re.match(r"^\|\s*(\d+)\s*\|\s*([\w]+)\s*\|([^|]*)\|", line)
        if not m:
            continue
        layer, module = int(m.group(1)), m.group(2)
        for f in re.findall(r"`([^`]+)`", m.group(3)):
            rows[f] = (layer, module)
    return rows


def sources(root):
    out = []
    for d in ("common", "grid/src", "client/src", "foundation-shim"):
        for dirpath, _, names in os.walk(os.path.join(root, d)):
            for n in names:
                if n.endswith((".c", ".h")):
                    out.append(os.path.relpath(os.path.join(dirpath, n), root))
    return sorted(out)


def resolve(root, including, name):
    """The repository path an #include "name" refers to, or None."""
    for d in (os.path.dirname(including), "common", "common/include", "grid/src",
              "client/src", "client/include", "foundation-shim/include", "foundation-shim/src"):
        p = os.path.normpath(os.path.join(d, name))
        if os.path.exists(os.path.join(root, p)):
            return p
    return None


def main():
    root = sys.argv[1] if len(sys.argv) > 1 else "."
    table = read_table(root)
    errors = []
    files = sources(root)
    for f in files:
        if f not in table:
            errors.append(f"{f} is not in docs/architecture.md's module table")
    for f in table:
        if not os.path.exists(os.path.join(root, f)):
            errors.append(f"docs/architecture.md names {f}, which does not exist")
    edges = set()
    for f in files:
        if f not in table:
            continue
        layer, module = table[f]
        for n, line in enumerate(open(os.path.join(root, f), encoding="utf-8"), 1):
            m = re.match(r'\s*#\s*include\s+"([^"]+)"', line)
            if not m:
                continue
            name = m.group(1)
            if name in ("grid.pb-c.h", "thing.pb-c.h"):
                continue
            if name == "grid.h":
                if not f.startswith(("client/", "foundation-shim/")):
                    errors.append(f"{f}:{n}: includes grid.h, the client's public header")
                continue
            target = resolve(root, f, name)
            if target is None or target not in table:
                if target is not None:
                    errors.append(f"{f}:{n}: includes {name}, which is not in the table")
                continue
            tlayer, tmodule = table[target]
            if f.startswith("foundation-shim/") and not target.startswith("foundation-shim/"):
                errors.append(f"{f}:{n}: includes {name}: foundation-shim sees grid "
                              "through grid.h alone")
            if (f.startswith("client/") and target.startswith("grid/src/")
                    and module != "embedded"):
                errors.append(f"{f}:{n}: a client file includes the node's {name} "
                              "(only embedded.c may)")
            if tmodule == module:
                continue
            if tlayer > layer:
                errors.append(f"{f}:{n}: {module} (layer {layer}) includes {name} of "
                              f"{tmodule} (layer {tlayer}): calls go down only")
            edges.add((module, tmodule))
    for a, b in sorted(edges):
        if (b, a) in edges and a < b:
            errors.append(f"{a} and {b} include each other")
    if errors:
        for e in errors:
            print(e, file=sys.stderr)
        return 1
    print(f"test_layers: ok ({len(files)} files, {len(edges)} module dependencies, all down)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
