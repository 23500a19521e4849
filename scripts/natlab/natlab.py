#!/usr/bin/env python3
"""NAT lab: real kernel NATs (nftables) in network namespaces, for NAT traversal tests.

    natlab.py up [--prefix P] [--impair-loss PCT] [--impair-delay-ms MS] [--impair-seed N]
    natlab.py down [--prefix P]
    natlab.py exec [--prefix P] NODE -- CMD...
    natlab.py info [--prefix P] [--json]
    natlab.py raw-check [--prefix P] [--json] [--serial]
    natlab.py nat-check [--prefix P] [--json]                   (each router's RFC 4787 behaviour)
    natlab.py impair [--prefix P] --loss PCT --delay-ms MS      (change or remove at run time)
    natlab.py impair-check [--prefix P] [--json] [--count N]
    natlab.py link [--prefix P] A B [--down]                    (a private link between two peers)

Must run as root; needs `ip` (iproute2), `nft` (nftables) and /dev/net/tun. Python 3 standard
library only. Every namespace is named "<prefix>-...", default prefix "aqlab", so several labs
can exist at once and `down` removes exactly one.

Topology (scripts/natlab/README.md has the drawing):

  public segment 198.18.0.0/24: a bridge br0 in namespace P-sw, with
    b1  (P-b1)     198.18.0.11   bootstrap, clean path
    imp (P-imp)    198.18.0.2    impairment hop in front of b2 (see below)
    b2  (P-b2)     198.18.0.12   bootstrap, reached only through imp
    pub (P-p-pub)  198.18.0.20   peer with a public address, no NAT
    eight routers P-r-NAME, WAN 198.18.0.10N, LAN bridge lan0 10.N.0.1/24, one peer P-p-NAME
    (10.N.0.2) behind each; a second peer pr1b (P-p-pr1b, 10.5.0.3) behind pr1.

    router  N  NAT type            mapping/filtering  nftables
    fc1/2  1/2 full cone           EIM / EIF          map public port -> inner addr.port
    ar1/2  3/4 address-restricted  EIM / ADF          the map + set of addresses sent to
    pr1/2  5/6 port-restricted     EIM / APDF         snat to WAN, established-only inbound
    sy1/2  7/8 symmetric           EDM / APDF         masquerade random, established-only

  Every router drops, in its input hook, new packets from the WAN (a packet for a port nobody
  inside has used must not reach the router itself: it would leave a conntrack entry and an ICMP
  error, and the inside host would later get a different public port); every NAT table has a
  (possibly empty) prerouting nat chain; the cone map is updated in a postrouting filter chain
  (priority filter, before snat) on every outbound UDP packet. Routers have no default route and
  no hairpinning: two peers behind one router reach each other through their LAN addresses.

Impairment: the kernel has no netem, so delay and loss come from user space. b2 sits behind one
extra routed hop, namespace P-imp, which answers ARP for 198.18.0.12 on the public segment (proxy
ARP) and routes it to b2 over its own veth, so every node sees b2 at 198.18.0.12 on the segment
and b2 sees every packet with its real source (a peer's NAT-mapped address): nothing is
translated. With an impairment set, policy routing in P-imp sends every packet that arrives on
the segment side ("wan") or b2's side ("b2") to table 100, whose only route is the TUN device
tun0; impair.py reads each packet from tun0, drops it with the given probability or writes it
back after the given delay; the kernel receives it as arriving on tun0, which matches no rule, so
the main table forwards it to its destination (`ip rule iif` is what prevents a loop). Both
directions between every node and b2 are impaired; b1 and every other path stay clean.
`impair --loss 0 --delay-ms 0` removes it (rules deleted, impair.py stopped).

`exec NODE -- CMD` replaces itself with `ip netns exec NAMESPACE CMD`, so it can be backgrounded
and signalled like CMD itself; `info --json` gives the namespace names for tests that spawn
`ip netns exec` themselves. `down` stops every process left in the lab's namespaces.

`link A B` joins two peers by a veth of their own, "side0" with 10.200.0.1/24 in A and
10.200.0.2/24 in B, and no route beyond it: two hosts that also share a private network (an office
LAN, a VPN) besides the NATed one their default route takes. `link A B --down` removes it.

`raw-check`: for every pair of peers, raw UDP simultaneous open. Each case has its own UDP port
(fresh for every run), so cases run in parallel without sharing a NAT mapping or a conntrack
entry; the routers' dynamic sets and maps are flushed before each run (and before each case with
--serial). Each peer learns its public address from a reflector in b1, then both send to each
other's public and LAN address every 40 ms for 1 s, and answer any probe at the address it came
from; a pair is direct when each side received the other's probe.
"""

import argparse
import itertools
import json
import os
import queue
import random
import re
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
SELF = os.path.abspath(__file__)
PY = sys.executable or "python3"
STATE_ROOT = "/run/natlab"

PUBLIC_NET = "198.18.0.0/24"
B1_ADDR = "198.18.0.11"
B2_ADDR = "198.18.0.12"
IMP_ADDR = "198.18.0.2"
PUB_ADDR = "198.18.0.20"
REFLECT_PORT = 3478  # raw-check reflector in b1
ECHO_PORT = 3479  # impair-check reflectors in b1 and b2
IMPAIR_TABLE = "100"
# With `up --ipv6`: an IPv6 segment beside the IPv4 one. No NAT66: every router routes its LAN's
# /64 and filters inbound like its IPv4 side (established only), so simultaneous open connects.
V6_PUBLIC_PREFIX = "2001:db8:18::"
B1_ADDR6 = "2001:db8:18::11"
PUB_ADDR6 = "2001:db8:18::20"

NAT_TYPES = {
    "full-cone": ("EIM", "EIF"),
    "address-restricted": ("EIM", "ADF"),
    "port-restricted": ("EIM", "APDF"),
    "symmetric": ("EDM", "APDF"),
}
# name, NAT type, N (WAN 198.18.0.10N, LAN 10.N.0.0/24)
ROUTERS = [
    ("fc1", "full-cone", 1),
    ("fc2", "full-cone", 2),
    ("ar1", "address-restricted", 3),
    ("ar2", "address-restricted", 4),
    ("pr1", "port-restricted", 5),
    ("pr2", "port-restricted", 6),
    ("sy1", "symmetric", 7),
    ("sy2", "symmetric", 8),
]
ROUTER_BY_NAME = {r[0]: r for r in ROUTERS}
# peer name -> (router name or None, address)
PEERS = {"pub": (None, PUB_ADDR)}
for _name, _kind, _n in ROUTERS:
    PEERS[_name] = (_name, f"10.{_n}.0.2")
PEERS["pr1b"] = ("pr1", "10.5.0.3")
PEER_ORDER = ["pub"] + [r[0] for r in ROUTERS] + ["pr1b"]

PREFIX_RE = re.compile(r"^[a-z][a-z0-9]{0,15}$")


class LabError(Exception):
    """One line saying what went wrong; main() prints it and exits non-zero."""


# ---------------------------------------------------------------------------------------------
# topology


def wan_addr(router: str) -> str:
    return f"198.18.0.{100 + ROUTER_BY_NAME[router][2]}"


def lan_net(router: str) -> str:
    return f"10.{ROUTER_BY_NAME[router][2]}.0.0/24"


def lan_gw(router: str) -> str:
    return f"10.{ROUTER_BY_NAME[router][2]}.0.1"


def wan_addr6(router: str) -> str:
    return f"2001:db8:18::{100 + ROUTER_BY_NAME[router][2]}"


def lan_net6(router: str) -> str:
    return f"2001:db8:{ROUTER_BY_NAME[router][2]}::/64"


