//! The NAT lab (`scripts/natlab/natlab.py`): real kernel NATs in network namespaces.
//!
//! Builds a lab under its own namespace prefix with a 10 % loss, 100 ms impairment on the path to
//! bootstrap b2, then checks, from the lab's own reports:
//! - every router's RFC 4787 behaviour (`nat-check`): full cone EIM/EIF, address-restricted
//!   EIM/ADF, port-restricted EIM/APDF, symmetric EDM/APDF;
//! - the raw UDP simultaneous-open matrix (`raw-check`) for all 45 peer pairs: direct for every
//!   pair with a public, full-cone or address-restricted side and for port-restricted pairs, no
//!   path for port-restricted ↔ symmetric and symmetric ↔ symmetric, and the two peers behind pr1
//!   through their LAN addresses;
//! - the impairment (`impair-check`, 200 datagrams): at least 90 ms added each way, loss
//!   between 2 % and 25 % in each direction, the clean path to b1 untouched, and a NATed peer's
//!   public address intact at b2.
//!
//! The lab is always removed (a drop guard runs `natlab.py down`). Needs root, `ip`, `nft`,
//! `python3` and /dev/net/tun (scripts/test.sh installs the tools); without them it says why and
//! passes. Every command has a deadline; all traffic stays inside the lab's namespaces.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use common::{run, Finished, TempDir};

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/natlab/natlab.py");

/// Why the lab cannot run here, if it cannot.
fn skip_reason() -> Option<String> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let uid = status.lines().find_map(|l| l.strip_prefix("Uid:")).and_then(|v| v.split_whitespace().nth(1));
    if uid != Some("0") {
        return Some("not running as root (network namespaces and nftables need it)".into());
    }
    for tool in ["ip", "nft", "python3"] {
        if find_in_path(tool).is_none() {
            return Some(format!("`{tool}` not found (scripts/test.sh installs it)"));
        }
    }
    if !Path::new("/dev/net/tun").exists() {
        return Some("/dev/net/tun missing (the impairment needs TUN)".into());
    }
    None
}

fn find_in_path(tool: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    let extra = ["/usr/sbin", "/sbin"].map(PathBuf::from);
    std::env::split_paths(&path).chain(extra).map(|dir| dir.join(tool)).find(|p| p.is_file())
}

/// A lab under its own prefix; removed when dropped.
struct Lab {
    prefix: String,
    logs: PathBuf,
}

impl Lab {
    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("python3");
        cmd.arg(SCRIPT).args(args).args(["--prefix", &self.prefix]);
        cmd
    }

    fn run(&self, name: &str, args: &[&str], limit: Duration) -> Result<Finished> {
        run(name, &mut self.command(args), &self.logs, limit)
    }

    /// Run a check that prints JSON; the report, whatever the exit status (the caller asserts).
    fn json(&self, check: &str, limit: Duration) -> Result<Json> {
        let out = self.run(check, &[check, "--json"], limit)?;
        Json::parse(&out.stdout)
            .with_context(|| format!("{check}: no JSON report (exit {})\nstderr:\n{}", out.status, out.stderr))
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        match self.run("down", &["down"], Duration::from_secs(60)) {
            Ok(out) if out.status.success() => {}
            Ok(out) => eprintln!("natlab down failed: {}", out.stderr.trim()),
            Err(err) => eprintln!("natlab down failed: {err:#}"),
        }
    }
}

/// NAT type of each peer, as the lab builds it (scripts/natlab/README.md).
fn nat_of(peer: &str) -> &'static str {
    match peer {
        "pub" => "none",
        "fc1" | "fc2" => "full-cone",
        "ar1" | "ar2" => "address-restricted",
        "pr1" | "pr2" | "pr1b" => "port-restricted",
        "sy1" | "sy2" => "symmetric",
        _ => "unknown",
    }
}

/// What raw UDP simultaneous open must achieve (shared/natlab.md).
fn expected_direct(a: &str, b: &str) -> bool {
    let (ka, kb) = (nat_of(a), nat_of(b));
    let open = |k| matches!(k, "none" | "full-cone" | "address-restricted");
    open(ka) || open(kb) || (ka == "port-restricted" && kb == "port-restricted")
}

