//! Progress for long operations: a bar on a terminal, a line every 10% otherwise (logs, CI).

use indicatif::{ProgressBar, ProgressStyle};
use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// A progress reporter for (done, total) updates.
pub struct Progress {
    bar: Option<ProgressBar>,
    label: String,
    last_decile: AtomicU64,
}

impl Progress {
    /// A reporter labelled `label` (suppressed entirely with `quiet`).
    pub fn new(label: &str, quiet: bool) -> Progress {
        let bar = (!quiet && std::io::stderr().is_terminal()).then(|| {
            let b = ProgressBar::new(0);
            if let Ok(style) = ProgressStyle::with_template("{msg} [{bar:40}] {pos}/{len} stripes ({eta})") {
                b.set_style(style.progress_chars("=> "));
            }
            b.set_message(label.to_string());
            b
        });
        Progress {
            bar,
            label: if quiet { String::new() } else { label.to_string() },
            last_decile: AtomicU64::new(u64::MAX),
        }
    }

    /// Reports progress.
    pub fn update(&self, done: u64, total: u64) {
        if let Some(b) = &self.bar {
            b.set_length(total);
            b.set_position(done);
            return;
        }
        if self.label.is_empty() || total == 0 {
            return;
        }
        let decile = done * 10 / total;
        if self.last_decile.swap(decile, Relaxed) != decile {
            eprintln!("{}: {}% ({done}/{total} stripes)", self.label, decile * 10);
        }
    }

    /// Ends the bar.
    pub fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish();
        }
    }
}