def lan_gw6(router: str) -> str:
    return f"2001:db8:{ROUTER_BY_NAME[router][2]}::1"


def peer_addr6(peer: str) -> str:
    """A peer's IPv6 address: the same host part as its IPv4 LAN address, in its router's /64."""
    router, addr = PEERS[peer]
    if router is None:
        return PUB_ADDR6
    return f"2001:db8:{ROUTER_BY_NAME[router][2]}::{addr.rsplit('.', 1)[1]}"


def router_ruleset6() -> str:
    """IPv6 on a router: no translation, the same stateful filter as its IPv4 side."""
    return """table ip6 natlab6 {
  chain input {
    type filter hook input priority filter; policy accept;
    iifname "wan" meta l4proto ipv6-icmp accept
    iifname "wan" ct state new drop
  }
  chain forward {
    type filter hook forward priority filter; policy drop;
    ct state established,related accept
    icmpv6 type { destination-unreachable, packet-too-big, time-exceeded, parameter-problem } accept
    iifname "lan0" oifname "wan" accept
  }
}
"""


def ns_name(prefix: str, node: str) -> str:
    """Namespace of a node: sw, imp, b1, b2, r-ROUTER, or a peer name."""
    if node in ("sw", "imp", "b1", "b2") or node.startswith("r-"):
        return f"{prefix}-{node}"
    if node in PEERS:
        return f"{prefix}-p-{node}"
    raise LabError(f"unknown node {node!r} (nodes: {', '.join(all_nodes())})")


def all_nodes() -> list:
    return ["sw", "b1", "b2", "imp"] + PEER_ORDER + ["r-" + r[0] for r in ROUTERS]


def all_namespaces(prefix: str) -> list:
    return [ns_name(prefix, n) for n in all_nodes()]


def nat_of(peer: str) -> str:
    router = PEERS[peer][0]
    return "none" if router is None else ROUTER_BY_NAME[router][1]


def public_addr_of(peer: str) -> str:
    router = PEERS[peer][0]
    return PEERS[peer][1] if router is None else wan_addr(router)


def expected_direct(a: str, b: str) -> bool:
    """What raw simultaneous open achieves between two peers (shared/natlab.md)."""
    if PEERS[a][0] is not None and PEERS[a][0] == PEERS[b][0]:
        return True  # same LAN: host addresses
    kinds = {nat_of(a), nat_of(b)}
    if kinds & {"none", "full-cone", "address-restricted"}:
        return True
    return kinds == {"port-restricted"}


# ---------------------------------------------------------------------------------------------
# running commands


def run(cmd: list, stdin: str = None, check: bool = True, timeout: float = 30.0) -> subprocess.CompletedProcess:
    try:
        proc = subprocess.run(cmd, input=stdin, capture_output=True, text=True, timeout=timeout)
    except FileNotFoundError:
        raise LabError(f"{cmd[0]} not found")
    except subprocess.TimeoutExpired:
        raise LabError(f"{' '.join(cmd[:6])} did not finish within {timeout:.0f} s")
    if check and proc.returncode != 0:
        detail = (proc.stderr or proc.stdout).strip().splitlines()
        raise LabError(f"{' '.join(cmd[:6])}: {detail[0] if detail else 'exit ' + str(proc.returncode)}")
    return proc


def ip_batch(lines: list, netns: str = None) -> None:
    cmd = ["ip"] + (["-n", netns] if netns else []) + ["-batch", "-"]
    try:
        run(cmd, stdin="\n".join(lines) + "\n")
    except LabError as err:
        raise LabError(f"{err} (batch for {netns or 'root namespace'})")


def in_ns(netns: str, cmd: list, **kw) -> subprocess.CompletedProcess:
    return run(["ip", "netns", "exec", netns] + cmd, **kw)


def sysctls(netns: str, values: dict) -> None:
    """Write /proc/sys keys inside netns (keys under net/bridge only when br_netfilter exists)."""
    script = []
    for key, value in values.items():
        path = "/proc/sys/" + key.replace(".", "/")
        if key.startswith("net.bridge."):
            script.append(f"[ -e {path} ] && echo {value} > {path} || true")
        else:
            script.append(f"echo {value} > {path}")
    in_ns(netns, ["sh", "-ec", "; ".join(script)])


def existing_namespaces() -> set:
    proc = run(["ip", "netns", "list"], check=False)
    return {line.split()[0] for line in proc.stdout.splitlines() if line.strip()}


def require_root_and_tools(need_nft: bool = True) -> None:
    if os.geteuid() != 0:
        raise LabError("must run as root (network namespaces and nftables need it)")
    if shutil.which("ip") is None:
        raise LabError("`ip` not found: install iproute2")
    if need_nft and shutil.which("nft") is None:
        raise LabError("`nft` not found: install nftables")


def check_prefix(prefix: str) -> str:
    if not PREFIX_RE.match(prefix):
        raise LabError(f"bad prefix {prefix!r}: 1-16 lowercase letters/digits, starting with a letter")
    return prefix


def state_dir(prefix: str) -> str:
    return os.path.join(STATE_ROOT, prefix)


def load_state(prefix: str) -> dict:
    try:
        with open(os.path.join(state_dir(prefix), "state.json")) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


def save_state(prefix: str, state: dict) -> None:
    os.makedirs(state_dir(prefix), exist_ok=True)
    path = os.path.join(state_dir(prefix), "state.json")
    with open(path + ".tmp", "w") as f:
        json.dump(state, f, indent=1)
    os.replace(path + ".tmp", path)


def require_up(prefix: str) -> None:
    missing = [n for n in all_namespaces(prefix) if n not in existing_namespaces()]
    if missing:
        raise LabError(f"lab {prefix!r} is not up (missing namespace {missing[0]}); run `natlab.py up --prefix {prefix}`")


# ---------------------------------------------------------------------------------------------
# nftables


def router_ruleset(router: str) -> str:
    kind = ROUTER_BY_NAME[router][1]
    wan, lan = wan_addr(router), lan_net(router)
    decls, pre, mark, fwd_in = [], [], [], []
    if kind in ("full-cone", "address-restricted"):
        # EIM: public port = inner port (one host inside, snat keeps a free port); the map sends
        # anything arriving at a mapped public port to the inner address.port.
        decls.append("map cone { type inet_service : ipv4_addr . inet_service; flags dynamic,timeout; timeout 120s; }")
        pre.append('iifname "wan" dnat ip to udp dport map @cone')
        mark.append(f'oifname "wan" ip saddr {lan} update @cone {{ udp sport : ip saddr . udp sport }}')
        post = f'oifname "wan" snat ip to {wan}'
        if kind == "address-restricted":
            decls.append("set allowed { type ipv4_addr; flags dynamic,timeout; timeout 120s; }")
            mark.append(f'oifname "wan" ip saddr {lan} update @allowed {{ ip daddr }}')
            fwd_in.append('iifname "wan" oifname "lan0" ct status dnat ip saddr @allowed accept')
        else:
            fwd_in.append('iifname "wan" oifname "lan0" ct status dnat accept')
    elif kind == "port-restricted":
        post = f'oifname "wan" snat ip to {wan}'
    else:  # symmetric
        post = 'oifname "wan" masquerade random'

    def chain(name: str, hook: str, rules: list, policy: str = "accept") -> str:
        body = "\n".join("    " + r for r in rules)
        return f"  chain {name} {{\n    type {hook}; policy {policy};\n{body}\n  }}"

    parts = ["  " + d for d in decls]
    parts.append(chain("prerouting", "nat hook prerouting priority dstnat", pre))
    parts.append(chain("postrouting", "nat hook postrouting priority srcnat", [post]))
    if mark:
        parts.append(chain("mark_out", "filter hook postrouting priority filter", mark))
    parts.append(chain("input", "filter hook input priority filter", ['iifname "wan" ct state new drop']))
    forward = ["ct state established,related accept", 'iifname "lan0" oifname "wan" accept'] + fwd_in
    parts.append(chain("forward", "filter hook forward priority filter", forward, policy="drop"))
    return "table ip natlab {\n" + "\n".join(parts) + "\n}\n"


