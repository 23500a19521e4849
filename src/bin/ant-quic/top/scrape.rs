//! One scrape of a node's `GET /metrics`: the HTTP request, and the Prometheus text exposition
//! (format 0.0.4) parsed into samples.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// One sample line: `name{label="value",...} value`.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

impl Sample {
    /// The value of label `key`, if the sample has it.
    pub fn label(&self, key: &str) -> Option<&str> {
        self.labels.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    fn has(&self, labels: &[(&str, &str)]) -> bool {
        labels.iter().all(|(key, value)| self.label(key) == Some(value))
    }
}

/// Every sample of one `/metrics` answer.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Scrape {
    pub samples: Vec<Sample>,
}

impl Scrape {
    /// Parse the text exposition format. Comments (`# HELP`, `# TYPE`) and blank lines are
    /// skipped; a timestamp after the value is ignored.
    pub fn parse(text: &str) -> Result<Self, String> {
        let samples = text
            .lines()
            .enumerate()
            .filter(|(_, line)| !line.trim().is_empty() && !line.trim_start().starts_with('#'))
            .map(|(index, line)| parse_sample(line).ok_or_else(|| format!("line {}: {line:?} is no sample", index + 1)))
            .collect::<Result<_, _>>()?;
        Ok(Self { samples })
    }

    /// The samples named `name` that carry every label of `labels`.
    pub fn series<'a>(&'a self, name: &'a str, labels: &'a [(&'a str, &'a str)]) -> impl Iterator<Item = &'a Sample> {
        self.samples.iter().filter(move |s| s.name == name && s.has(labels))
    }

    /// The first sample named `name` with `labels`.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.series(name, labels).next().map(|s| s.value)
    }

    /// The sum of the samples named `name` with `labels`; `None` when there is none.
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.series(name, labels).map(|s| s.value).reduce(|a, b| a + b)
    }
}

fn parse_sample(line: &str) -> Option<Sample> {
    let line = line.trim();
    let name_end = line.find(|c: char| c == '{' || c.is_whitespace())?;
    let (name, mut rest) = line.split_at(name_end);
    let mut labels = Vec::new();
    if let Some(inside) = rest.strip_prefix('{') {
        rest = inside;
        loop {
            rest = rest.trim_start_matches([',', ' ']);
            if let Some(after) = rest.strip_prefix('}') {
                rest = after;
                break;
            }
            let (key, after) = rest.split_once('=')?;
            let (value, after) = quoted(after.strip_prefix('"')?)?;
            labels.push((key.trim().to_owned(), value));
            rest = after;
        }
    }
    let value = rest.split_whitespace().next()?.parse().ok()?;
    (!name.is_empty()).then(|| Sample { name: name.to_owned(), labels, value })
}

/// A label value up to its closing quote, unescaped (`\"`, `\\`, `\n`), and what follows it.
fn quoted(text: &str) -> Option<(String, &str)> {
    let mut value = String::new();
    let mut chars = text.char_indices();
    while let Some((at, c)) = chars.next() {
        match c {
            '"' => return Some((value, text.get(at + 1..)?)),
            '\\' => match chars.next()?.1 {
                'n' => value.push('\n'),
                other => value.push(other),
            },
            c => value.push(c),
        }
    }
    None
}

/// `GET /metrics` from the admin listener at `admin` (plain HTTP/1.1; it closes every answer).
pub fn fetch(admin: SocketAddr, timeout: Duration) -> Result<Scrape, String> {
    let mut stream = TcpStream::connect_timeout(&admin, timeout).map_err(|e| {
        format!("cannot reach the admin endpoint {admin} (is the node running? --admin or --config names it): {e}")
    })?;
    let io = |e: std::io::Error| format!("{admin}/metrics: {e}");
    stream.set_read_timeout(Some(timeout)).map_err(io)?;
    stream.set_write_timeout(Some(timeout)).map_err(io)?;
    write!(stream, "GET /metrics HTTP/1.1\r\nHost: {admin}\r\nConnection: close\r\n\r\n").map_err(io)?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).map_err(io)?;
    let text = String::from_utf8_lossy(&response);
    let (head, body) = text.split_once("\r\n\r\n").ok_or_else(|| format!("{admin}/metrics: no HTTP answer"))?;
    let status = head.split(' ').nth(1).unwrap_or("");
    if status != "200" {
        let line = head.lines().next().unwrap_or("");
        return Err(format!("{admin}/metrics answered {line:?}"));
    }
    let scrape = Scrape::parse(body).map_err(|e| format!("{admin}/metrics: {e}"))?;
    if scrape.value("ant_quic_cores", &[]).is_none() {
        return Err(format!("{admin}/metrics has no ant_quic_cores: is this an ant-quic node's admin port?"));
    }
    Ok(scrape)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_with_and_without_labels_escapes_and_special_values() {
        let text = "# HELP a_total Things.\n# TYPE a_total counter\na_total 3\n\
                    b{core=\"0\",direction=\"sent\"} 12.5\n\
                    c{le=\"+Inf\"} 7 1700000000000\n\
                    d{path=\"a\\\"b\\\\c\\nd\"} NaN\n\n";
        let scrape = Scrape::parse(text).unwrap();
        assert_eq!(scrape.samples.len(), 4);
        assert_eq!(scrape.value("a_total", &[]), Some(3.0));
        assert_eq!(scrape.value("b", &[("direction", "sent")]), Some(12.5));
        assert_eq!(scrape.value("b", &[("direction", "received")]), None);
        assert_eq!(scrape.value("c", &[("le", "+Inf")]), Some(7.0));
        let d = &scrape.samples[3];
        assert_eq!(d.label("path"), Some("a\"b\\c\nd"));
        assert!(d.value.is_nan());
    }

    #[test]
    fn sums_over_matching_series_only() {
        let scrape =
            Scrape::parse("x{core=\"0\",d=\"in\"} 1\nx{core=\"1\",d=\"in\"} 2\nx{core=\"1\",d=\"out\"} 4\n").unwrap();
        assert_eq!(scrape.sum("x", &[("d", "in")]), Some(3.0));
        assert_eq!(scrape.sum("x", &[]), Some(7.0));
        assert_eq!(scrape.sum("y", &[]), None);
    }

    #[test]
    fn a_line_that_is_no_sample_is_refused_with_its_number() {
        for bad in ["a 1\nb{core=\"0\" 2\n", "a 1\nb{core=0} 2\n", "a 1\nb two\n", "a 1\nb\n"] {
            let error = Scrape::parse(bad).unwrap_err();
            assert!(error.starts_with("line 2: "), "{bad:?}: {error}");
        }
    }
}
