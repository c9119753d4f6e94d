//! `error` in a report: a death a runtime announced in its own words — its type, message,
//! frames as printed and chained errors. The parsers (`read::parse`) make them.
use serde::{Deserialize, Serialize};

/// A frame as a runtime printed it.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct Frame {
    pub function: Option<String>,
    pub file: Option<String>,
    pub line: Option<u32>,
    pub column: Option<u32>,
}

/// One error of a chain (Python's causes and contexts, Java's `Caused by:`, Go's nested
/// panics), in the order the runtime printed them.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct Link {
    #[serde(rename = "type")]
    pub error_type: Option<String>,
    pub message: String,
    /// How this error relates to the one printed before it, in the runtime's words:
    /// `direct_cause` (Python: the one before caused this), `during_handling` (Python: this
    /// was raised while handling the one before), `group_member` (a Python exception group's
    /// member), `caused_by` (Java: this caused the one before), `suppressed` (Java),
    /// `while_panicking` (Go: raised by a deferred call of the panic before). Absent on the
    /// first.
    #[serde(
        skip_serializing_if = "Option::is_none",
        deserialize_with = "crate::model::readback::interned_opt"
    )]
    pub relation: Option<crate::model::readback::Name>,
    /// Go: marked `[recovered]` (a deferred call recovered it, then panicked).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub recovered: bool,
    pub frames: Vec<Frame>,
}

/// A death a runtime announced in its own words.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct Death {
    /// `go`, `rust`, `python`, `node`, `java`, `c++`, `glibc` or `sanitizer`.
    #[serde(deserialize_with = "crate::model::readback::interned")]
    pub runtime: crate::model::readback::Name,
    /// `panic`, `fatal_error`, `uncaught_exception`, `stack_overflow`, `out_of_memory`,
    /// `assertion`, `heap_corruption`, `stack_smashing` or `sanitizer`.
    #[serde(deserialize_with = "crate::model::readback::interned")]
    pub reason: crate::model::readback::Name,
    /// The runtime's error line, as printed (one line).
    pub headline: String,
    /// The error's type, where the runtime names one (`ValueError`,
    /// `java.lang.IllegalStateException`, `std::runtime_error`, `heap-buffer-overflow`).
    #[serde(rename = "type")]
    pub error_type: Option<String>,
    pub message: String,
    /// The thread the runtime names (`main`, `worker-7`).
    pub thread: Option<String>,
    /// Where the runtime says the error was raised, when it says so apart from a stack (a
    /// Rust panic's `file:line:col`, a failed assertion's, Node's source line).
    pub location: Option<Frame>,
    /// The runtime's stack for the error that killed the process, innermost first.
    pub frames: Vec<Frame>,
    /// Every error of the chain in printed order, this one included; empty when there is
    /// only one.
    pub chain: Vec<Link>,
    /// Byte offset in the text where the runtime started printing this death, look-back
    /// lines included (Node's source location, Go's `runtime:` lines).
    #[serde(skip)]
    pub start: usize,
}

impl Death {
    /// Whether a process that exited with `code` died of this (rather than printed it and
    /// went on to exit for another reason): each runtime's exit code for its unhandled
    /// errors. Deaths by signal need no such check.
    pub fn explains_exit(&self, code: u32) -> bool {
        match (self.runtime, self.reason) {
            (_, "stack_overflow" | "out_of_memory") if code == 134 => true,
            ("go", _) => code == 2,
            ("rust", _) => code == 101,
            ("python", "uncaught_exception") => code == 1,
            ("node", _) => code == 1 || code == 7,
            // The JVM exits 1 after its fatal-error banner with -XX:-CreateCoredumpOnCrash.
            ("java", _) => code == 1,
            // ASan's default exitcode; LeakSanitizer's too.
            ("sanitizer", _) => code == 1 || code == 23,
            _ => false,
        }
    }
}