def flush_dynamic(prefix: str, only: list = None) -> None:
    """Empty the cone maps and address sets (pitfall 3: they outlive a test case)."""
    for router, kind, _ in ROUTERS:
        if only is not None and router not in only:
            continue
        cmds = []
        if kind in ("full-cone", "address-restricted"):
            cmds.append("flush map ip natlab cone")
        if kind == "address-restricted":
            cmds.append("flush set ip natlab allowed")
        if cmds:
            in_ns(ns_name(prefix, "r-" + router), ["nft", "; ".join(cmds)])


# ---------------------------------------------------------------------------------------------
# up / down


def kill_namespace_processes(names: list, grace: float = 2.0) -> int:
    """SIGTERM every process in the given namespaces, SIGKILL what is left after `grace`."""
    pids = set()
    for ns in names:
        proc = run(["ip", "netns", "pids", ns], check=False)
        pids |= {int(p) for p in proc.stdout.split() if p.isdigit()}
    pids.discard(os.getpid())
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + grace
    alive = set(pids)
    while alive and time.monotonic() < deadline:
        for pid in list(alive):
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                alive.discard(pid)
        time.sleep(0.05)
    for pid in alive:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return len(pids)


def cmd_down(prefix: str, quiet: bool = False) -> None:
    existing = existing_namespaces()
    mine = [n for n in all_namespaces(prefix) if n in existing]
    killed = kill_namespace_processes(mine) if mine else 0
    if mine:
        ip_batch([f"netns del {n}" for n in mine])
    shutil.rmtree(state_dir(prefix), ignore_errors=True)
    if not quiet:
        print(f"lab {prefix}: removed {len(mine)} namespaces, stopped {killed} processes")


def setup_ipv6(prefix: str) -> None:
    """The IPv6 segment of `up --ipv6` (b2 and the impairment hop stay IPv4 only)."""
    P = prefix
    quiet = {"net.ipv6.conf.all.accept_dad": 0, "net.ipv6.conf.default.accept_dad": 0,
             "net.ipv6.conf.all.accept_ra": 0, "net.ipv6.conf.default.accept_ra": 0}
    on = {"net.ipv6.conf.all.disable_ipv6": 0, "net.ipv6.conf.default.disable_ipv6": 0}
    v6_nodes = ["sw", "b1", "pub"] + ["r-" + r[0] for r in ROUTERS] + [p for p, (r, _) in PEERS.items() if r]
    for node in v6_nodes:
        sysctls(ns_name(P, node), {**quiet, **on})
    sysctls(ns_name(P, "sw"), {"net.bridge.bridge-nf-call-ip6tables": 0})
    lan_routes = [f"route add {lan_net6(r)} via {wan_addr6(r)}" for r, _, _ in ROUTERS]
    for ns, addr in ((ns_name(P, "b1"), B1_ADDR6), (ns_name(P, "pub"), PUB_ADDR6)):
        ip_batch([f"addr add {addr}/64 dev eth0 nodad"], ns)
        ip_batch(lan_routes, ns)
    for router, _, _ in ROUTERS:
        rns = ns_name(P, "r-" + router)
        sysctls(rns, {"net.ipv6.conf.all.forwarding": 1, "net.bridge.bridge-nf-call-ip6tables": 0})
        ip_batch([f"addr add {wan_addr6(router)}/64 dev wan nodad", f"addr add {lan_gw6(router)}/64 dev lan0 nodad"]
                 + [r for r, (other, _, _) in zip(lan_routes, ROUTERS) if other != router], rns)
        in_ns(rns, ["nft", "-f", "-"], stdin=router_ruleset6())
    for peer, (router, _) in PEERS.items():
        if router is not None:
            ip_batch([f"addr add {peer_addr6(peer)}/64 dev eth0 nodad", f"route add ::/0 via {lan_gw6(router)}"],
                     ns_name(P, peer))


def cmd_up(prefix: str, loss: float, delay_ms: float, seed, ipv6: bool = False) -> None:
    started = time.monotonic()
    cmd_down(prefix, quiet=True)
    P = prefix
    sw, imp, b1, b2 = (ns_name(P, n) for n in ("sw", "imp", "b1", "b2"))
    spaces = all_namespaces(P)
    ip_batch([f"netns add {n}" for n in spaces])
    try:
        # No IPv6 anywhere (no DAD or router solicitations on the segment).
        for n in spaces:
            sysctls(n, {"net.ipv6.conf.all.disable_ipv6": 1, "net.ipv6.conf.default.disable_ipv6": 1})

        links = [
            f"link add b1 netns {sw} type veth peer name eth0 netns {b1}",
            f"link add pub netns {sw} type veth peer name eth0 netns {ns_name(P, 'pub')}",
            f"link add imp netns {sw} type veth peer name wan netns {imp}",
            f"link add b2 netns {imp} type veth peer name eth0 netns {b2}",
        ]
        for router, _, _ in ROUTERS:
            links.append(f"link add r-{router} netns {sw} type veth peer name wan netns {ns_name(P, 'r-' + router)}")
        for peer, (router, _) in PEERS.items():
            if router is not None:
                links.append(
                    f"link add p-{peer} netns {ns_name(P, 'r-' + router)} type veth peer name eth0 netns {ns_name(P, peer)}"
                )
        ip_batch(links)

        # Public segment: the bridge.
        ports = ["b1", "pub", "imp"] + ["r-" + r[0] for r in ROUTERS]
        ip_batch(
            ["link set lo up", "link add br0 type bridge", "link set br0 up"]
            + [f"link set {p} master br0" for p in ports]
            + [f"link set {p} up" for p in ports],
            sw,
        )
        sysctls(sw, {"net.bridge.bridge-nf-call-iptables": 0, "net.bridge.bridge-nf-call-arptables": 0})
        # Bootstraps and the public peer.
        for ns, addr in ((b1, B1_ADDR), (b2, B2_ADDR), (ns_name(P, "pub"), PUB_ADDR)):
            ip_batch(["link set lo up", f"addr add {addr}/24 dev eth0", "link set eth0 up"], ns)
        # The impairment hop: proxy ARP for b2 on the segment, for the segment towards b2.
        ip_batch(
            ["link set lo up", f"addr add {IMP_ADDR}/24 dev wan", "link set wan up", "link set b2 up",
             f"route add {B2_ADDR}/32 dev b2"],
            imp,
        )
        sysctls(
            imp,
            {
                "net.ipv4.ip_forward": 1,
                "net.ipv4.conf.all.rp_filter": 0,
                "net.ipv4.conf.default.rp_filter": 0,
                "net.ipv4.conf.wan.rp_filter": 0,
                "net.ipv4.conf.b2.rp_filter": 0,
                "net.ipv4.conf.all.send_redirects": 0,
                "net.ipv4.conf.default.send_redirects": 0,
                "net.ipv4.conf.wan.proxy_arp": 1,
                "net.ipv4.conf.b2.proxy_arp": 1,
                # Answer proxied ARP requests at once (the default holds them up to 0.8 s).
                "net.ipv4.neigh.wan.proxy_delay": 0,
                "net.ipv4.neigh.b2.proxy_delay": 0,
            },
        )
        # Routers and the peers behind them.
        for router, _, _ in ROUTERS:
            rns = ns_name(P, "r-" + router)
            lan_ports = [f"p-{p}" for p, (r, _) in PEERS.items() if r == router]
            ip_batch(
                ["link set lo up", f"addr add {wan_addr(router)}/24 dev wan", "link set wan up",
                 "link add lan0 type bridge", f"addr add {lan_gw(router)}/24 dev lan0", "link set lan0 up"]
                + [f"link set {p} master lan0" for p in lan_ports]
                + [f"link set {p} up" for p in lan_ports],
                rns,
            )
            sysctls(
                rns,
                {
                    "net.ipv4.ip_forward": 1,
                    "net.ipv4.conf.all.send_redirects": 0,
                    # br_netfilter must not run the LAN bridge's traffic through the NAT tables.
                    "net.bridge.bridge-nf-call-iptables": 0,
                    "net.bridge.bridge-nf-call-arptables": 0,
                },
            )
            in_ns(rns, ["nft", "-f", "-"], stdin=router_ruleset(router))
        for peer, (router, addr) in PEERS.items():
            if router is not None:
                ip_batch(
                    ["link set lo up", f"addr add {addr}/24 dev eth0", "link set eth0 up",
                     f"route add default via {lan_gw(router)}"],
                    ns_name(P, peer),
                )
        if ipv6:
            setup_ipv6(P)
        save_state(P, {"prefix": P, "impairment": None, "ipv6": ipv6})
        if loss > 0 or delay_ms > 0:
            apply_impairment(P, loss, delay_ms, seed)
    except BaseException:
        cmd_down(P, quiet=True)
        raise
    took = time.monotonic() - started
    imp_text = describe_impairment(load_state(P).get("impairment"))
    print(f"lab {P} up: {len(spaces)} namespaces in {took:.1f} s; b2 path: {imp_text}")


