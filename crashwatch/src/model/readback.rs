//! Reports read back from their JSON: the crash history keeps each report as the agent wrote
//! it, and `crashwatch report ID` shows it as the agent's readable block
//! ([`crate::outputs::pretty`]). The report's types derive `Deserialize` with `#[serde(default)]`
//! (a report written by an older or newer agent lacks or adds fields) and these helpers for
//! the fields whose JSON is not their Rust value: addresses written as hex strings, and the
//! names the agent keeps as `&'static str` (`kind`, `found_by`, a signal's code name, a
//! runtime's name).
use std::{collections::BTreeSet, sync::Mutex};

use serde::{de::Error, Deserialize, Deserializer};

/// A name the agent keeps as a `&'static str`. Fields of that type are declared through
/// this alias: serde's derive takes a field written `&str` as borrowed from the input, which
/// for `'static` would allow reading only from `'static` text; [`interned`] reads them.
pub type Name = &'static str;

/// An address: `"0x7f…"` as reports write it (a plain number is taken too).
pub fn hex<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    Address::deserialize(d)?.value::<D::Error>()
}

pub fn hex_opt<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    Option::<Address>::deserialize(d)?
        .map(Address::value::<D::Error>)
        .transpose()
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Address {
    Number(u64),
    Text(String),
}

impl Address {
    fn value<E: Error>(self) -> Result<u64, E> {
        match self {
            Address::Number(n) => Ok(n),
            Address::Text(s) => {
                let digits = s.strip_prefix("0x").unwrap_or(&s);
                u64::from_str_radix(digits, 16)
                    .map_err(|_| E::custom(format!("{s:?} is not a hexadecimal address")))
            }
        }
    }
}

/// A name kept as `&'static str`: each distinct text is allocated once for the life of the
/// process (a command reading reports back meets a few dozen: kinds, runtimes, code names).
/// A process that reads reports others send (the hub) meets whatever they send: past
/// [`NAMES`] distinct names a new one reads as [`NOT_KEPT`], so memory stays bounded
/// (the hub keeps each report's text as sent; only what it derives shows the stand-in).
pub fn interned<'de, D: Deserializer<'de>>(d: D) -> Result<&'static str, D::Error> {
    String::deserialize(d).map(intern)
}

pub fn interned_opt<'de, D: Deserializer<'de>>(d: D) -> Result<Option<&'static str>, D::Error> {
    Ok(Option::<String>::deserialize(d)?.map(intern))
}

/// Distinct names kept at most.
const NAMES: usize = 4096;
/// What a name past [`NAMES`] reads as.
pub const NOT_KEPT: &str = "(name not kept)";

fn intern(s: String) -> &'static str {
    static SEEN: Mutex<BTreeSet<&'static str>> = Mutex::new(BTreeSet::new());
    let mut seen = SEEN.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(k) = seen.get(s.as_str()) {
        return k;
    }
    if seen.len() >= NAMES || s.len() > 256 {
        return NOT_KEPT;
    }
    let k: &'static str = Box::leak(s.into_boxed_str());
    seen.insert(k);
    k
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_name_past_the_bound_is_not_kept() {
        assert_eq!(super::intern("signal".into()), "signal");
        assert_eq!(super::intern("x".repeat(300)), super::NOT_KEPT);
    }
}
