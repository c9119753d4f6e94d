//! Redact (the pipeline's fourth stage, after enrich): masks secrets in what a report quotes from
//! the process (its command line, its error messages, the runtime's output and its last words)
//! after the report is enriched and before it is fingerprinted, stored or sent anywhere, so no sink
//! and no crash history ever holds them.
//!
//! The default rules (off with `--no-default-redact`) keep a secret's name and mask its value:
//! `password=…`, `passwd`, `pwd`, `secret`, `token`, `api_key`/`api-key`, `access_key`,
//! `client_secret`, `aws_secret_access_key` followed by `=` or `:`; `Authorization:` headers
//! (with their scheme); AWS access key ids (`AKIA…`, `ASIA…`); and a command line's
//! `--password VALUE` (any of those names as a flag, its value in the next argument).
//! `--redact REGEX` adds rules that mask their whole match. A masked value reads
//! `[REDACTED]`.
use std::borrow::Cow;

use anyhow::{Context, Result};
use regex::Regex;

use crate::model::report::Report;

pub const MASK: &str = "[REDACTED]";

/// Secret names the default rules know.
const NAMES: &str = r"password|passwd|pwd|secret|token|api[_-]?key|access[_-]?key|client[_-]?secret|aws_secret_access_key";

pub struct Redactor {
    /// (pattern, replacement)
    rules: Vec<(Regex, String)>,
    /// A command-line flag whose next argument is a secret.
    flag: Option<Regex>,
}

impl Redactor {
    /// The default rules (unless `defaults` is false) and the user's, each a regex.
    pub fn new(defaults: bool, user: &[String]) -> Result<Redactor> {
        let mut rules = Vec::new();
        let mut flag = None;
        if defaults {
            let kv = format!(r#"(?i)\b((?:{NAMES})\s*[=:]\s*)("[^"]*"|'[^']*'|[^\s&,;"']+)"#);
            rules.push((Regex::new(&kv)?, format!("${{1}}{MASK}")));
            rules.push((
                Regex::new(
                    r"(?i)\b(authorization\s*:\s*)(?:(?:bearer|basic|token|digest)\s+)?\S+",
                )?,
                format!("${{1}}{MASK}"),
            ));
            rules.push((Regex::new(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b")?, MASK.into()));
            flag = Some(Regex::new(&format!(r"(?i)^--?(?:{NAMES})$"))?);
        }
        for u in user {
            let re = Regex::new(u).with_context(|| format!("--redact {u:?}"))?;
            rules.push((re, MASK.into()));
        }
        Ok(Redactor { rules, flag })
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// The rules, the flag rule among them.
    pub fn len(&self) -> usize {
        self.rules.len() + usize::from(self.flag.is_some())
    }

    /// Masks every match in `s`.
    pub fn text(&self, s: &mut String) {
        for (re, with) in &self.rules {
            if let Cow::Owned(o) = re.replace_all(s, with.as_str()) {
                *s = o;
            }
        }
    }

    /// Masks what the report quotes from the process.
    pub fn report(&self, r: &mut Report) {
        if self.is_empty() {
            return;
        }
        let mut next_is_secret = false;
        for arg in &mut r.cmdline {
            if std::mem::take(&mut next_is_secret) {
                *arg = MASK.into();
                continue;
            }
            next_is_secret = self.flag.as_ref().is_some_and(|f| f.is_match(arg));
            self.text(arg);
        }
        if let Some(g) = &mut r.go {
            for s in [&mut g.panic_value, &mut g.fatal_message]
                .into_iter()
                .flatten()
            {
                self.text(s);
            }
            self.text(&mut g.stderr);
        }
        if let Some(e) = &mut r.error {
            self.text(&mut e.headline);
            self.text(&mut e.message);
            for l in &mut e.chain {
                self.text(&mut l.message);
            }
        }
        if let Some(w) = &mut r.last_words {
            self.text(&mut w.text);
        }
    }
}

/// A URL as the agent shows it (its log, `--print-config`, `check --sinks`): scheme and host
/// only. Secrets hide in userinfo, in query strings and in paths (a Slack hook's path is its
/// key): `user:pw@` reads `***@`, a path or query `/***`.
pub fn mask_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return "***".to_string();
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let host = match authority.rsplit_once('@') {
        Some((_, host)) => format!("***@{host}"),
        None => authority.to_string(),
    };
    if tail.is_empty() || tail == "/" {
        format!("{scheme}://{host}{tail}")
    } else {
        format!("{scheme}://{host}/***")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn masked(s: &str) -> String {
        let mut s = s.to_string();
        Redactor::new(true, &[]).unwrap().text(&mut s);
        s
    }

    #[test]
    fn urls_keep_scheme_and_host_only() {
        assert_eq!(
            mask_url("https://hooks.slack.com/services/T0/B0/XyZ"),
            "https://hooks.slack.com/***"
        );
        assert_eq!(
            mask_url("http://user:pw@collector:4318"),
            "http://***@collector:4318"
        );
        assert_eq!(mask_url("http://collector:4318/"), "http://collector:4318/");
        assert_eq!(mask_url("http://c:1?token=abc"), "http://c:1/***");
        assert_eq!(mask_url("no scheme"), "***");
    }

    #[test]
    fn the_defaults_keep_the_name_and_mask_the_value() {
        assert_eq!(
            masked("connect db?user=app&password=hunter2&tls=1"),
            "connect db?user=app&password=[REDACTED]&tls=1"
        );
        assert_eq!(masked("--token=abc.def"), "--token=[REDACTED]");
        assert_eq!(masked(r#"API_KEY: "s p a c e""#), "API_KEY: [REDACTED]");
        assert_eq!(
            masked("Authorization: Bearer eyJhbGciOi.x.y rest"),
            "Authorization: [REDACTED] rest"
        );
        assert_eq!(
            masked("key AKIAIOSFODNN7EXAMPLE used"),
            "key [REDACTED] used"
        );
        assert_eq!(
            masked("aws_secret_access_key=wJalrXUtnFEMI/K7MDENG"),
            "aws_secret_access_key=[REDACTED]"
        );
        // Words that only contain a name are left alone.
        assert_eq!(
            masked("tokenizer failed: passwords differ"),
            "tokenizer failed: passwords differ"
        );
    }

    #[test]
    fn a_flag_takes_its_next_argument_with_it() {
        let r = Redactor::new(true, &[]).unwrap();
        let mut rep = Report {
            cmdline: [
                "app",
                "--password",
                "hunter2",
                "--user",
                "bob",
                "-token",
                "t0k",
            ]
            .map(String::from)
            .to_vec(),
            ..Report::default()
        };
        r.report(&mut rep);
        assert_eq!(
            rep.cmdline,
            ["app", "--password", MASK, "--user", "bob", "-token", MASK]
        );
    }

    #[test]
    fn user_rules_mask_the_whole_match_and_bad_ones_are_refused() {
        let r = Redactor::new(false, &[r"\bcard-\d{4}\b".into()]).unwrap();
        let mut s = "paid with card-1234, password=kept".to_string();
        r.text(&mut s);
        assert_eq!(s, "paid with [REDACTED], password=kept", "defaults off");
        let e = Redactor::new(true, &["(unclosed".into()]).err().unwrap();
        assert!(format!("{e:#}").contains("--redact \"(unclosed\""), "{e:#}");
    }
}
