"""The NAT traversal matrix as an SVG grid: rows are the first peer of each pair, columns the
second, each cell coloured by how the pair connected (direct, many-probe, relayed, failed, not run)
with the first-byte time in ms. Stdlib only; traverse.py draws it from a run (--grid) or from a
Markdown table it wrote earlier (--grid-from), so a published grid is made from its table.

Outcome of a pair: failed unless it connected; relayed if its path at the end is the relay;
many-probe if it is direct where raw UDP simultaneous open cannot connect (expected "connected");
direct otherwise.
"""

import html
import re

OUTCOMES = {
    "direct": ("#2ca02c", "direct"),
    "many-probe": ("#98df8a", "direct through many-probe"),
    "relayed": ("#ffbb33", "relayed"),
    "failed": ("#d62728", "failed"),
    "not run": ("#dddddd", "not run"),
}
SHORT_NAT = {"address-restricted": "addr-restricted", "port-restricted": "port-restricted"}
CELL_W, CELL_H = 74, 40
LABEL_W, TOP = 190, 110


def outcome(row):
    """One of OUTCOMES' keys for a row of traverse.py's summary (or a table read back)."""
    if row.get("result") != "connected":
        return "failed"
    if row.get("path") == "relayed":
        return "relayed"
    if row.get("path") == "direct":
        return "many-probe" if row.get("expect") == "connected" else "direct"
    return "failed"


def peers_in_order(rows):
    """Peers in the order they first appear in the pairs (traverse.py's order: the lab's)."""
    order = []
    for r in rows:
        for p in r["pair"].split("-", 1):
            if p not in order:
                order.append(p)
    return order


def nat_names(rows):
    """Peer -> its NAT type, from the rows' "a / b" NATs column."""
    names = {}
    for r in rows:
        a, b = r["pair"].split("-", 1)
        nats = [n.strip() for n in r.get("nat", "").split("/")]
        if len(nats) == 2:
            names.setdefault(a, nats[0])
            names.setdefault(b, nats[1])
    return names


def render(rows, title, subtitle="", time_label="the first-byte time"):
    """The SVG document for the matrix rows (dicts with pair, nat, expect, result, path, first_byte_ms)."""
    peers = peers_in_order(rows)
    nats = nat_names(rows)
    by_pair = {tuple(r["pair"].split("-", 1)): r for r in rows}

    def drawn(a, b):
        """A cell for each measured pair; "not run" once per unmeasured pair, above the diagonal."""
        if (a, b) in by_pair:
            return True
        return (b, a) not in by_pair and peers.index(a) < peers.index(b)

    # Rows and columns with at least one cell (all pairs: the last peer starts none, the first ends none).
    firsts = [a for a in peers if any(drawn(a, b) for b in peers)]
    seconds = [b for b in peers if any(drawn(a, b) for a in firsts)]
    explain = f"rows: first peer (connects); columns: second peer; in each cell: {time_label} in ms"
    legend_w = 10 + sum(30 + 8 * len(name) for _, name in OUTCOMES.values())
    # Wide enough for the cells, the legend and the text (about 7 px a character at 12 px).
    width = max(LABEL_W + CELL_W * len(seconds) + 20, legend_w, 20 + 7 * max(len(subtitle), len(explain)))
    height = TOP + CELL_H * len(firsts) + 70
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="sans-serif">',
        f'<rect width="{width}" height="{height}" fill="white"/>',
        f'<text x="10" y="22" font-size="16" font-weight="bold">{html.escape(title)}</text>',
        f'<text x="10" y="42" font-size="12">{html.escape(subtitle)}</text>',
        f'<text x="10" y="62" font-size="12">{html.escape(explain)}</text>',
    ]
    for j, peer in enumerate(seconds):
        x = LABEL_W + CELL_W * j + CELL_W / 2
        out.append(f'<text x="{x:.0f}" y="{TOP - 22}" font-size="12" text-anchor="middle">{html.escape(peer)}</text>')
        nat = nats.get(peer, "")
        short = html.escape(SHORT_NAT.get(nat, nat))
        out.append(f'<text x="{x:.0f}" y="{TOP - 8}" font-size="9" text-anchor="middle">{short}</text>')
    for i, a in enumerate(firsts):
        y = TOP + CELL_H * i
        label = f"{a} ({nats[a]})" if a in nats else a
        out.append(
            f'<text x="{LABEL_W - 8}" y="{y + CELL_H / 2 + 4:.0f}" font-size="12" '
            f'text-anchor="end">{html.escape(label)}</text>'
        )
        for j, b in enumerate(seconds):
            if not drawn(a, b):
                continue
            x = LABEL_W + CELL_W * j
            r = by_pair.get((a, b))
            kind = outcome(r) if r else "not run"
            colour, _ = OUTCOMES[kind]
            cell_class = kind.replace(" ", "-")
            out.append(
                f'<rect class="cell {cell_class}" data-pair="{html.escape(a)}-{html.escape(b)}" x="{x}" y="{y}" '
                f'width="{CELL_W - 2}" height="{CELL_H - 2}" fill="{colour}"/>'
            )
            ms = r.get("first_byte_ms") if r else None
            if ms is not None:
                out.append(
                    f'<text x="{x + CELL_W / 2 - 1:.0f}" y="{y + CELL_H / 2 + 4:.0f}" font-size="12" '
                    f'text-anchor="middle">{html.escape(str(ms))}</text>'
                )
    y = TOP + CELL_H * len(firsts) + 30
    x = 10
    for kind, (colour, name) in OUTCOMES.items():
        out.append(f'<rect x="{x}" y="{y - 11}" width="14" height="14" fill="{colour}"/>')
        out.append(f'<text x="{x + 20}" y="{y}" font-size="12">{html.escape(name)}</text>')
        x += 30 + 8 * len(name)
    out.append("</svg>")
    return "\n".join(out) + "\n"


