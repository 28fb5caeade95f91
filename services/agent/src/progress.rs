use indicatif::{ProgressBar, ProgressStyle};

/// Progress shown on a terminal while packing and uploading; hidden in
/// tests, with `--json`, or when stderr is not a terminal.
#[derive(Clone)]
pub struct Progress {
    bar: ProgressBar,
}

impl Progress {
    pub fn hidden() -> Self {
        Self { bar: ProgressBar::hidden() }
    }

    /// A bar on stderr (indicatif draws nothing when it is not a terminal).
    pub fn stderr() -> Self {
        Self { bar: ProgressBar::new(0) }
    }

    /// Starts a phase; without a known total it shows a counter instead of
    /// a bar.
    pub(crate) fn start(&self, phase: &'static str, total_bytes: Option<u64>) {
        let template = match total_bytes {
            Some(_) => "{prefix}{msg:>10} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
            None => "{prefix}{msg:>10} {spinner} {bytes} {bytes_per_sec}",
        };
        let style = ProgressStyle::with_template(template).expect("static template").progress_chars("=> ");
        self.bar.set_style(style);
        self.bar.set_message(phase);
        self.bar.set_length(total_bytes.unwrap_or(0));
        self.bar.set_position(0);
        self.bar.reset_eta();
    }

    /// Names what the phases that follow are for (a tenant of a variants
    /// file, and how far through them the run is), in front of the bar.
    pub(crate) fn label(&self, label: &str) {
        self.bar.set_prefix(if label.is_empty() { String::new() } else { format!("{label} ") });
    }

    pub(crate) fn advance(&self, bytes: u64) {
        self.bar.inc(bytes);
    }

    pub(crate) fn finish(&self) {
        self.bar.finish_and_clear();
    }
}
