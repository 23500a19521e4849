//! The shell commands quoted in a Markdown runbook: every line of its ```sh / ```bash blocks,
//! split into words as the shell would. Shared by tests/runbook.rs and the CLI's own test of the
//! runbook's `ant-quic` lines (src/bin/ant-quic/main.rs), so both read the runbook the same way.

// Each of the two test crates uses part of this file.
#![allow(dead_code)]

/// The runbook of this repository.
pub const RUNBOOK: &str = "docs/operations.md";

/// One command of the runbook.
#[derive(Debug, Clone)]
pub struct Command {
    /// Line of the runbook where it starts (1-based).
    pub line: usize,
    /// The command as written, continuation lines joined.
    pub text: String,
    /// Its words, quotes removed, comment dropped; shell operators (`>`, `|`, `&&`, ...) are words.
    pub words: Vec<String>,
}

impl Command {
    /// The program and its arguments: the words before the first shell operator, after any
    /// leading `NAME=value` assignments.
    pub fn argv(&self) -> &[String] {
        let start = self.words.iter().take_while(|w| is_assignment(w)).count();
        let end = self.words.iter().position(|w| is_operator(w)).unwrap_or(self.words.len()).max(start);
        &self.words[start..end]
    }

    /// The program the command runs.
    pub fn program(&self) -> &str {
        self.argv().first().map_or("", String::as_str)
    }

    /// `runbook line N: TEXT`, for failure messages.
    pub fn at(&self) -> String {
        format!("{RUNBOOK}:{}: `{}`", self.line, self.text)
    }
}

fn is_assignment(word: &str) -> bool {
    word.split_once('=').is_some_and(|(name, _)| {
        !name.is_empty() && name.chars().all(|c| c == '_' || c.is_ascii_alphanumeric()) && !name.starts_with('-')
    })
}

fn is_operator(word: &str) -> bool {
    matches!(word, "|" | "||" | "&&" | ";" | "&" | ">" | ">>" | "<" | "2>" | "2>&1" | "&>")
}

/// Every command in the ```sh, ```bash and ```shell blocks of `markdown`. Other blocks (```text
/// for output, ```toml, ```yaml, ```promql) are not commands.
pub fn commands(markdown: &str) -> Result<Vec<Command>, String> {
    let mut out = Vec::new();
    let mut in_shell = None::<bool>;
    let mut pending: Option<(usize, String)> = None;
    for (index, raw) in markdown.lines().enumerate() {
        let number = index + 1;
        let trimmed = raw.trim_start();
        if let Some(info) = trimmed.strip_prefix("```") {
            in_shell = match in_shell {
                None => Some(matches!(info.trim(), "sh" | "bash" | "shell")),
                Some(_) => {
                    if let Some((line, _)) = pending.take() {
                        return Err(format!("{RUNBOOK}:{line}: a continued line runs into the end of its block"));
                    }
                    None
                }
            };
            continue;
        }
        if in_shell != Some(true) {
            continue;
        }
        let (start, mut text) = pending.take().unwrap_or((number, String::new()));
        if let Some(continued) = raw.strip_suffix('\\') {
            text.push_str(continued);
            text.push(' ');
            pending = Some((start, text));
            continue;
        }
        text.push_str(raw);
        let words = split_words(&text).map_err(|e| format!("{RUNBOOK}:{start}: {e}"))?;
        if !words.is_empty() {
            out.push(Command { line: start, text: squeeze(&text), words });
        }
    }
    if in_shell.is_some() {
        return Err(format!("{RUNBOOK}: a code block is not closed"));
    }
    Ok(out)
}

/// Runs of whitespace as one space (continuation lines joined), ends trimmed.
pub fn squeeze(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Split as a POSIX shell does for the cases a runbook uses: single and double quotes,
/// backslash escapes, `#` starting a comment at the start of a word, operators as words.
pub fn split_words(text: &str) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            ' ' | '\t' => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            '#' if !in_word => break,
            '\'' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(c) => word.push(c),
                        None => return Err("unterminated single quote".into()),
                    }
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(c @ ('"' | '\\' | '$' | '`')) => word.push(c),
                            Some(c) => {
                                word.push('\\');
                                word.push(c);
                            }
                            None => return Err("unterminated double quote".into()),
                        },
                        Some(c) => word.push(c),
                        None => return Err("unterminated double quote".into()),
                    }
                }
            }
            '\\' => {
                in_word = true;
                if let Some(c) = chars.next() {
                    word.push(c);
                }
            }
            '|' | '&' | ';' | '>' | '<' => {
                let redirects_fd = c == '>' && in_word && word.chars().all(|d| d.is_ascii_digit());
                if in_word && !redirects_fd {
                    words.push(std::mem::take(&mut word));
                }
                let mut op = if redirects_fd { std::mem::take(&mut word) } else { String::new() };
                in_word = false;
                op.push(c);
                while let Some(&next) = chars.peek() {
                    if matches!(next, '|' | '&' | '>') && op.len() < 4 {
                        op.push(next);
                        chars.next();
                    } else {
                        break;
                    }
                }
                if op.ends_with('&') && chars.peek() == Some(&'1') {
                    op.push('1');
                    chars.next();
                }
                words.push(op);
            }
            c => {
                in_word = true;
                word.push(c);
            }
        }
    }
    if in_word {
        words.push(word);
    }
    Ok(words)
}