const PEERS: [&str; 10] = ["pub", "fc1", "fc2", "ar1", "ar2", "pr1", "pr2", "sy1", "sy2", "pr1b"];

#[test]
fn nat_lab_types_raw_matrix_and_impairment() -> Result<()> {
    if let Some(why) = skip_reason() {
        eprintln!("natlab_raw: skipped: {why}");
        return Ok(());
    }
    let started = Instant::now();
    let mut dir = TempDir::new("natlab")?.keep_unless_passed();
    let lab = Lab { prefix: format!("aqt{}", std::process::id()), logs: dir.path().to_owned() };

    let up = lab.run("up", &["up", "--impair-loss", "10", "--impair-delay-ms", "100"], Duration::from_secs(90))?;
    if !up.status.success() && up.stderr.contains("Operation not permitted") {
        eprintln!("natlab_raw: skipped: cannot create network namespaces here: {}", up.stderr.trim());
        return Ok(());
    }
    ensure!(up.status.success(), "natlab up failed:\n{}{}", up.stdout, up.stderr);
    eprintln!("{}", up.stdout.trim_end());

    // Each router behaves as its type.
    let nat = lab.json("nat-check", Duration::from_secs(60))?;
    let mut wrong = Vec::new();
    for row in nat.at("routers")?.as_array()? {
        let peer = row.at("peer")?.as_str()?;
        let (mapping, filtering) = (row.at("mapping")?.as_str().unwrap_or("none"), row.at("filtering")?.as_str()?);
        let want = match nat_of(peer) {
            "full-cone" => ("EIM", "EIF"),
            "address-restricted" => ("EIM", "ADF"),
            "port-restricted" => ("EIM", "APDF"),
            "symmetric" => ("EDM", "APDF"),
            other => bail!("nat-check reported unexpected peer {peer} ({other})"),
        };
        if (mapping, filtering) != want {
            wrong.push(format!("{peer}: {mapping}/{filtering}, expected {}/{}", want.0, want.1));
        }
    }
    ensure!(wrong.is_empty(), "routers not behaving as typed:\n{}", wrong.join("\n"));

    // The raw simultaneous-open matrix.
    let raw = lab.json("raw-check", Duration::from_secs(90))?;
    let pairs = raw.at("pairs")?.as_array()?;
    ensure!(pairs.len() == PEERS.len() * (PEERS.len() - 1) / 2, "raw-check reported {} pairs", pairs.len());
    let mut mismatches = Vec::new();
    let mut direct = 0;
    for pair in pairs {
        let (a, b) = (pair.at("a")?.as_str()?, pair.at("b")?.as_str()?);
        ensure!(PEERS.contains(&a) && PEERS.contains(&b), "raw-check reported unknown pair {a}-{b}");
        let got = pair.at("direct")?.as_bool()?;
        direct += usize::from(got);
        if got != expected_direct(a, b) {
            mismatches.push(format!("{a}-{b} ({} / {}): direct {got}", nat_of(a), nat_of(b)));
        }
        if (a, b) == ("pr1", "pr1b") {
            for side in ["a_side", "b_side"] {
                let via = pair.at(side)?.at("via")?.as_str()?;
                ensure!(via == "host", "pr1-pr1b ({side}) connected via {via}, expected their LAN addresses");
            }
        }
    }
    ensure!(mismatches.is_empty(), "raw matrix differs from the expected one:\n{}", mismatches.join("\n"));
    eprintln!(
        "raw matrix: {direct} of {} pairs direct, as expected ({} s)",
        pairs.len(),
        raw.at("elapsed_s")?.as_f64()?
    );

    // The impairment on the way to b2.
    let imp = lab.json("impair-check", Duration::from_secs(90))?;
    ensure!(imp.at("impair_running")?.as_bool()?, "impair.py is not running in the lab");
    let added = imp.at("added_one_way_delay_ms")?.as_f64()?;
    let to_b2 = imp.at("loss_pct")?.at("to_b2")?.as_f64()?;
    let from_b2 = imp.at("loss_pct")?.at("from_b2")?.as_f64()?;
    eprintln!("impairment: +{added} ms one way, loss {to_b2} % to b2, {from_b2} % from b2");
    ensure!(added >= 90.0, "the impairment added only {added} ms one way (100 ms configured)");
    for (dir, loss) in [("to b2", to_b2), ("from b2", from_b2)] {
        ensure!((2.0..=25.0).contains(&loss), "loss {dir} {loss} %, expected about 10 % (2..25)");
    }
    let clean = imp.at("clean_b1")?;
    let (sent, replies) = (clean.at("sent")?.as_f64()?, clean.at("replies")?.as_f64()?);
    ensure!(replies >= 0.9 * sent, "the clean path to b1 lost {} of {sent} datagrams", sent - replies);
    let b1_median = clean.at("rtt_ms")?.at("median")?.as_f64()?;
    ensure!(b1_median < 50.0, "the clean path to b1 has a median rtt of {b1_median} ms");
    let intact = imp.at("nat_peer_fc1")?;
    ensure!(
        intact.at("intact")?.as_bool()?,
        "b2 saw fc1 as {:?}, expected its router's address {:?}",
        intact.at("observed_at_b2")?,
        intact.at("expected_ip")?
    );

    drop(lab);
    eprintln!("natlab_raw: {:.1} s including up and down", started.elapsed().as_secs_f64());
    dir.passed();
    Ok(())
}