# ---------------------------------------------------------------------------------------------
# impairment


def describe_impairment(imp) -> str:
    if not imp:
        return "clean"
    return f"loss {imp['loss_pct']:g} %, delay {imp['delay_ms']:g} ms each way"


def stop_impairment(prefix: str) -> None:
    imp = ns_name(prefix, "imp")
    for pref in ("100", "101"):
        run(["ip", "-n", imp, "rule", "del", "pref", pref], check=False)
    run(["ip", "-n", imp, "route", "flush", "table", IMPAIR_TABLE], check=False)
    state = load_state(prefix)
    cur = state.get("impairment")
    if cur and cur.get("pid"):
        pid = int(cur["pid"])
        in_lab = run(["ip", "netns", "pids", imp], check=False).stdout.split()
        if str(pid) in in_lab:
            os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + 3.0
            while time.monotonic() < deadline:
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    break
                time.sleep(0.05)
            else:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
    state["impairment"] = None
    save_state(prefix, state)


def apply_impairment(prefix: str, loss: float, delay_ms: float, seed=None) -> None:
    if not 0 <= loss <= 100 or delay_ms < 0:
        raise LabError("impairment: loss must be within 0..100 % and delay >= 0 ms")
    stop_impairment(prefix)
    if loss == 0 and delay_ms == 0:
        return
    if not os.path.exists("/dev/net/tun"):
        raise LabError("/dev/net/tun missing: the impairment needs TUN support")
    imp = ns_name(prefix, "imp")
    log_path = os.path.join(state_dir(prefix), "impair.log")
    cmd = ["ip", "netns", "exec", imp, PY, os.path.join(HERE, "impair.py"), "--dev", "tun0",
           "--loss", str(loss), "--delay-ms", str(delay_ms)]
    if seed is not None:
        cmd += ["--seed", str(seed)]
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
    deadline = time.monotonic() + 10.0
    while True:
        if proc.poll() is not None:
            with open(log_path) as f:
                raise LabError(f"impair.py exited: {f.read().strip()[:200]}")
        with open(log_path) as f:
            if "ready" in f.read():
                break
        if time.monotonic() > deadline:
            proc.kill()
            raise LabError("impair.py did not start within 10 s")
        time.sleep(0.05)
    ip_batch(
        ["link set tun0 up", f"route add default dev tun0 table {IMPAIR_TABLE}",
         # Only b2's address: a rule for all of "iif wan" would also steer proxy ARP's route
         # lookups, and imp would then answer ARP for every address on the segment.
         f"rule add pref 100 iif wan to {B2_ADDR}/32 lookup {IMPAIR_TABLE}",
         f"rule add pref 101 iif b2 lookup {IMPAIR_TABLE}"],
        imp,
    )
    sysctls(imp, {"net.ipv4.conf.tun0.rp_filter": 0})
    state = load_state(prefix)
    state["impairment"] = {"bootstrap": "b2", "loss_pct": loss, "delay_ms": delay_ms, "seed": seed, "pid": proc.pid}
    save_state(prefix, state)


# ---------------------------------------------------------------------------------------------
# info / exec


def lab_info(prefix: str) -> dict:
    existing = existing_namespaces()
    nodes = {}
    for name, addr in (("b1", B1_ADDR), ("b2", B2_ADDR)):
        nodes[name] = {"role": "bootstrap", "netns": ns_name(prefix, name), "addr": addr, "nat": "none",
                       "public_addr": addr, "impaired": name == "b2"}
    for peer in PEER_ORDER:
        router, addr = PEERS[peer]
        kind = nat_of(peer)
        nodes[peer] = {
            "role": "peer",
            "netns": ns_name(prefix, peer),
            "addr": addr,
            "nat": kind,
            "mapping": NAT_TYPES[kind][0] if router else None,
            "filtering": NAT_TYPES[kind][1] if router else None,
            "router": router,
            "router_netns": ns_name(prefix, "r-" + router) if router else None,
            "gateway": lan_gw(router) if router else None,
            "public_addr": public_addr_of(peer),
            "addr6": peer_addr6(peer) if load_state(prefix).get("ipv6") else None,
        }
    routers = {r: {"netns": ns_name(prefix, "r-" + r), "nat": k, "wan_addr": wan_addr(r), "lan": lan_net(r),
                   "mapping": NAT_TYPES[k][0], "filtering": NAT_TYPES[k][1]} for r, k, _ in ROUTERS}
    imp = load_state(prefix).get("impairment")
    return {
        "prefix": prefix,
        "up": all(n in existing for n in all_namespaces(prefix)),
        "public_net": PUBLIC_NET,
        "bootstraps": [B1_ADDR, B2_ADDR],
        "nodes": nodes,
        "routers": routers,
        "switch_netns": ns_name(prefix, "sw"),
        "impairment_netns": ns_name(prefix, "imp"),
        "impairment": None if not imp else {k: imp[k] for k in ("bootstrap", "loss_pct", "delay_ms")},
    }


def cmd_info(prefix: str, as_json: bool) -> None:
    info = lab_info(prefix)
    if as_json:
        print(json.dumps(info, indent=1))
        return
    print(f"lab {prefix}: {'up' if info['up'] else 'down'}; b2 path: {describe_impairment(info['impairment'])}")
    print(f"{'node':6} {'namespace':22} {'address':13} {'public':13} nat")
    for name, n in info["nodes"].items():
        print(f"{name:6} {n['netns']:22} {n['addr']:13} {n['public_addr']:13} {n['nat']}")


SIDE_NET = "10.200.0"


