//! `layerstore scrub`: runs [`Store::scrub`], with progress bars on stderr when it is a
//! terminal, and prints the report, as text or as JSON.

use std::io::IsTerminal;
use std::num::NonZeroU64;
use std::sync::OnceLock;

use indicatif::{HumanBytes, MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use layerstore::Store;
use layerstore::scrub::{ScrubOptions, ScrubProgress, ScrubReport};

/// Parses `--rate`: megabytes (10^6 bytes) per second, fractions allowed, into bytes per second.
pub fn parse_rate(s: &str) -> Result<NonZeroU64, String> {
    let mb: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a number of MB/s"))?;
    if !(mb.is_finite() && mb > 0.0) {
        return Err(format!("{s:?}: the rate must be a positive number of MB/s"));
    }
    // Saturates past u64::MAX (no disk is that fast); under one byte per second is refused.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let bytes = (mb * 1e6).round() as u64;
    NonZeroU64::new(bytes).ok_or_else(|| format!("{s:?}: the rate is under one byte per second"))
}

/// Scrubs `store` and reports; `Err` (a non-zero exit) when problems remain.
pub async fn run(store: &Store, options: ScrubOptions, json: bool) -> Result<(), String> {
    let bars = std::io::stderr().is_terminal().then(Bars::new);
    let hook = |p: &ScrubProgress| {
        if let Some(bars) = &bars {
            bars.show(p);
        }
    };
    let report = store.scrub(options, &hook).await;
    if let Some(bars) = &bars {
        bars.clear();
    }
    let report = report.map_err(|e| format!("scrub stopped: {e}"))?;
    if json {
        let text = serde_json::to_string_pretty(&report)
            .map_err(|e| format!("cannot encode the report: {e}"))?;
        println!("{text}");
    } else {
        print!("{}", describe(&report));
    }
    let remaining = report.remaining().count();
    if remaining == 0 {
        return Ok(());
    }
    let repairable = report.remaining().filter(|p| p.kind.repairable()).count();
    let hint = if !options.repair && repairable > 0 {
        format!(" ({repairable} of them can be repaired with --repair)")
    } else {
        String::new()
    };
    let problems = if remaining == 1 {
        "1 problem remains".to_owned()
    } else {
        format!("{remaining} problems remain")
    };
    Err(format!("{problems}{hint}"))
}

/// The report as text: what was checked, each problem on a line, the empty repositories.
fn describe(report: &ScrubReport) -> String {
    let c = &report.counts;
    let mut out = format!(
        "checked {} blobs ({} hashed) and {} repositories: {} blob links, {} manifests, {} tags, \
         {} referrers\n",
        c.blobs,
        HumanBytes(c.bytes_hashed),
        c.repositories,
        c.layer_links,
        c.manifests,
        c.tags,
        c.referrers
    );
    out.push_str(&format!(
        "problems found: {}, repaired: {}\n",
        c.problems, c.repaired
    ));
    for problem in &report.problems {
        out.push_str(&format!("{problem}\n"));
    }
    for name in &report.empty_repositories {
        out.push_str(&format!(
            "empty repository (listed, holds nothing): {name}\n"
        ));
    }
    out
}

/// Two bars: blobs hashed, then repositories checked (shown once the catalog is listed).
struct Bars {
    multi: MultiProgress,
    style: ProgressStyle,
    blobs: ProgressBar,
    repositories: OnceLock<ProgressBar>,
}

impl Bars {
    fn new() -> Self {
        let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr());
        let style = ProgressStyle::with_template(
            "{prefix:>12} [{bar:30}] {pos}/{len} {msg} ({elapsed_precise}, eta {eta})",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ");
        let blobs = multi.add(Self::bar(&style, "blobs"));
        Self {
            multi,
            style,
            blobs,
            repositories: OnceLock::new(),
        }
    }

    fn bar(style: &ProgressStyle, prefix: &'static str) -> ProgressBar {
        ProgressBar::new(0)
            .with_style(style.clone())
            .with_prefix(prefix)
    }

    fn show(&self, p: &ScrubProgress) {
        let c = &p.counts;
        self.blobs.set_length(p.blobs_total.unwrap_or(0));
        self.blobs.set_position(c.blobs);
        let hashed = HumanBytes(c.bytes_hashed);
        self.blobs.set_message(match p.bytes_total {
            Some(total) => format!("{hashed} of {}", HumanBytes(total)),
            None => format!("{hashed} hashed"),
        });
        let Some(total) = p.repositories_total else {
            return;
        };
        let repositories = self
            .repositories
            .get_or_init(|| self.multi.add(Self::bar(&self.style, "repositories")));
        repositories.set_length(total);
        repositories.set_position(c.repositories);
        repositories.set_message(format!(
            "{} manifests, {} tags, {} links, {} problems",
            c.manifests,
            c.tags,
            c.layer_links + c.referrers,
            c.problems
        ));
    }

    fn clear(&self) {
        self.blobs.finish_and_clear();
        if let Some(repositories) = self.repositories.get() {
            repositories.finish_and_clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_are_megabytes_per_second_fractions_allowed() {
        assert_eq!(parse_rate("50").unwrap().get(), 50_000_000);
        assert_eq!(parse_rate("0.5").unwrap().get(), 500_000);
    }

    #[test]
    fn a_rate_that_is_not_positive_is_refused() {
        for bad in ["0", "-1", "nan", "inf", "fast", "0.0000001"] {
            assert!(parse_rate(bad).is_err(), "{bad}");
        }
    }
}
