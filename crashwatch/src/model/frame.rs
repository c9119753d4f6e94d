//! A stack frame as reports carry it: where (`ip`, module, offset), what (function, file,
//! line) and how it was found. The symbolize stage makes them.
use serde::Serialize;

#[derive(Clone, Debug, Default, Serialize, serde::Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct Frame {
    #[serde(
        serialize_with = "crate::model::report::hex",
        deserialize_with = "crate::model::readback::hex"
    )]
    pub ip: u64,
    /// Path of the module in the process's view.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub module: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub build_id: Option<String>,
    /// Byte offset of `ip` in the module's file.
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "crate::model::report::hex_opt",
        deserialize_with = "crate::model::readback::hex_opt"
    )]
    pub offset: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub function: Option<String>,
    /// Bytes from the function's start.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub function_offset: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub line: Option<u32>,
    /// A call the compiler inlined into the next frame (same `ip`).
    pub inlined: bool,
    /// `fp`, `cfi` or `go`.
    #[serde(deserialize_with = "crate::model::readback::interned")]
    pub found_by: crate::model::readback::Name,
    /// Why the frame has no name, when it has none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}