def cmd_link(prefix: str, a: str, b: str, down: bool) -> None:
    if a == b or a not in PEERS or b not in PEERS:
        raise LabError(f"link: two different peers wanted ({', '.join(PEER_ORDER)}), got {a!r} and {b!r}")
    require_up(prefix)
    if down:
        run(["ip", "-n", ns_name(prefix, a), "link", "del", "side0"], check=False)
        print(f"link {a}-{b} removed")
        return
    ip_batch([f"link add side0 netns {ns_name(prefix, a)} type veth peer name side0 netns {ns_name(prefix, b)}"])
    for node, host in ((a, 1), (b, 2)):
        ip_batch([f"addr add {SIDE_NET}.{host}/24 dev side0", "link set side0 up"], ns_name(prefix, node))
    print(f"link {a} {SIDE_NET}.1 <-> {b} {SIDE_NET}.2 up")


def cmd_exec(prefix: str, node: str, command: list) -> None:
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        raise LabError("exec: no command given (natlab.py exec NODE -- CMD...)")
    ns = ns_name(prefix, node)
    if ns not in existing_namespaces():
        raise LabError(f"namespace {ns} does not exist; is lab {prefix!r} up?")
    os.execvp("ip", ["ip", "netns", "exec", ns] + command)


# ---------------------------------------------------------------------------------------------
# helpers run inside the namespaces


def parse_addr(text: str):
    host, _, port = text.rpartition(":")
    return host, int(port)


def fmt_addr(addr) -> str:
    return f"{addr[0]}:{addr[1]}"


def agent_main() -> int:
    """Simultaneous-open agent for one peer: reads JSON lines on stdin, answers on stdout."""
    signal.alarm(60)  # hard bound on the agent's life, whatever the controller does
    cfg = json.loads(sys.stdin.readline())
    me, reflector = cfg["name"], parse_addr(cfg["reflector"])
    sel = selectors.DefaultSelector()
    socks = {}
    for case in cfg["cases"]:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind(("0.0.0.0", case["port"]))
        s.setblocking(False)
        socks[str(case["id"])] = s
        sel.register(s, selectors.EVENT_READ, str(case["id"]))

    def drain(handle):
        for key, _ in sel.select(timeout=0.02):
            for _ in range(64):
                try:
                    data, src = key.fileobj.recvfrom(2048)
                except (BlockingIOError, OSError):
                    break
                handle(key.data, data, src)

    # 1. learn the public address of every case's socket
    srflx = {}

    def on_reflect(cid, data, src):
        if src == reflector and data.startswith(b"R "):
            srflx[cid] = data[2:].split(b"\n", 1)[0].decode()

    deadline = time.monotonic() + 3.0
    next_send = 0.0
    while len(srflx) < len(socks) and time.monotonic() < deadline:
        if time.monotonic() >= next_send:
            for cid, s in socks.items():
                if cid not in srflx:
                    try:
                        s.sendto(b"WHOAMI", reflector)
                    except OSError:
                        pass
            next_send = time.monotonic() + 0.2
        drain(on_reflect)
    print(json.dumps({"srflx": srflx}), flush=True)

    # 2. simultaneous open
    go = json.loads(sys.stdin.readline())
    plans = {c["id"]: c for c in go["cases"]}
    targets = {cid: [parse_addr(t) for t in dict.fromkeys(p["targets"])] for cid, p in plans.items()}
    got = {}

    def send(cid, addr, ack=False):
        try:
            socks[cid].sendto((b"ACK " if ack else b"") + plans[cid]["tx"].encode(), addr)
        except OSError:
            pass  # e.g. no route to another LAN

    def on_probe(cid, data, src):
        if cid not in plans:
            return
        is_ack = data.startswith(b"ACK ")
        if (data[4:] if is_ack else data) != plans[cid]["rx"].encode():
            return
        if cid not in got:
            got[cid] = {"from": fmt_addr(src), "after_ms": round((time.monotonic() - start) * 1000)}
        if src not in targets[cid]:  # peer-reflexive: keep sending there too
            targets[cid].append(src)
        if not is_ack:
            send(cid, src, ack=True)  # answer a probe at once, also after our own sending window

    # Start together: CLOCK_MONOTONIC is shared by all namespaces.
    start = max(time.monotonic(), go["start_at"])
    for _ in range(1000):
        if time.monotonic() >= start:
            break
        drain(on_probe)
    end = start + go["duration_s"]
    final = end + go["grace_s"]
    next_send = start
    for _ in range(100000):
        now = time.monotonic()
        if now >= final:
            break
        if now < end and now >= next_send:
            for cid in plans:
                for addr in list(targets[cid]):
                    send(cid, addr)
            next_send += go["interval_s"]
        drain(on_probe)
    print(json.dumps({"got": got}), flush=True)
    return 0


def natagent_main() -> int:
    """NAT behaviour agent for one peer (nat-check): one socket, three phases driven on stdin."""
    signal.alarm(60)
    cfg = json.loads(sys.stdin.readline())
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("0.0.0.0", cfg["port"]))
    sock.setblocking(False)
    sel = selectors.DefaultSelector()
    sel.register(sock, selectors.EVENT_READ)

    def whoami(target: str, limit: float = 3.0):
        addr = parse_addr(target)
        deadline = time.monotonic() + limit
        next_send = 0.0
        while time.monotonic() < deadline:
            if time.monotonic() >= next_send:
                try:
                    sock.sendto(b"WHOAMI", addr)
                except OSError:
                    pass
                next_send = time.monotonic() + 0.2
            if sel.select(timeout=0.05):
                for _ in range(64):
                    try:
                        data, src = sock.recvfrom(2048)
                    except (BlockingIOError, OSError):
                        break
                    if src == addr and data.startswith(b"R "):
                        return data[2:].split(b"\n", 1)[0].decode()
        return None

    # 1. the mapping towards the first reflector
    print(json.dumps({"mapped": whoami(cfg["first"])}), flush=True)
    # 2. listen: who can reach that mapping?
    listen = json.loads(sys.stdin.readline())
    heard = set()
    deadline = time.monotonic() + listen["listen_s"]
    while time.monotonic() < deadline:
        if sel.select(timeout=0.05):
            for _ in range(64):
                try:
                    data, src = sock.recvfrom(2048)
                except (BlockingIOError, OSError):
                    break
                if data.startswith(b"NATCHECK "):
                    heard.add(data.decode(errors="replace"))
    print(json.dumps({"heard": sorted(heard)}), flush=True)
    # 3. the mappings towards the other reflectors, from the same socket
    sys.stdin.readline()
    print(json.dumps({"mapped_others": {t: whoami(t) for t in cfg["others"]}}), flush=True)
    return 0


def sender_main() -> int:
    """Send a payload to a list of addresses from one bound address, every interval, for a while."""
    signal.alarm(30)
    cfg = json.loads(sys.argv[2])
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(parse_addr(cfg["bind"]))
    end = time.monotonic() + cfg["duration_s"]
    for _ in range(10000):
        if time.monotonic() >= end:
            break
        for t in cfg["targets"]:
            try:
                sock.sendto(cfg["payload"].encode(), parse_addr(t))
            except OSError:
                pass
        time.sleep(cfg["interval_s"])
    print("done", flush=True)
    return 0


