//! `layerstore gc`: runs [`Store::gc`], with progress bars on stderr when it is a terminal,
//! and prints the report, as text or as JSON. `serve` runs the same thing on a schedule
//! (`server::scheduled_gc`) and logs the report's counts.

use std::io::IsTerminal;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use indicatif::{
    HumanBytes, HumanDuration, MultiProgress, ProgressBar, ProgressDrawTarget, ProgressState,
    ProgressStyle,
};
use layerstore::gc::{GcOptions, GcPhase, GcProgress, GcReport, MARGIN, STATE_MAX_AGE};
use layerstore::{ErrorKind, Store};

/// How long a real run waits before it marks: the grace period, plus the time every store
/// takes to see that a run started.
pub fn wait_of(grace: Duration) -> Option<Duration> {
    grace.checked_add(STATE_MAX_AGE + MARGIN)
}

/// Parses `--grace`: a duration such as `1h`, `30m` or `0s`.
pub fn parse_grace(s: &str) -> Result<Duration, String> {
    let grace = humantime::parse_duration(s.trim())
        .map_err(|e| format!("{s:?} is not a duration such as 1h, 30m or 0s ({e})"))?;
    wait_of(grace).ok_or_else(|| format!("{s:?} is too long a grace period"))?;
    Ok(grace)
}

/// Collects garbage in `store` and reports; `Err` (a non-zero exit) if the run failed.
pub async fn run(store: &Store, options: GcOptions, json: bool) -> Result<(), String> {
    let bars = std::io::stderr().is_terminal().then(|| Bars::new(options));
    // Deletes start after the mark: a run that failed before it deleted nothing.
    let reached = Mutex::new(None);
    let hook = |p: &GcProgress| {
        *reached.lock().unwrap_or_else(|e| e.into_inner()) = Some(p.phase);
        if let Some(bars) = &bars {
            bars.show(p);
        }
    };
    let report = store.gc(options, &hook).await;
    if let Some(bars) = &bars {
        bars.clear();
    }
    let report = report.map_err(|e| {
        let reached = *reached.lock().unwrap_or_else(|e| e.into_inner());
        let deleted_nothing =
            options.dry_run || matches!(reached, None | Some(GcPhase::Wait | GcPhase::Mark));
        failed(&e, deleted_nothing)
    })?;
    if json {
        let text = serde_json::to_string_pretty(&report)
            .map_err(|e| format!("cannot encode the report: {e}"))?;
        println!("{text}");
    } else {
        print!("{}", describe(&report));
    }
    Ok(())
}

/// Why a run failed, with what to do about it.
fn failed(e: &layerstore::Error, deleted_nothing: bool) -> String {
    let mut message = format!("garbage collection failed: {e}");
    if deleted_nothing {
        message.push_str("; nothing was deleted");
    } else {
        message.push_str("; the next run finishes what this one started");
    }
    if e.kind() == ErrorKind::Corrupt {
        message.push_str(
            ". `layerstore scrub` finds what cannot be read, and `layerstore scrub --repair` \
             removes what points at nothing",
        );
    }
    message
}

/// The report as text: what the mark found, then what went (or would go).
pub fn describe(report: &GcReport) -> String {
    let p = &report.plan;
    let r = &report.removed;
    let mut out = format!(
        "found {} repositories, {} manifests ({} kept), {} blobs ({}), {} of them referenced\n",
        p.repositories,
        p.manifests,
        p.manifests_kept,
        p.blobs,
        HumanBytes(p.bytes),
        p.blobs_marked,
    );
    if report.dry_run {
        out.push_str(&format!(
            "would remove {} blobs ({}), {} untagged manifests, {} links and tags, {} emptied \
             repositories\n",
            p.blobs_collected,
            HumanBytes(p.bytes_collected),
            p.manifests_collected,
            p.links_collected,
            p.repositories_emptied,
        ));
        out.push_str("dry run: nothing was deleted\n");
        return out;
    }
    out.push_str(&format!(
        "removed {} blobs, {} untagged manifests, {} links and tags, {} emptied repositories\n",
        r.blobs, r.manifests, r.links, r.repositories,
    ));
    out.push_str(&format!(
        "freed {} ({} bytes)\n",
        HumanBytes(r.bytes),
        r.bytes
    ));
    if r.rescued > 0 {
        out.push_str(&format!(
            "kept {} that clients used while the run went\n",
            r.rescued
        ));
    }
    out.push_str(&format!("generation {}", report.generation));
    if report.took_over {
        out.push_str(" (took over the lock of a run that had died)");
    }
    out.push('\n');
    out
}

