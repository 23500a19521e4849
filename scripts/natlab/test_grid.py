"""Tests of the NAT matrix grid (grid.py) and traverse.py --grid-from, with no lab: a fixed table in,
the SVG's cells out. Run: python3 -m unittest discover -s scripts/natlab -p 'test_*.py'"""

import os
import re
import subprocess
import sys
import tempfile
import unittest
import xml.etree.ElementTree as ET

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import grid  # noqa: E402  (same directory)

TRAVERSE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "traverse.py")
SVG = "{http://www.w3.org/2000/svg}"

# As traverse.py --table writes it, inside a page with another table before it.
PAGE = """# Matrix

## Other

| pair | NATs | expected | result | path | time to connect (ms) |
| --- | --- | --- | --- | --- | ---: |
| a-b | none / none | direct | failed | none | — |

## Clean run

| pair | NATs | expected | result | first path | first byte (ms) | path at the end | direct after (ms) | 64 KiB SHA-256 | Mbit/s |
| --- | --- | --- | --- | --- | ---: | --- | ---: | --- | ---: |
| pub-fc1 | none / full-cone | direct | connected | direct | 33.8 | direct | 33.8 | same | 2139.9 |
| pub-sy1 | none / symmetric | direct | failed **(not as expected)** | — | — | none | — | DIFFERENT/none | — |
| fc1-sy1 | full-cone / symmetric | connected | connected | direct | 166.4 | direct | 166.4 | same | 430.1 |
| sy1-sy2 | symmetric / symmetric | connected | connected | relayed | 3.8 | relayed | — | same | 745.5 |

4 pairs: 2 direct, 1 relayed, 1 failed; coordinated by b1.
"""


def cells(svg_text):
    """pair -> (outcome class, the text drawn in the cell or None), parsed as XML."""
    root = ET.fromstring(svg_text)
    texts = [(float(t.get("x")), float(t.get("y")), t.text) for t in root.iter(f"{SVG}text")]
    out = {}
    for r in root.iter(f"{SVG}rect"):
        if "cell" not in (r.get("class") or ""):
            continue
        x, y, w, h = (float(r.get(k)) for k in ("x", "y", "width", "height"))
        inside = [t for tx, ty, t in texts if x <= tx <= x + w and y <= ty <= y + h]
        out[r.get("data-pair")] = (r.get("class").split()[1], inside[0] if inside else None)
    return out


class GridTest(unittest.TestCase):
    def test_a_table_read_back_draws_each_pair_in_its_colour_with_its_time(self):
        rows, summary, time_label = grid.read_table(PAGE, "Clean run")
        self.assertEqual(summary, "4 pairs: 2 direct, 1 relayed, 1 failed; coordinated by b1.")
        self.assertEqual(time_label, "the first-byte time")
        svg = grid.render(rows, "NAT traversal matrix: Clean run", summary, time_label)
        got = cells(svg)
        self.assertEqual(got["pub-fc1"], ("direct", "33.8"))
        self.assertEqual(got["pub-sy1"], ("failed", None))
        self.assertEqual(got["fc1-sy1"], ("many-probe", "166.4"))
        self.assertEqual(got["sy1-sy2"], ("relayed", "3.8"))
        # pairs of the grid that were not in the table, and only those, are marked as such
        not_run = sorted(p for p, (kind, _) in got.items() if kind == "not-run")
        self.assertEqual(not_run, ["fc1-sy2", "pub-sy2"])
        self.assertEqual(len(got), 6)
        for name in ("direct", "direct through many-probe", "relayed", "failed", "not run", summary):
            self.assertIn(f">{name}<", svg)

    def test_the_first_table_is_taken_without_a_heading_and_bad_input_says_why(self):
        rows, _, time_label = grid.read_table(PAGE)
        self.assertEqual([r["pair"] for r in rows], ["a-b"])
        self.assertEqual(time_label, "the time to connect")
        with self.assertRaisesRegex(ValueError, "no heading"):
            grid.read_table(PAGE, "Nowhere")
        with self.assertRaisesRegex(ValueError, "no matrix table"):
            grid.read_table("# nothing here\n")

    def test_traverse_grid_from_writes_the_svg_and_fails_in_one_line(self):
        with tempfile.TemporaryDirectory() as tmp:
            table = os.path.join(tmp, "m.md")
            with open(table, "w", encoding="utf-8") as f:
                f.write(PAGE)
            out = os.path.join(tmp, "m.svg")
            run = [sys.executable, TRAVERSE, "--grid-from", table, "--heading", "Clean run", "--grid", out]
            done = subprocess.run(run, capture_output=True, text=True, check=False)
            self.assertEqual(done.returncode, 0, done.stderr)
            with open(out, encoding="utf-8") as f:
                self.assertEqual(cells(f.read())["sy1-sy2"], ("relayed", "3.8"))
            bad = [sys.executable, TRAVERSE, "--grid-from", os.path.join(tmp, "none.md"), "--grid", out]
            done = subprocess.run(bad, capture_output=True, text=True, check=False)
            self.assertEqual(done.returncode, 1)
            self.assertRegex(done.stderr, r"^traverse: error: .*none\.md: .*\n$")


if __name__ == "__main__":
    unittest.main()