def probe_main() -> int:
    """Path measurement from one namespace: numbered datagrams to each target reflector."""
    signal.alarm(120)
    cfg = json.loads(sys.argv[2])
    count, interval, wait = cfg["count"], cfg["interval_s"], cfg["wait_s"]
    sel = selectors.DefaultSelector()
    socks = []
    for i, target in enumerate(cfg["targets"]):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind(("0.0.0.0", 0))
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ, i)
        socks.append((s, parse_addr(target)))
    sent_at = [{} for _ in socks]
    rtts = [[] for _ in socks]
    observed = [None for _ in socks]
    start = time.monotonic()
    end = start + count * interval
    final = end + wait
    seq = 0
    for _ in range(1000000):
        now = time.monotonic()
        if now >= final:
            break
        if seq < count and now >= start + seq * interval:
            for i, (s, addr) in enumerate(socks):
                sent_at[i][seq] = time.monotonic()
                try:
                    s.sendto(f"P {seq}".encode(), addr)
                except OSError:
                    pass
            seq += 1
            continue
        timeout = max(0.0, min(final, start + seq * interval if seq < count else final) - now)
        for key, _ in sel.select(timeout=min(timeout, 0.05)):
            i = key.data
            for _ in range(64):
                try:
                    data, _src = key.fileobj.recvfrom(2048)
                except (BlockingIOError, OSError):
                    break
                t = time.monotonic()
                head, _, body = data.partition(b"\n")
                if not head.startswith(b"R ") or not body.startswith(b"P "):
                    continue
                observed[i] = head[2:].decode()
                n = int(body[2:])
                if n in sent_at[i]:
                    rtts[i].append((t - sent_at[i].pop(n)) * 1000.0)
    out = []
    for i, (_, addr) in enumerate(socks):
        r = sorted(rtts[i])
        out.append({
            "target": fmt_addr(addr),
            "sent": seq,
            "replies": len(r),
            "observed": observed[i],
            "rtt_ms": None if not r else {"min": round(r[0], 2), "median": round(r[len(r) // 2], 2),
                                         "max": round(r[-1], 2)},
        })
    print(json.dumps(out), flush=True)
    return 0


# ---------------------------------------------------------------------------------------------
# controller side of raw-check and impair-check


class Child:
    """A helper process in a namespace, its stdout lines on a queue (read by a thread)."""

    def __init__(self, name: str, netns: str, args: list, stdin: bool = False):
        self.name = name
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", netns, PY] + args,
            stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
        )
        self.lines: queue.Queue = queue.Queue()
        self.err: list = []
        threading.Thread(target=self._pump, args=(self.proc.stdout, self.lines), daemon=True).start()
        threading.Thread(target=self._collect_err, daemon=True).start()

    @staticmethod
    def _pump(stream, q):
        for line in stream:
            q.put(line.rstrip("\n"))
        q.put(None)

    def _collect_err(self):
        for line in self.proc.stderr:
            if len(self.err) < 50:
                self.err.append(line.rstrip("\n"))

    def send(self, obj) -> None:
        try:
            self.proc.stdin.write(json.dumps(obj) + "\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            pass

    def line(self, deadline: float) -> str:
        try:
            line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            raise LabError(f"{self.name}: no answer in time")
        if line is None:
            self.proc.wait(timeout=2)
            raise LabError(f"{self.name}: exited ({'; '.join(self.err[-3:]) or 'no message'})")
        return line

    def json_line(self, deadline: float):
        line = self.line(deadline)
        try:
            return json.loads(line)
        except ValueError:
            raise LabError(f"{self.name}: unexpected output {line[:100]!r}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=3)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=3)


def start_reflector(prefix: str, node: str, addr: str, port: int, stats: bool = False) -> Child:
    args = [os.path.join(HERE, "reflector.py"), "--listen", f"{addr}:{port}", "--lifetime-s", "300"]
    child = Child(f"reflector in {node}", ns_name(prefix, node), args + (["--stats"] if stats else []))
    if child.line(time.monotonic() + 10) != "ready":
        child.stop()
        raise LabError(f"reflector in {node} did not start")
    return child


def run_cases(prefix: str, cases: list, duration: float = 1.0, grace: float = 0.4) -> dict:
    """cases: [{"id", "a", "b", "port"}] run at once; returns id -> {a_got, b_got}."""
    nonce = "%08x" % random.getrandbits(32)
    peers = sorted({c["a"] for c in cases} | {c["b"] for c in cases}, key=PEER_ORDER.index)
    agents = {}
    try:
        for p in peers:
            agents[p] = Child(f"agent {p}", ns_name(prefix, p), [SELF, "_agent"], stdin=True)
            mine = [{"id": c["id"], "port": c["port"]} for c in cases if p in (c["a"], c["b"])]
            agents[p].send({"name": p, "reflector": f"{B1_ADDR}:{REFLECT_PORT}", "cases": mine})
        deadline = time.monotonic() + 15
        srflx = {p: agents[p].json_line(deadline)["srflx"] for p in peers}
        start_at = time.monotonic() + 0.2
        for p in peers:
            plan = []
            for c in cases:
                if p not in (c["a"], c["b"]):
                    continue
                other = c["b"] if p == c["a"] else c["a"]
                cid = str(c["id"])
                targets = []
                if cid in srflx[other]:
                    targets.append(srflx[other][cid])
                targets.append(f"{PEERS[other][1]}:{c['port']}")  # host (LAN) address
                plan.append({"id": cid, "targets": targets, "tx": f"NATLAB {nonce} {cid} {p}",
                             "rx": f"NATLAB {nonce} {cid} {other}"})
            agents[p].send({"cases": plan, "duration_s": duration, "interval_s": 0.04, "grace_s": grace,
                            "start_at": start_at})
        deadline = time.monotonic() + duration + grace + 15
        got = {p: agents[p].json_line(deadline)["got"] for p in peers}
    finally:
        for a in agents.values():
            a.stop()
    out = {}
    for c in cases:
        cid = str(c["id"])
        res = {}
        for side, other in (("a", "b"), ("b", "a")):
            me, peer = c[side], c[other]
            g = got[me].get(cid)
            via = None
            if g:
                if g["from"] == srflx[peer].get(cid):
                    via = "srflx"
                elif g["from"] == f"{PEERS[peer][1]}:{c['port']}":
                    via = "host"
                else:
                    via = "prflx"
            res[side] = {"srflx": srflx[me].get(cid), "got_from": g["from"] if g else None, "via": via,
                         "after_ms": g["after_ms"] if g else None}
        out[c["id"]] = res
    return out


def cmd_raw_check(prefix: str, as_json: bool, serial: bool) -> int:
    require_up(prefix)
    started = time.monotonic()
    pairs = list(itertools.combinations(PEER_ORDER, 2))
    base = random.randrange(20000, 50000, 100)
    cases = [{"id": i, "a": a, "b": b, "port": base + i} for i, (a, b) in enumerate(pairs)]
    reflector = start_reflector(prefix, "b1", B1_ADDR, REFLECT_PORT)
    results = {}
    try:
        if serial:
            for c in cases:
                flush_dynamic(prefix, only=[PEERS[c["a"]][0], PEERS[c["b"]][0]])
                results.update(run_cases(prefix, [c]))
        else:
            flush_dynamic(prefix)
            results = run_cases(prefix, cases)
    finally:
        reflector.stop()
    rows = []
    for c in cases:
        r = results[c["id"]]
        direct = r["a"]["got_from"] is not None and r["b"]["got_from"] is not None
        exp = expected_direct(c["a"], c["b"])
        rows.append({"a": c["a"], "b": c["b"], "nat_a": nat_of(c["a"]), "nat_b": nat_of(c["b"]),
                     "direct": direct, "expected": exp, "port": c["port"], "a_side": r["a"], "b_side": r["b"]})
    ok = all(r["direct"] == r["expected"] for r in rows)
    elapsed = round(time.monotonic() - started, 2)
    report = {"prefix": prefix, "mode": "serial" if serial else "parallel", "elapsed_s": elapsed,
              "matches_expected": ok, "pairs": rows}
    if as_json:
        print(json.dumps(report, indent=1))
    else:
        print(f"{'pair':12} {'NAT types':42} {'direct':6} {'via (a<-b, b<-a)':18} expected")
        for r in rows:
            via = f"{r['a_side']['via'] or '-'},{r['b_side']['via'] or '-'}"
            flag = "" if r["direct"] == r["expected"] else "   <-- MISMATCH"
            print(f"{r['a'] + '-' + r['b']:12} {r['nat_a'] + ' / ' + r['nat_b']:42} "
                  f"{'yes' if r['direct'] else 'no':6} {via:18} {'yes' if r['expected'] else 'no'}{flag}")
        n_direct = sum(r["direct"] for r in rows)
        print(f"{len(rows)} pairs, {n_direct} direct, {len(rows) - n_direct} without a path; "
              f"{'matches' if ok else 'DOES NOT MATCH'} the expected matrix; {elapsed} s ({report['mode']})")
    return 0 if ok else 1


def cmd_nat_check(prefix: str, as_json: bool) -> int:
    """Classify every router by RFC 4787 mapping and filtering behaviour, as seen from outside.

    Each peer behind a router learns its mapping towards b1:3478. Then, before the peer has sent
    anything to them, b1 from another port (3481) and pub (another address) send to that mapping:
    heard from pub = endpoint-independent filtering, only from b1:3481 = address-dependent,
    neither = address-and-port-dependent. Last, the same socket asks pub:3478 and b1:3480: the same
    public port every time = endpoint-independent mapping, otherwise endpoint-dependent.
    """
    require_up(prefix)
    started = time.monotonic()
    peers = [p for p in PEER_ORDER if PEERS[p][0] is not None]
    base = random.randrange(20000, 50000, 100)
    first, other_port, other_addr = f"{B1_ADDR}:{REFLECT_PORT}", f"{B1_ADDR}:3480", f"{PUB_ADDR}:{REFLECT_PORT}"
    flush_dynamic(prefix)
    reflectors = [start_reflector(prefix, "b1", B1_ADDR, REFLECT_PORT), start_reflector(prefix, "b1", B1_ADDR, 3480),
                  start_reflector(prefix, "pub", PUB_ADDR, REFLECT_PORT)]
    agents = {}
    try:
        for i, p in enumerate(peers):
            agents[p] = Child(f"nat agent {p}", ns_name(prefix, p), [SELF, "_natagent"], stdin=True)
            agents[p].send({"port": base + i, "first": first, "others": [other_addr, other_port]})
        deadline = time.monotonic() + 15
        mapped = {p: agents[p].json_line(deadline)["mapped"] for p in peers}
        for p in peers:
            agents[p].send({"listen_s": 1.0})
        time.sleep(0.1)
        targets = [m for m in mapped.values() if m]
        senders = [
            Child("sender b1", ns_name(prefix, "b1"), [SELF, "_send", json.dumps(
                {"bind": f"{B1_ADDR}:3481", "targets": targets, "payload": "NATCHECK same-address-other-port",
                 "duration_s": 0.6, "interval_s": 0.05})]),
            Child("sender pub", ns_name(prefix, "pub"), [SELF, "_send", json.dumps(
                {"bind": f"{PUB_ADDR}:3481", "targets": targets, "payload": "NATCHECK other-address",
                 "duration_s": 0.6, "interval_s": 0.05})]),
        ]
        try:
            for snd in senders:
                snd.line(time.monotonic() + 10)
        finally:
            for snd in senders:
                snd.stop()
        deadline = time.monotonic() + 15
        heard = {p: agents[p].json_line(deadline)["heard"] for p in peers}
        for p in peers:
            agents[p].send({"go": True})
        deadline = time.monotonic() + 15
        others = {p: agents[p].json_line(deadline)["mapped_others"] for p in peers}
    finally:
        for a in list(agents.values()) + reflectors:
            a.stop()
    rows = []
    for p in peers:
        router = PEERS[p][0]
        kind = ROUTER_BY_NAME[router][1]
        ports = {mapped[p]} | set(others[p].values())
        mapping = None if None in ports else ("EIM" if len(ports) == 1 else "EDM")
        if "NATCHECK other-address" in heard[p]:
            filtering = "EIF"
        elif "NATCHECK same-address-other-port" in heard[p]:
            filtering = "ADF"
        else:
            filtering = "APDF"
        exp_m, exp_f = NAT_TYPES[kind]
        rows.append({"peer": p, "router": router, "nat": kind, "mapped": mapped[p], "mapped_others": others[p],
                     "mapping": mapping, "filtering": filtering, "expected_mapping": exp_m,
                     "expected_filtering": exp_f, "ok": mapping == exp_m and filtering == exp_f})
    ok = all(r["ok"] for r in rows)
    report = {"prefix": prefix, "elapsed_s": round(time.monotonic() - started, 2), "matches_expected": ok,
              "routers": rows}
    if as_json:
        print(json.dumps(report, indent=1))
    else:
        print(f"{'peer':5} {'router':6} {'NAT type':19} {'mapping':8} {'filtering':9} {'public ports (b1, pub, b1:3480)':32} ok")
        for r in rows:
            ports = ", ".join(str(x).rpartition(":")[2] for x in [r["mapped"]] + list(r["mapped_others"].values()))
            print(f"{r['peer']:5} {r['router']:6} {r['nat']:19} {str(r['mapping']):8} {r['filtering']:9} {ports:32} "
                  f"{'yes' if r['ok'] else 'NO (expected ' + r['expected_mapping'] + '/' + r['expected_filtering'] + ')'}")
        print(f"{'all routers behave as typed' if ok else 'SOME ROUTERS DO NOT BEHAVE AS TYPED'}; {report['elapsed_s']} s")
    return 0 if ok else 1


def cmd_impair(prefix: str, loss: float, delay_ms: float, seed) -> None:
    require_up(prefix)
    apply_impairment(prefix, loss, delay_ms, seed)
    print(f"lab {prefix}: b2 path: {describe_impairment(load_state(prefix).get('impairment'))}")


def cmd_impair_check(prefix: str, as_json: bool, count: int, interval_ms: float) -> int:
    """Measure the b2 path against the clean b1 path, from pub (and the observed address via fc1)."""
    require_up(prefix)
    if not 1 <= count <= 10000:
        raise LabError("--count must be within 1..10000")
    started = time.monotonic()
    imp = load_state(prefix).get("impairment")
    running = None
    if imp:
        running = str(imp.get("pid")) in run(["ip", "netns", "pids", ns_name(prefix, "imp")], check=False).stdout.split()
    wait_s = 1.0 + 2 * (imp["delay_ms"] if imp else 0) / 1000.0
    refl = {n: start_reflector(prefix, n, a, ECHO_PORT, stats=True) for n, a in (("b1", B1_ADDR), ("b2", B2_ADDR))}
    stats = {}
    try:
        cfg = {"targets": [f"{B1_ADDR}:{ECHO_PORT}", f"{B2_ADDR}:{ECHO_PORT}"], "count": count,
               "interval_s": interval_ms / 1000.0, "wait_s": wait_s}
        probe = Child("probe from pub", ns_name(prefix, "pub"), [SELF, "_probe", json.dumps(cfg)])
        # A peer behind a NAT: b2 must see its router's public address (nothing rewritten on the way).
        cfg_nat = dict(cfg, targets=[f"{B2_ADDR}:{ECHO_PORT}"], count=min(count, 50))
        probe_nat = Child("probe from fc1", ns_name(prefix, "fc1"), [SELF, "_probe", json.dumps(cfg_nat)])
        deadline = time.monotonic() + count * interval_ms / 1000.0 + wait_s + 20
        try:
            b1_res, b2_res = probe.json_line(deadline)
            (nat_res,) = probe_nat.json_line(deadline)
        finally:
            probe.stop()
            probe_nat.stop()
    finally:
        for n, child in refl.items():
            child.stop()
            try:
                stats[n] = json.loads(child.line(time.monotonic() + 3))
            except (LabError, ValueError):
                stats[n] = None
    if stats.get("b2") is None:
        raise LabError("the b2 reflector reported no counts")
    fwd = stats["b2"]["by_source_ip"].get(PUB_ADDR, 0)
    sent = b2_res["sent"]
    loss_fwd = 100.0 * (sent - fwd) / sent if sent else None
    loss_rev = 100.0 * (fwd - b2_res["replies"]) / fwd if fwd else None
    loss_rt = 100.0 * (sent - b2_res["replies"]) / sent if sent else None
    added = None
    if b1_res["rtt_ms"] and b2_res["rtt_ms"]:
        added = round((b2_res["rtt_ms"]["median"] - b1_res["rtt_ms"]["median"]) / 2, 2)
    observed_ip = nat_res["observed"].rpartition(":")[0] if nat_res["observed"] else None
    report = {
        "prefix": prefix,
        "configured": None if not imp else {"loss_pct": imp["loss_pct"], "delay_ms": imp["delay_ms"]},
        "impair_running": running,
        "from": "pub",
        "clean_b1": b1_res,
        "impaired_b2": b2_res,
        "b2_received_from_pub": fwd,
        "loss_pct": {
            "to_b2": None if loss_fwd is None else round(loss_fwd, 2),
            "from_b2": None if loss_rev is None else round(loss_rev, 2),
            "round_trip": None if loss_rt is None else round(loss_rt, 2),
        },
        "added_one_way_delay_ms": added,
        "nat_peer_fc1": {"observed_at_b2": nat_res["observed"], "expected_ip": wan_addr("fc1"),
                          "intact": observed_ip == wan_addr("fc1")},
        "elapsed_s": round(time.monotonic() - started, 2),
    }
    if as_json:
        print(json.dumps(report, indent=1))
    else:
        def rtt(r):
            x = r["rtt_ms"]
            return "no replies" if not x else f"rtt min/median/max {x['min']}/{x['median']}/{x['max']} ms"

        print(f"b2 path configured: {describe_impairment(imp)}"
              + ("" if running in (None, True) else "  (BUT impair.py IS NOT RUNNING)"))
        print(f"pub -> b1 (clean):   {b1_res['replies']}/{b1_res['sent']} replies, {rtt(b1_res)}")
        print(f"pub -> b2 (via imp): {b2_res['replies']}/{b2_res['sent']} replies, {rtt(b2_res)}")
        lp = report["loss_pct"]
        print(f"loss: to b2 {lp['to_b2']} % ({fwd}/{sent} arrived), from b2 {lp['from_b2']} %, "
              f"round trip {lp['round_trip']} %")
        print(f"added one-way delay (median rtt difference / 2): {added} ms")
        n = report["nat_peer_fc1"]
        print(f"fc1 as seen by b2: {n['observed_at_b2']} (router WAN {n['expected_ip']}: "
              f"{'intact' if n['intact'] else 'NOT INTACT'})")
    return 0 if report["nat_peer_fc1"]["intact"] else 1


# ---------------------------------------------------------------------------------------------


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "_agent":
        return agent_main()
    if len(sys.argv) > 1 and sys.argv[1] == "_probe":
        return probe_main()
    if len(sys.argv) > 1 and sys.argv[1] == "_natagent":
        return natagent_main()
    if len(sys.argv) > 1 and sys.argv[1] == "_send":
        return sender_main()

    parser = argparse.ArgumentParser(prog="natlab.py", description="NAT lab in network namespaces (run as root)")
    parser.add_argument("--prefix", default=None, help="namespace name prefix (default aqlab)")
    sub = parser.add_subparsers(dest="cmd", required=True)

    def with_prefix(p):
        p.add_argument("--prefix", default=argparse.SUPPRESS, help="namespace name prefix (default aqlab)")
        return p

    p = with_prefix(sub.add_parser("up", help="build the lab (after removing leftovers of the same prefix)"))
    p.add_argument("--impair-loss", type=float, default=0.0, help="loss on the b2 path, percent, each way")
    p.add_argument("--impair-delay-ms", type=float, default=0.0, help="delay on the b2 path, ms, each way")
    p.add_argument("--impair-seed", type=int, default=None, help="seed of the loss RNG")
    p.add_argument("--ipv6", action="store_true", help="add an IPv6 segment (no NAT66; stateful filters)")
    with_prefix(sub.add_parser("down", help="remove the lab's namespaces and processes"))
    p = with_prefix(sub.add_parser("exec", help="run a command in a node's namespace"))
    p.add_argument("node", help="b1 b2 pub fc1 fc2 ar1 ar2 pr1 pr2 sy1 sy2 pr1b (peers), r-NAME, sw, imp")
    p.add_argument("command", nargs=argparse.REMAINDER)
    p = with_prefix(sub.add_parser("info", help="nodes, namespaces, addresses, NAT types"))
    p.add_argument("--json", action="store_true")
    p = with_prefix(sub.add_parser("raw-check", help="raw UDP simultaneous open between every pair"))
    p.add_argument("--json", action="store_true")
    p.add_argument("--serial", action="store_true", help="one pair at a time (slow; for comparison)")
    p = with_prefix(sub.add_parser("nat-check", help="classify each router's mapping and filtering"))
    p.add_argument("--json", action="store_true")
    p = with_prefix(sub.add_parser("impair", help="set (or with 0 0 remove) the b2 path impairment"))
    p.add_argument("--loss", type=float, required=True)
    p.add_argument("--delay-ms", type=float, required=True)
    p.add_argument("--seed", type=int, default=None)
    p = with_prefix(sub.add_parser("impair-check", help="measure delay and loss on the b2 path"))
    p.add_argument("--json", action="store_true")
    p.add_argument("--count", type=int, default=200)
    p.add_argument("--interval-ms", type=float, default=5.0)
    p = with_prefix(sub.add_parser("link", help="a private link between two peers (side0, 10.200.0.0/24)"))
    p.add_argument("a")
    p.add_argument("b")
    p.add_argument("--down", action="store_true", help="remove it")
    args = parser.parse_args()

    try:
        prefix = check_prefix(args.prefix or "aqlab")
        require_root_and_tools(need_nft=args.cmd == "up")
        if args.cmd == "up":
            cmd_up(prefix, args.impair_loss, args.impair_delay_ms, args.impair_seed, args.ipv6)
        elif args.cmd == "down":
            cmd_down(prefix)
        elif args.cmd == "exec":
            cmd_exec(prefix, args.node, args.command)
        elif args.cmd == "info":
            cmd_info(prefix, args.json)
        elif args.cmd == "link":
            cmd_link(prefix, args.a, args.b, args.down)
        elif args.cmd == "raw-check":
            return cmd_raw_check(prefix, args.json, args.serial)
        elif args.cmd == "nat-check":
            return cmd_nat_check(prefix, args.json)
        elif args.cmd == "impair":
            cmd_impair(prefix, args.loss, args.delay_ms, args.seed)
        elif args.cmd == "impair-check":
            return cmd_impair_check(prefix, args.json, args.count, args.interval_ms)
        return 0
    except LabError as err:
        print(f"natlab: error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("natlab: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `info --json | head`
        sys.stderr.close()
        return 1


if __name__ == "__main__":
    sys.exit(main())