/// Just enough JSON for the lab's reports.
#[derive(Debug, Clone, PartialEq)]
enum Json {
    Null,
    Bool(bool),
    Num(f64),
    Str(String),
    Arr(Vec<Json>),
    Obj(Vec<(String, Json)>),
}

impl Json {
    fn parse(text: &str) -> Result<Json> {
        let mut p = Parser { s: text.as_bytes(), i: 0 };
        let value = p.value()?;
        p.ws();
        ensure!(p.i == p.s.len(), "trailing characters at byte {}", p.i);
        Ok(value)
    }

    fn at(&self, key: &str) -> Result<&Json> {
        match self {
            Json::Obj(fields) => {
                fields.iter().find(|(k, _)| k == key).map(|(_, v)| v).with_context(|| format!("no field {key:?}"))
            }
            _ => bail!("not an object where {key:?} was expected"),
        }
    }

    fn as_str(&self) -> Result<&str> {
        match self {
            Json::Str(s) => Ok(s),
            other => bail!("expected a string, found {other:?}"),
        }
    }

    fn as_f64(&self) -> Result<f64> {
        match self {
            Json::Num(n) => Ok(*n),
            other => bail!("expected a number, found {other:?}"),
        }
    }

    fn as_bool(&self) -> Result<bool> {
        match self {
            Json::Bool(b) => Ok(*b),
            other => bail!("expected true or false, found {other:?}"),
        }
    }

    fn as_array(&self) -> Result<&[Json]> {
        match self {
            Json::Arr(items) => Ok(items),
            other => bail!("expected an array, found {other:?}"),
        }
    }
}

struct Parser<'a> {
    s: &'a [u8],
    i: usize,
}

