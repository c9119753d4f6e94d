//! Escaping text that came from other processes before a human's terminal sees it.
//!
//! A process chooses its own name, command line, paths, panic messages and (through its
//! binary) function names. Written raw, `ESC ] 0 ; … BEL` retitles the operator's terminal,
//! other escape sequences move the cursor or rewrite what is on screen, and a newline forges a
//! report line. Every control character (C0, DEL, C1), and the bidirectional overrides that
//! reorder what is displayed, is written as a visible `\xNN` / `\u{NNNN}` escape; a backslash
//! is doubled so an escape cannot be faked. JSON output needs none of this: serde_json escapes
//! control characters itself.
use std::{borrow::Cow, fmt};

/// The bidirectional embeddings, overrides, isolates and marks ("Trojan Source"): text that
/// reorders what a human sees. The one list: the crash page's escaping uses it too.
pub fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{200e}' | '\u{200f}')
}

fn needs_escape(c: char) -> bool {
    c.is_control() || c == '\\' || is_bidi_control(c)
}

/// `s` with every control character made visible.
pub fn escape(s: &str) -> Cow<'_, str> {
    if !s.chars().any(needs_escape) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if (c as u32) < 0x80 && needs_escape(c) => {
                out.push_str(&format!("\\x{:02x}", c as u32))
            }
            c if needs_escape(c) => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// Displays its string escaped: `eprintln!("... {}", Esc(&path))`.
pub struct Esc<'a>(pub &'a str);

impl fmt::Display for Esc<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&escape(self.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_become_visible() {
        assert_eq!(escape("plain/path-1.0"), "plain/path-1.0");
        assert!(matches!(escape("plain"), Cow::Borrowed(_)));
        assert_eq!(escape("\x1b]0;owned\x07"), "\\x1b]0;owned\\x07");
        assert_eq!(escape("a\nb\tc\r"), "a\\nb\\tc\\r");
        assert_eq!(escape("del\x7f c1\u{9b}2J"), "del\\x7f c1\\u{9b}2J");
        assert_eq!(escape("ab\u{202e}cd"), "ab\\u{202e}cd");
        // A backslash cannot pretend to be an escape.
        assert_eq!(escape("\\x1b"), "\\\\x1b");
        assert_eq!(escape("naïve 日本"), "naïve 日本");
    }

    #[test]
    fn nothing_escaped_has_a_control_character_left() {
        let all: String = (0u32..0x250).filter_map(char::from_u32).collect();
        assert!(!escape(&all).chars().any(|c| c.is_control()));
    }
}
