#!/usr/bin/env python3
"""Every image the docs show is there and says which command makes it.

For each `![alt](path)` in README.md, BENCHMARKS.md and docs/*.md: the file exists, and one of the
three lines above the embed is `<!-- made by: COMMAND -->` (run from the repository's root). A
command that needs no build or lab (traverse.py --grid-from, which draws a grid from a table in the
docs) is run again into a temporary file, and its output must equal the committed image: the grid
cannot drift from its table. Images under docs/img/ that nothing shows fail too (stale plots).

    scripts/check-plots.py              # check the repository
    scripts/check-plots.py --self-test  # check that the check catches what it should
"""

import os
import re
import shlex
import subprocess
import sys
import tempfile

EMBED = re.compile(r"!\[[^\]]*\]\(([^)\s]+)\)")
MADE_BY = re.compile(r"<!--\s*made by:\s*(.+?)\s*-->")
LOOK_BACK = 3


def doc_files(root):
    docs = [os.path.join(root, "README.md"), os.path.join(root, "BENCHMARKS.md")]
    docs_dir = os.path.join(root, "docs")
    if os.path.isdir(docs_dir):
        docs += sorted(os.path.join(docs_dir, f) for f in os.listdir(docs_dir) if f.endswith(".md"))
    return [d for d in docs if os.path.isfile(d)]


def rerunnable(argv):
    """The index of the output path in a command cheap enough to run here, or None."""
    if len(argv) >= 2 and argv[0] == "python3" and argv[1] == "scripts/natlab/traverse.py" and "--grid-from" in argv:
        if "--grid" in argv and argv.index("--grid") + 1 < len(argv):
            return argv.index("--grid") + 1
    return None


def check(root):
    """Problems found, one line each."""
    problems = []
    shown = set()
    for doc in doc_files(root):
        rel_doc = os.path.relpath(doc, root)
        with open(doc, encoding="utf-8") as f:
            lines = f.read().splitlines()
        for n, line in enumerate(lines):
            for target in EMBED.findall(line):
                if re.match(r"[a-z]+://", target):
                    problems.append(f"{rel_doc}:{n + 1}: {target}: images must be files in the repository")
                    continue
                image = os.path.normpath(os.path.join(os.path.dirname(doc), target))
                shown.add(image)
                where = f"{rel_doc}:{n + 1}: {target}"
                if not os.path.isfile(image):
                    problems.append(f"{where}: no such file")
                    continue
                made_by = [m.group(1) for m in map(MADE_BY.search, lines[max(0, n - LOOK_BACK) : n]) if m]
                if not made_by:
                    problems.append(f"{where}: no `<!-- made by: COMMAND -->` in the {LOOK_BACK} lines above it")
                    continue
                problems += rerun(root, where, made_by[-1], image)
    img_dir = os.path.join(root, "docs", "img")
    for dirpath, _, files in os.walk(img_dir):
        for f in sorted(files):
            path = os.path.normpath(os.path.join(dirpath, f))
            if path not in shown:
                problems.append(f"{os.path.relpath(path, root)}: shown by no document (remove it, or embed it)")
    return problems


def rerun(root, where, command, image):
    argv = shlex.split(command)
    out_index = rerunnable(argv)
    if out_index is None:
        return []
    if os.path.normpath(os.path.join(root, argv[out_index])) != image:
        return [f"{where}: its command writes {argv[out_index]}, not this file"]
    with tempfile.TemporaryDirectory() as tmp:
        fresh = os.path.join(tmp, os.path.basename(image))
        argv[out_index] = fresh
        argv[0] = sys.executable
        done = subprocess.run(argv, cwd=root, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            return [f"{where}: `{command}` failed: {done.stderr.strip()}"]
        with open(fresh, "rb") as a, open(image, "rb") as b:
            if a.read() != b.read():
                return [f"{where}: differs from what `{command}` draws now: run it and commit the result"]
    return []


def self_test():
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with tempfile.TemporaryDirectory() as root:
        os.makedirs(os.path.join(root, "docs", "img"))
        os.makedirs(os.path.join(root, "scripts"))
        os.symlink(os.path.join(repo, "scripts", "natlab"), os.path.join(root, "scripts", "natlab"))
        table = "## Matrix\n\n| pair | NATs | expected | result | path | time to connect (ms) |\n"
        table += "| --- | --- | --- | --- | --- | ---: |\n| a-b | none / full-cone | direct | connected | direct | 3.5 |\n"
        grid_cmd = "python3 scripts/natlab/traverse.py --grid-from docs/m.md --heading Matrix --grid docs/img/m.svg"

        def write(name, text):
            with open(os.path.join(root, name), "w", encoding="utf-8") as f:
                f.write(text)

        write("docs/m.md", table + f"\n<!-- made by: {grid_cmd} -->\n![grid](img/m.svg)\n")
        write("README.md", "![plot](docs/img/p.svg)\n")
        write("docs/img/p.svg", "<svg/>")
        write("docs/img/stale.svg", "<svg/>")
        write("docs/img/m.svg", "<svg/>")
        found = check(root)
        expect = ["no `<!-- made by", "shown by no document", "differs from what"]
        missed = [e for e in expect if not any(e in p for p in found)]
        if missed or len(found) != len(expect):
            print("check-plots self-test: expected one problem each of", expect, "got:", *found, sep="\n  ")
            return 1
        subprocess.run([sys.executable, *shlex.split(grid_cmd)[1:]], cwd=root, check=True, capture_output=True)
        write("README.md", "<!-- made by: by hand -->\n![plot](docs/img/p.svg)\n")
        os.remove(os.path.join(root, "docs/img/stale.svg"))
        found = check(root)
        if found:
            print("check-plots self-test: a clean tree reported:", *found, sep="\n  ")
            return 1
    print("check-plots self-test: ok")
    return 0


def main():
    if sys.argv[1:] == ["--self-test"]:
        return self_test()
    if sys.argv[1:]:
        print(__doc__.strip().splitlines()[-2].strip(), file=sys.stderr)
        return 2
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    problems = check(root)
    for p in problems:
        print(f"check-plots: {p}", file=sys.stderr)
    if problems:
        return 1
    print("check-plots: every image the docs show exists and names the command that makes it")
    return 0


if __name__ == "__main__":
    sys.exit(main())