impl Parser<'_> {
    fn ws(&mut self) {
        while self.i < self.s.len() && self.s[self.i].is_ascii_whitespace() {
            self.i += 1;
        }
    }

    fn eat(&mut self, byte: u8) -> Result<()> {
        self.ws();
        ensure!(self.s.get(self.i) == Some(&byte), "expected {:?} at byte {}", byte as char, self.i);
        self.i += 1;
        Ok(())
    }

    fn literal(&mut self, word: &str, value: Json) -> Result<Json> {
        ensure!(self.s[self.i..].starts_with(word.as_bytes()), "bad literal at byte {}", self.i);
        self.i += word.len();
        Ok(value)
    }

    fn value(&mut self) -> Result<Json> {
        self.ws();
        match self.s.get(self.i).copied() {
            Some(b'{') => {
                self.i += 1;
                let mut fields = Vec::new();
                self.ws();
                if self.s.get(self.i) == Some(&b'}') {
                    self.i += 1;
                    return Ok(Json::Obj(fields));
                }
                loop {
                    self.ws();
                    let key = self.string()?;
                    self.eat(b':')?;
                    fields.push((key, self.value()?));
                    self.ws();
                    match self.s.get(self.i) {
                        Some(b',') => self.i += 1,
                        Some(b'}') => {
                            self.i += 1;
                            return Ok(Json::Obj(fields));
                        }
                        _ => bail!("expected ',' or '}}' at byte {}", self.i),
                    }
                }
            }
            Some(b'[') => {
                self.i += 1;
                let mut items = Vec::new();
                self.ws();
                if self.s.get(self.i) == Some(&b']') {
                    self.i += 1;
                    return Ok(Json::Arr(items));
                }
                loop {
                    items.push(self.value()?);
                    self.ws();
                    match self.s.get(self.i) {
                        Some(b',') => self.i += 1,
                        Some(b']') => {
                            self.i += 1;
                            return Ok(Json::Arr(items));
                        }
                        _ => bail!("expected ',' or ']' at byte {}", self.i),
                    }
                }
            }
            Some(b'"') => Ok(Json::Str(self.string()?)),
            Some(b't') => self.literal("true", Json::Bool(true)),
            Some(b'f') => self.literal("false", Json::Bool(false)),
            Some(b'n') => self.literal("null", Json::Null),
            Some(c) if c == b'-' || c.is_ascii_digit() => {
                let start = self.i;
                while self.i < self.s.len() && matches!(self.s[self.i], b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9')
                {
                    self.i += 1;
                }
                let text = std::str::from_utf8(&self.s[start..self.i])?;
                Ok(Json::Num(text.parse().with_context(|| format!("bad number {text:?}"))?))
            }
            _ => bail!("unexpected input at byte {}", self.i),
        }
    }

    fn string(&mut self) -> Result<String> {
        self.eat(b'"')?;
        let mut out = String::new();
        loop {
            let start = self.i;
            while self.i < self.s.len() && !matches!(self.s[self.i], b'"' | b'\\') {
                self.i += 1;
            }
            out.push_str(std::str::from_utf8(&self.s[start..self.i])?);
            match self.s.get(self.i) {
                Some(b'"') => {
                    self.i += 1;
                    return Ok(out);
                }
                Some(b'\\') => {
                    let esc = *self.s.get(self.i + 1).context("unterminated escape")?;
                    self.i += 2;
                    match esc {
                        b'"' => out.push('"'),
                        b'\\' => out.push('\\'),
                        b'/' => out.push('/'),
                        b'b' => out.push('\u{8}'),
                        b'f' => out.push('\u{c}'),
                        b'n' => out.push('\n'),
                        b'r' => out.push('\r'),
                        b't' => out.push('\t'),
                        b'u' => {
                            let hex = self.s.get(self.i..self.i + 4).context("short \\u escape")?;
                            let code = u32::from_str_radix(std::str::from_utf8(hex)?, 16)?;
                            self.i += 4;
                            out.push(char::from_u32(code).unwrap_or('\u{fffd}'));
                        }
                        other => bail!("bad escape \\{}", other as char),
                    }
                }
                _ => bail!("unterminated string"),
            }
        }
    }
}

#[test]
fn json_subset_parses_the_reports_shape() -> Result<()> {
    let v = Json::parse(r#" {"a": [1, -2.5e1, true, null], "b": {"c": "x\"y\u0041"}, "d": []} "#)?;
    assert_eq!(v.at("a")?.as_array()?.len(), 4);
    assert_eq!(v.at("a")?.as_array()?[1].as_f64()?, -25.0);
    assert_eq!(v.at("b")?.at("c")?.as_str()?, "x\"yA");
    assert!(Json::parse("{\"a\": 1,}").is_err());
    assert!(Json::parse("[1 2]").is_err());
    Ok(())
}
