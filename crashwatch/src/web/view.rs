//! Web: what the templates show, derived from the store's rows — bar charts as SVG
//! geometry (drawn by the server, so the page needs no script for them), times as "5 min
//! ago" — and how any text reaches the page: HTML-escaped by the templates, and before that
//! every control character and bidirectional override made visible, as on a terminal.
use serde::Serialize;

use crate::outputs::store::{ClusterRow, Timeline};

/// One bar of a chart, in the chart's own units.
#[derive(Debug, Serialize)]
pub struct Bar {
    pub x: f32,
    pub y: f32,
    pub w: f32,
    pub h: f32,
    /// The tooltip: the bucket and its count.
    pub label: String,
    pub zero: bool,
}

/// A chart `width` × `height`: one bar per bucket, the tallest bucket full height; an empty
/// bucket a hairline, so the time axis shows.
pub fn bars(t: &Timeline, width: f32, height: f32) -> Vec<Bar> {
    let n = t.counts.len().max(1) as f32;
    let max = t.counts.iter().copied().max().unwrap_or(0).max(1) as f32;
    let slot = width / n;
    let daily = t.bucket_secs >= 86_400;
    t.counts
        .iter()
        .enumerate()
        .map(|(i, &c)| {
            let h = if c == 0 {
                1.0
            } else {
                (c as f32 / max * (height - 1.0)).max(2.0) + 1.0
            };
            let start = crate::model::clock::rfc3339(
                (t.start_unix + i as u64 * t.bucket_secs) * 1_000_000_000,
            );
            let when = if daily {
                start[..10].to_string()
            } else {
                format!("{} {} UTC", &start[..10], &start[11..16])
            };
            Bar {
                x: i as f32 * slot + 0.5,
                y: height - h,
                w: (slot - 1.0).max(1.0),
                h,
                label: format!("{when}: {c} crash{}", if c == 1 { "" } else { "es" }),
                zero: c == 0,
            }
        })
        .collect()
}

/// `then` (Unix ns) relative to `now`: `just now`, `5 min ago`, `3 h ago`, `2 days ago`.
pub fn ago(then_ns: u64, now_ns: u64) -> String {
    let s = now_ns.saturating_sub(then_ns) / 1_000_000_000;
    match s {
        0..=59 => "just now".into(),
        60..=3599 => format!("{} min ago", s / 60),
        3600..=86_399 => format!("{} h ago", s / 3600),
        _ => {
            let d = s / 86_400;
            format!("{d} day{} ago", if d == 1 { "" } else { "s" })
        }
    }
}

/// A cluster as a row of the list shows it.
#[derive(Debug, Serialize)]
pub struct ClusterView {
    #[serde(flatten)]
    pub row: ClusterRow,
    pub last_ago: String,
    pub first_ago: String,
    /// The last 24 hours' bars, hours without crashes left out.
    pub spark: Vec<Bar>,
    /// Crashes in the last 24 hours.
    pub day_count: u64,
}

impl ClusterView {
    pub fn new(row: ClusterRow, now_ns: u64) -> ClusterView {
        let (spark, day_count) = match &row.last_24h {
            // Only the hours with crashes: the list holds up to 200 of these.
            Some(t) => (
                bars(t, 96.0, 20.0)
                    .into_iter()
                    .filter(|b| !b.zero)
                    .collect(),
                t.counts.iter().sum(),
            ),
            None => (Vec::new(), 0),
        };
        ClusterView {
            last_ago: ago(row.last_seen_ns, now_ns),
            first_ago: ago(row.first_seen_ns, now_ns),
            spark,
            day_count,
            row,
        }
    }
}

fn hidden(c: char) -> bool {
    (c.is_control() && c != '\n' && c != '\t') || crate::util::escape::is_bidi_control(c)
}

/// `s` with control characters (but newline and tab, which `<pre>` shows as such) and the
/// bidirectional controls written as visible `\u{…}` escapes.
pub fn visible(s: &str) -> std::borrow::Cow<'_, str> {
    if !s.chars().any(hidden) {
        return s.into();
    }
    s.chars()
        .map(|c| {
            if hidden(c) {
                format!("\\u{{{:x}}}", c as u32)
            } else {
                c.to_string()
            }
        })
        .collect::<String>()
        .into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bars_scale_to_the_busiest_bucket_and_label_each() {
        let t = Timeline {
            start: String::new(),
            start_unix: 1_764_756_000,
            bucket_secs: 3600,
            counts: vec![0, 4, 1, 2],
        };
        let b = bars(&t, 40.0, 21.0);
        assert_eq!(b.len(), 4);
        assert!(b[0].zero && b[0].h == 1.0);
        assert_eq!(b[1].h, 21.0);
        assert!(b[2].h < b[3].h && b[3].h < b[1].h);
        assert_eq!(b[1].label, "2025-12-03 11:00 UTC: 4 crashes");
        assert_eq!(b[2].label, "2025-12-03 12:00 UTC: 1 crash");
        assert!(b.iter().all(|b| b.y + b.h <= 21.0 + 1e-3));
    }

    #[test]
    fn control_and_bidi_characters_become_visible_newlines_stay() {
        assert_eq!(visible("a\nb\tc"), "a\nb\tc");
        assert_eq!(visible("\x1b]0;x\x07"), "\\u{1b}]0;x\\u{7}");
        assert_eq!(visible("ab\u{202e}cd"), "ab\\u{202e}cd");
    }

    #[test]
    fn ages_read_as_people_say_them() {
        let s = 1_000_000_000u64;
        assert_eq!(ago(0, 5 * s), "just now");
        assert_eq!(ago(0, 150 * s), "2 min ago");
        assert_eq!(ago(0, 7200 * s), "2 h ago");
        assert_eq!(ago(0, 86_400 * s), "1 day ago");
    }
}
