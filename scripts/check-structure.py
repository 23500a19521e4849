#!/usr/bin/env python3
"""Checks the workspace's file structure, so that a newcomer can find their way in.

1. No import circles between files. `use crate::…`, `use super::…` and `use self::…` give a
   graph file -> file; files that import each other (directly or round a longer loop) cannot be
   read, tested or moved one at a time. Each strongly connected component is reported with its edges.
   Edges to the crate root (lib.rs/main.rs re-exports) and `#[cfg(test)]` modules are ignored, and
   so are edges from a module to its own parent (`use super::Traversal` in `traversal/round.rs`):
   a directory module is one unit whose files split one type's `impl` by responsibility, as
   quinn-proto's `connection/` does. Circles between siblings or between units are reported.
2. Unsafe only in `dataplane/src/sys/`: the one place a reviewer looks for memory-safety invariants.
3. No production file over 800 lines (inline `#[cfg(test)] mod … {` at the end does not count).

Standard library only. `--self-test` runs the checks on temporary trees and exits 1 if any is missed.
"""
import glob
import os
import re
import sys
import tempfile

SOURCE_DIRS = ["src", "dataplane/src", "control/src", "perf/src"]
UNSAFE_ONLY_DIRS = SOURCE_DIRS + ["benches", "examples", "fuzz/fuzz_targets"]
UNSAFE_ALLOWED = "dataplane/src/sys/"
MAX_LINES = 800

MOD_DECL = re.compile(r"^\s*(?:pub(?:\([^)]*\))?\s+)?mod\s+(\w+)\s*([;{])")
PATH_ATTR = re.compile(r'^\s*#\[path\s*=\s*"([^"]+)"\]')
USE_START = re.compile(r"^\s*(?:pub(?:\([^)]*\))?\s+)?use\s")
UNSAFE = re.compile(r"\bunsafe\b")
TEST_BLOCK = re.compile(r"^#\[cfg\(test\)\]\n(?:\s*#\[.*\n)*\s*(?:pub(?:\([^)]*\))?\s+)?mod \w+ \{", re.M)
TOKEN = re.compile(r"::|[{},*]|\w+")


def is_test_file(rel):
    parts = rel.split("/")
    return "target" in parts or "tests" in parts[:-1] or parts[-1] == "tests.rs"


def rust_files(root, dirs):
    for d in dirs:
        for dirpath, dirnames, filenames in os.walk(os.path.join(root, d)):
            dirnames[:] = sorted(n for n in dirnames if n not in ("target", "tests"))
            for name in sorted(filenames):
                rel = os.path.relpath(os.path.join(dirpath, name), root)
                if name.endswith(".rs") and not is_test_file(rel):
                    yield rel


def read_lines(root, rel):
    with open(os.path.join(root, rel), encoding="utf-8") as f:
        return f.read().split("\n")


def code_lines(lines):
    """Yields (index, line, inline module path, attributes before it), skipping `#[cfg(test)]` inline modules.

    Relies on rustfmt: an inline module closes with `}` at the indentation of its `mod` line."""
    stack, attrs, skip_until = [], [], None
    for i, line in enumerate(lines):
        stripped = line.strip()
        if skip_until is not None:
            skip_until = None if line.rstrip() == skip_until else skip_until
            continue
        if stack and line.rstrip() == stack[-1][1]:
            stack.pop()
            continue
        if stripped.startswith("#["):
            attrs.append(stripped)
            continue
        if stripped.startswith("//"):
            continue
        m = MOD_DECL.match(line)
        if m and m.group(2) == "{" and not stripped.endswith("}"):
            close = line[: len(line) - len(line.lstrip())] + "}"
            if "#[cfg(test)]" in attrs:
                skip_until = close
            else:
                stack.append((m.group(1), close))
            attrs = []
            continue
        yield i, line, [name for name, _ in stack], attrs
        attrs = []


