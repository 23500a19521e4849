//! Progress bars on stderr for `get` and `--connect --send-bytes`: shown only when stderr is a
//! terminal and no JSON is asked for, redrawn a few times a second, and cleared at the end so that
//! the result lines are the same as without a terminal.

use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

/// How often the callers feed the bars new counts.
pub(crate) const TICK: Duration = Duration::from_millis(250);
/// indicatif redraws at most this often.
const REDRAWS_PER_SECOND: u8 = 4;

/// Whether to show progress: stderr is a terminal, and the output is not JSON.
pub(crate) fn wanted(json: bool) -> bool {
    !json && std::io::stderr().is_terminal()
}

fn style(template: &str) -> ProgressStyle {
    // The templates are constants of this file; a bad one falls back to indicatif's default.
    ProgressStyle::with_template(template).unwrap_or_else(|_| ProgressStyle::default_bar()).progress_chars("=> ")
}

/// One line per file and a total line. hq-interop (HTTP/0.9) sends no length, so there is no bar
/// to fill and no ETA: a file's line shows bytes so far, rate and elapsed time, the total line the
/// same summed, and the files done.
pub(crate) struct GetBars {
    multi: MultiProgress,
    files: Vec<ProgressBar>,
    total: ProgressBar,
}

impl GetBars {
    /// Bars for these request paths, in order.
    pub(crate) fn new<'a>(paths: impl IntoIterator<Item = &'a str>) -> Self {
        let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr_with_hz(REDRAWS_PER_SECOND));
        let file_style = style("{spinner} {prefix} {bytes} at {binary_bytes_per_sec}, {elapsed}");
        let files: Vec<ProgressBar> = paths
            .into_iter()
            .map(|path| {
                let bar = multi.add(ProgressBar::no_length().with_style(file_style.clone()));
                bar.set_prefix(path.to_owned());
                bar
            })
            .collect();
        let total = multi.add(
            ProgressBar::no_length().with_style(style("total {bytes} at {binary_bytes_per_sec}, {elapsed}; {msg}")),
        );
        let bars = Self { multi, files, total };
        bars.update_total();
        bars
    }

    /// Bytes received so far of the file at `index`.
    pub(crate) fn received(&self, index: usize, bytes: u64) {
        if let Some(bar) = self.files.get(index) {
            bar.set_position(bytes);
        }
    }

    /// The file at `index` ended (complete or failed): its line stops moving.
    pub(crate) fn ended(&self, index: usize) {
        if let Some(bar) = self.files.get(index) {
            bar.finish();
        }
    }

    /// Refresh the total line from the file lines.
    pub(crate) fn update_total(&self) {
        let bytes: u64 = self.files.iter().map(ProgressBar::position).sum();
        let done = self.files.iter().filter(|bar| bar.is_finished()).count();
        self.total.set_position(bytes);
        self.total.set_message(format!("{done}/{} files done", self.files.len()));
    }

    /// Remove every line: what follows is printed as without a terminal.
    pub(crate) fn clear(self) {
        for bar in self.files.iter().chain([&self.total]) {
            bar.finish_and_clear();
        }
        let _ = self.multi.clear();
    }
}

/// One bar for a transfer of known length: bytes, rate and ETA.
pub(crate) struct TransferBar(ProgressBar);

impl TransferBar {
    pub(crate) fn new(what: &str, total: u64) -> Self {
        let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr_with_hz(REDRAWS_PER_SECOND));
        bar.set_style(style("{prefix} [{bar:30}] {bytes}/{total_bytes} at {binary_bytes_per_sec}, ETA {eta}"));
        bar.set_prefix(what.to_owned());
        Self(bar)
    }

    /// Bytes moved so far (held within the total).
    pub(crate) fn moved(&self, bytes: u64) {
        self.0.set_position(bytes.min(self.0.length().unwrap_or(u64::MAX)));
    }

    /// Remove the bar.
    pub(crate) fn clear(self) {
        self.0.finish_and_clear();
    }
}