def _cells(line):
    return [c.strip() for c in line.strip().strip("|").split("|")]


def read_table(text, heading=None):
    """Rows of the first matrix table (a header with a "pair" column) in Markdown `text`, after the
    first heading containing `heading` if given; the summary line under it ("45 pairs: ..."); and
    what its time column is."""
    lines = text.splitlines()
    start = 0
    if heading:
        found = [i for i, line in enumerate(lines) if line.startswith("#") and heading in line]
        if not found:
            raise ValueError(f"no heading containing {heading!r}")
        start = found[0]
    for i in range(start, len(lines)):
        if lines[i].startswith("| pair |"):
            header = _cells(lines[i])
            break
    else:
        raise ValueError("no matrix table (a header starting '| pair |')")
    col = {name: k for k, name in enumerate(header)}
    path_col = col.get("path at the end", col.get("path"))
    time_col = col.get("first byte (ms)", col.get("time to connect (ms)"))
    time_label = "the first-byte time" if "first byte (ms)" in col else "the time to connect"
    if path_col is None or time_col is None or "result" not in col or "expected" not in col:
        raise ValueError(f"the table's columns are not a matrix's: {header}")
    rows, summary = [], ""
    for line in lines[i + 2 :]:
        if not line.startswith("|"):
            if line.strip():
                summary = line.strip() if re.match(r"\d+ pairs:", line.strip()) else ""
                break
            continue
        c = _cells(line)
        if len(c) != len(header):
            raise ValueError(f"a row with {len(c)} cells under a header of {len(header)}: {line}")
        ms = c[time_col]
        rows.append(
            {
                "pair": c[col["pair"]],
                "nat": c[col["NATs"]] if "NATs" in col else "",
                "expect": c[col["expected"]],
                # "connected **(not as expected)**" is still connected
                "result": c[col["result"]].split()[0] if c[col["result"]] else "",
                "path": c[path_col],
                "first_byte_ms": None if ms in ("", "—", "-") else ms,
            }
        )
    if not rows:
        raise ValueError("the matrix table has no rows")
    return rows, summary, time_label