def production_length(lines):
    """Lines before the first inline `#[cfg(test)] mod … {`, or all lines."""
    text = "\n".join(lines).rstrip("\n") + "\n"
    test_block = TEST_BLOCK.search(text)
    return text.count("\n", 0, test_block.start() if test_block else len(text))


def crate_roots(root):
    """Crate root files: lib.rs and main.rs of each source dir, and each src/bin/ binary."""
    patterns = [f"{d}/{n}" for d in SOURCE_DIRS for n in ("lib.rs", "main.rs", "bin/*.rs", "bin/*/main.rs")]
    return [os.path.relpath(f, root) for p in patterns for f in sorted(glob.glob(os.path.join(root, p)))]


def module_tree(root, crate_root, modules):
    """Fills modules[(crate_root, path tuple)] = file, following `mod name;` declarations."""
    pending = [((), crate_root, True)]
    while pending:
        path, rel, mod_rs = pending.pop()
        modules[(crate_root, path)] = rel
        base = os.path.dirname(rel) if mod_rs else rel[: -len(".rs")]
        for _, line, inline, attrs in code_lines(read_lines(root, rel)):
            m = MOD_DECL.match(line)
            if m and m.group(2) == ";" and not inline and "#[cfg(test)]" not in attrs:
                override = next((PATH_ATTR.match(a).group(1) for a in attrs if PATH_ATTR.match(a)), None)
                name = m.group(1)
                if override:
                    child, child_mod_rs = os.path.normpath(os.path.join(os.path.dirname(rel), override)), True
                elif os.path.isfile(os.path.join(root, base, name + ".rs")):
                    child, child_mod_rs = os.path.join(base, name + ".rs"), False
                else:
                    child, child_mod_rs = os.path.join(base, name, "mod.rs"), True
                if os.path.isfile(os.path.join(root, child)) and not is_test_file(child):
                    pending.append((path + (name,), child, child_mod_rs))
    return modules


def expand_use(tokens):
    """`a::{b::C as D, e::{self, F}}` as tokens -> [([a, b, C], D), ([a, e], e), ([a, e, F], F)]."""
    pos = 0

    def tree(prefix):
        nonlocal pos
        path, alias = list(prefix), None
        while pos < len(tokens) and tokens[pos] not in (",", "}"):
            tok, pos = tokens[pos], pos + 1
            if tok == "{":
                paths = []
                while pos < len(tokens) and tokens[pos] != "}":
                    paths += tree(path)
                    pos += tokens[pos : pos + 1] == [","]
                pos += 1
                return paths
            if tok == "as":
                alias, pos = (tokens[pos : pos + 1] or [None])[0], pos + 1
            elif tok != "::" and not (tok == "self" and prefix and path == prefix):
                path.append(tok)
        return [(path, alias or (path[-1] if path else None))] if path else []

    return tree([])


def use_statements(lines):
    """Yields (line number, inline module path, use tree tokens) for every non-test `use`."""
    current = None
    for i, line, inline, _ in code_lines(lines):
        text = line.split("//")[0]
        if current is None and USE_START.match(text):
            current = [i + 1, inline, USE_START.sub("", text)]
        elif current is not None:
            current[2] += " " + text
        if current is not None and ";" in current[2]:
            yield current[0], current[1], TOKEN.findall(current[2].split(";")[0])
            current = None