/// The progress display: a status line (taking the lock, then waiting, with the time left),
/// then one line per phase with its counts.
struct Bars {
    multi: MultiProgress,
    status: ProgressBar,
    grace: Duration,
    wait: Duration,
    /// The phase shown, and its line.
    current: Mutex<Option<(GcPhase, ProgressBar)>>,
}

impl Bars {
    fn new(options: GcOptions) -> Self {
        let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr());
        let status = multi.add(ProgressBar::new_spinner().with_style(spinner("{spinner} {msg}")));
        status.set_message(if options.dry_run {
            "dry run: nothing is deleted".to_owned()
        } else {
            format!(
                "taking the garbage collection lock (a run holding it is watched for {} to tell \
                 whether it is alive)",
                humantime::format_duration(options.lock.stale_after)
            )
        });
        status.enable_steady_tick(Duration::from_millis(200));
        Self {
            multi,
            status,
            grace: options.grace,
            wait: wait_of(options.grace).unwrap_or(Duration::MAX),
            current: Mutex::new(None),
        }
    }

    fn show(&self, p: &GcProgress) {
        let mut current = self.current.lock().unwrap_or_else(|e| e.into_inner());
        if current.as_ref().is_none_or(|(phase, _)| *phase != p.phase) {
            if let Some((_, line)) = current.take() {
                line.finish_and_clear();
            }
            *current = Some((p.phase, self.enter(p.phase)));
        }
        let Some((_, line)) = current.as_ref() else {
            return;
        };
        match p.phase {
            GcPhase::Wait => {}
            GcPhase::Mark => {
                line.set_length(p.repositories_total);
                line.set_position(p.repositories);
                line.set_message(format!("repositories, {} manifests", p.manifests));
            }
            GcPhase::Links => {
                line.set_length(p.repositories_total);
                line.set_position(p.repositories);
                line.set_message("repositories");
            }
            GcPhase::Scan => {
                line.set_message(format!("{} blobs listed, {}", p.blobs, HumanBytes(p.bytes)))
            }
        }
    }

    /// The line of a phase that starts.
    fn enter(&self, phase: GcPhase) -> ProgressBar {
        let bar = |prefix: &'static str| {
            self.multi.add(
                ProgressBar::new(0)
                    .with_style(
                        ProgressStyle::with_template(
                            "{prefix:>8} [{bar:30}] {pos}/{len} {msg} ({elapsed_precise})",
                        )
                        .unwrap_or_else(|_| ProgressStyle::default_bar())
                        .progress_chars("=> "),
                    )
                    .with_prefix(prefix),
            )
        };
        match phase {
            GcPhase::Wait => {
                let until = Instant::now() + self.wait.min(Duration::from_secs(1 << 40));
                self.status
                    .set_style(spinner("{spinner} {msg}, {left} left").with_key(
                        "left",
                        move |_: &ProgressState, w: &mut dyn std::fmt::Write| {
                            let left = until.saturating_duration_since(Instant::now());
                            let _ = write!(w, "{}", HumanDuration(left));
                        },
                    ));
                self.status.set_message(format!(
                    "waiting {} before marking (grace {} + {} for every server to see the run)",
                    HumanDuration(self.wait),
                    humantime::format_duration(self.grace),
                    humantime::format_duration(STATE_MAX_AGE + MARGIN),
                ));
                ProgressBar::hidden()
            }
            GcPhase::Mark => {
                self.status.finish_and_clear();
                bar("mark")
            }
            GcPhase::Links => {
                self.status.finish_and_clear();
                bar("links")
            }
            GcPhase::Scan => {
                self.status.finish_and_clear();
                let line = self.multi.add(
                    ProgressBar::new_spinner()
                        .with_style(spinner("{spinner} {prefix:>6} {msg} ({elapsed_precise})"))
                        .with_prefix("blobs"),
                );
                line.enable_steady_tick(Duration::from_millis(200));
                line
            }
        }
    }

    fn clear(&self) {
        self.status.finish_and_clear();
        if let Some((_, line)) = self
            .current
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            line.finish_and_clear();
        }
    }
}

fn spinner(template: &str) -> ProgressStyle {
    ProgressStyle::with_template(template).unwrap_or_else(|_| ProgressStyle::default_spinner())
}