class Workspace:
    """The module trees of all crates, and each file's top-level `use` bindings (to follow re-exports)."""

    def __init__(self, root):
        self.modules, self.module_of, self.bindings, self.uses = {}, {}, {}, {}
        for crate_root in crate_roots(root):
            module_tree(root, crate_root, self.modules)
        for (crate_root, mod_path), rel in sorted(self.modules.items()):
            if rel in self.module_of:
                continue
            self.module_of[rel], self.bindings[rel], self.uses[rel] = (crate_root, mod_path), {}, []
            for line_no, inline, tokens in use_statements(read_lines(root, rel)):
                for path, name in expand_use(tokens):
                    self.uses[rel].append((line_no, list(mod_path) + inline, path))
                    if not inline:
                        self.bindings[rel][name] = path

    def resolve(self, path, crate_root, module, depth=0):
        """The file defining what a `use` path names, or None if it is outside the crate."""
        if path[0] == "crate":
            at, rest = (), path[1:]
        elif path[0] in ("self", "super"):
            at, rest = tuple(module), list(path)
            while rest and rest[0] in ("self", "super"):
                at = at[:-1] if rest.pop(0) == "super" else at
        elif (crate_root, tuple(module) + (path[0],)) in self.modules:
            at, rest = tuple(module), list(path)
        else:
            return None
        full = at + tuple(rest)
        n = next(n for n in range(len(full), -1, -1) if (crate_root, full[:n]) in self.modules)
        rel, leftover = self.modules[(crate_root, full[:n])], list(full[n:])
        reexport = leftover and self.bindings.get(rel, {}).get(leftover[0])
        if reexport and depth < 8:  # `super::Name` where the parent only re-exports Name
            return self.resolve(reexport + leftover[1:], *self.module_of[rel], depth + 1)
        return rel

    def parent_file(self, rel):
        """The file of the module that declares `rel`'s module (None for a crate root)."""
        crate_root, mod_path = self.module_of[rel]
        return self.modules.get((crate_root, tuple(mod_path)[:-1])) if mod_path else None

    def edges(self):
        """{(file, imported file): [first line, [names]]}, without the crate root and self-edges."""
        edges = {}
        for rel, uses in sorted(self.uses.items()):
            crate_root = self.module_of[rel][0]
            for line_no, module, path in uses:
                target = self.resolve(path, crate_root, module)
                if target and target not in (rel, crate_root, self.parent_file(rel)):
                    edges.setdefault((rel, target), [line_no, []])[1].append(path[-1])
        return edges


def circles(edges):
    """The strongly connected components with more than one file: files that all reach each other."""
    succ = {}
    for src, dst in edges:
        succ.setdefault(src, set()).add(dst)
    reach = {}
    for start in succ:
        seen, todo = set(), [start]
        while todo:
            for nxt in succ.get(todo.pop(), ()):
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        reach[start] = seen
    components = {tuple(sorted(m for m in reach if m in reach[n] and n in reach[m])) for n in reach}
    return sorted(c for c in components if len(c) > 1)


def check(root):
    """Returns (findings, number of files scanned, (largest production file, its length))."""
    findings = []
    edges = Workspace(root).edges()
    for component in circles(edges):
        common = os.path.commonpath(component)
        members = f"{common}/{{{', '.join(os.path.relpath(f, common) for f in component)}}}"
        for (src, dst), (line_no, names) in sorted(edges.items(), key=lambda e: (e[0][0], e[1][0], e[0][1])):
            if src in component and dst in component:
                findings.append(f"{src}:{line_no}: imports {', '.join(sorted(set(names)))} from {dst}, in the import "
                                f"circle {members}; move what both need into a module neither imports back")
    files = list(rust_files(root, UNSAFE_ONLY_DIRS))
    largest = ("", 0)
    for rel in files:
        lines = read_lines(root, rel)
        if not rel.startswith(UNSAFE_ALLOWED):
            for i, line in enumerate(lines):
                if UNSAFE.search(line):
                    findings.append(f"{rel}:{i + 1}: `unsafe` outside {UNSAFE_ALLOWED}; move it behind a safe "
                                    f"function in {UNSAFE_ALLOWED}")
        if not any(rel.startswith(d + "/") for d in SOURCE_DIRS):
            continue
        length = production_length(lines)
        largest = max(largest, (rel, length), key=lambda x: x[1])
        if length > MAX_LINES:
            findings.append(f"{rel}:{MAX_LINES + 1}: {length} lines of production code (limit {MAX_LINES}); "
                            f"split it into files named after what each part owns")
    return findings, len(files), largest


def self_test():
    clean = {
        "src/lib.rs": "pub mod a;\npub mod b;\npub mod n;\npub use a::A;\n",
        "src/n/mod.rs": "mod k;\nmod m;\npub use k::K;\nuse m::M;\n",  # m imports K through this re-export
        "src/n/k.rs": "pub struct K;\n",
        "src/n/m.rs": "use super::K;\npub struct M(K);\n",
        "src/a.rs": "use crate::b::B;\npub struct A(B);\n#[cfg(test)]\nmod tests {\n    use super::super::a;\n}\n",
        "src/b.rs": "//! the b module\npub struct B;\n#[cfg(test)]\nmod tests {\n    use crate::a::A;\n}\n",
        "src/main.rs": "mod cli;\nuse crate::cli::{\n    Args,\n    sub::{Run, Stop},\n};\nfn main() {}\n",
        "src/cli/mod.rs": "pub mod sub;\nuse sub::Run;\npub struct Args;\n",  # parent <-> child: one unit
        "src/cli/sub.rs": "use super::Args;\npub struct Run;\npub struct Stop;\n",
        "dataplane/src/lib.rs": "pub mod sys;\n",
        "dataplane/src/sys/mod.rs": "pub fn f() { unsafe { g() } }\n",
        "src/big.rs": "// x\n" * 800 + "#[cfg(test)]\nmod tests {\n" + "// y\n" * 100 + "}\n",
    }
    broken = dict(clean)
    broken["src/b.rs"] = "use super::a::A;\npub struct B;\n"
    broken["src/main.rs"] = "mod cli;\n#[path = \"cli/shared.rs\"]\nmod shared;\nfn main() {}\n"
    broken["src/cli/shared.rs"] = "use crate::cli::sub::Run;\npub struct X;\n"
    broken["src/cli/sub.rs"] = "pub(crate) use super::{\n    Args as A,\n    super::shared::X,\n};\npub struct Run;\n"
    broken["examples/e.rs"] = "fn main() {\n    unsafe { f() };\n}\n"
    broken["control/src/lib.rs"] = "pub mod long;\n"
    broken["control/src/long.rs"] = "// x\n" * 801
    expected = ["src/a.rs:1: imports B from src/b.rs", "src/b.rs:1: imports A from src/a.rs",
                "src/cli/shared.rs:1: imports Run", "src/cli/sub.rs:1: imports X", "examples/e.rs:2: `unsafe`", "control/src/long.rs:801: 801 lines"]
    failed = False
    for name, files, wanted in (("clean", clean, []), ("broken", broken, expected)):
        with tempfile.TemporaryDirectory() as tmp:
            for rel, text in files.items():
                os.makedirs(os.path.dirname(os.path.join(tmp, rel)), exist_ok=True)
                with open(os.path.join(tmp, rel), "w", encoding="utf-8") as f:
                    f.write(text)
            findings, _, _ = check(tmp)
        for want in wanted:
            if not any(f.startswith(want) for f in findings):
                print(f"self-test: the {name} tree should report `{want}…`", file=sys.stderr)
                failed = True
        if len(findings) != len(wanted):
            print(f"self-test: the {name} tree reported {len(findings)} findings, expected {len(wanted)}:",
                  *findings, sep="\n  ", file=sys.stderr)
            failed = True
    print("self-test failed" if failed else "self-test ok: circles, unsafe and file size are each reported")
    return 1 if failed else 0


def main():
    if sys.argv[1:] == ["--self-test"]:
        return self_test()
    root = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
    findings, count, (largest, length) = check(root)
    for finding in findings:
        print(finding)
    if findings:
        return 1
    print(f"structure ok: {count} files, no import circles, unsafe only in {UNSAFE_ALLOWED}, "
          f"largest {largest} ({length} lines)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
