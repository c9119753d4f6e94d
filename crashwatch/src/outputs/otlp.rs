//! The OTLP logs output (`--otlp-endpoint`): one LogRecord per crash in an
//! `ExportLogsServiceRequest` (opentelemetry-proto's generated types, protobuf through prost),
//! POSTed to `<endpoint>/v1/logs` over HTTP with the webhook's spool and retries
//! ([`super::webhook`]). Severity FATAL, the body the crash's headline, attributes named by
//! the OpenTelemetry semantic conventions (exception.*, process.*, container.*, k8s.*) plus
//! `crashwatch.*`; the resource says `host.name` and `service.name=crashwatch`. The command
//! line goes only with `--otlp-cmdline`: the conventions advise against sending it as is.
use opentelemetry_proto::tonic::{
    collector::logs::v1::ExportLogsServiceRequest,
    common::v1::{any_value::Value, AnyValue, ArrayValue, InstrumentationScope, KeyValue},
    logs::v1::{LogRecord, ResourceLogs, ScopeLogs, SeverityNumber},
    resource::v1::Resource,
};
use prost::Message;

use crate::model::report::Report;

fn text(s: impl Into<String>) -> Option<AnyValue> {
    Some(AnyValue {
        value: Some(Value::StringValue(s.into())),
    })
}

fn int(n: i64) -> Option<AnyValue> {
    Some(AnyValue {
        value: Some(Value::IntValue(n)),
    })
}

fn kv(key: &str, value: Option<AnyValue>) -> KeyValue {
    KeyValue {
        key: key.into(),
        value,
        ..Default::default()
    }
}

/// The exception's type and message, in the terms of the runtime or the kernel.
fn exception(r: &Report) -> (String, String) {
    if let Some(e) = &r.error {
        let t = e.error_type.clone().unwrap_or_else(|| e.reason.to_string());
        return (t, e.message.clone());
    }
    if let Some(g) = &r.go {
        if let Some(m) = &g.fatal_message {
            return ("fatal error".into(), m.clone());
        }
        if let Some(v) = &g.panic_value {
            let t = g.panic_type.clone().unwrap_or_else(|| "panic".into());
            return (t, v.clone());
        }
    }
    if let Some(s) = &r.signal {
        return (s.name.clone(), s.code_name.unwrap_or_default().to_string());
    }
    (r.kind.to_string(), crate::pipeline::cluster::headline(r))
}

/// The attributes of one crash's LogRecord.
pub fn attributes(r: &Report, cmdline: bool) -> Vec<KeyValue> {
    let (etype, message) = exception(r);
    let stack: String = r
        .stack
        .iter()
        .map(|f| super::frame(f, r.exe.as_deref(), false) + "\n")
        .collect();
    let mut a = vec![
        kv("exception.type", text(etype)),
        kv("exception.message", text(message)),
        kv("exception.stacktrace", text(stack)),
        kv("process.pid", int(r.pid.into())),
        kv("process.parent_pid", int(r.ppid.into())),
        kv("crashwatch.kind", text(r.kind)),
        kv("crashwatch.fingerprint", text(r.fingerprint.clone())),
    ];
    let mut opt = |k: &str, v: Option<AnyValue>| {
        if v.is_some() {
            a.push(kv(k, v));
        }
    };
    opt("process.executable.path", r.exe.clone().and_then(text));
    opt(
        "process.executable.name",
        r.exe
            .as_deref()
            .and_then(|e| e.rsplit('/').next())
            .map(str::to_string)
            .or_else(|| Some(r.comm.clone()))
            .and_then(text),
    );
    opt(
        "process.exit.code",
        r.exit.code.map(|c| c.into()).and_then(int),
    );
    let exe_build_id = r
        .exe
        .as_deref()
        .and_then(|exe| r.stack.iter().find(|f| f.module.as_deref() == Some(exe)))
        .and_then(|f| f.build_id.clone());
    opt(
        "process.executable.build_id.gnu",
        exe_build_id.and_then(text),
    );
    if let Some(c) = &r.container {
        opt("container.id", text(c.id.clone()));
        opt("container.name", c.name.clone().and_then(text));
        opt("container.image.name", c.image.clone().and_then(text));
    }
    if let Some(k) = &r.k8s {
        opt("k8s.namespace.name", k.namespace.clone().and_then(text));
        opt("k8s.pod.name", k.pod.clone().and_then(text));
        opt("k8s.pod.uid", k.pod_uid.clone().and_then(text));
        opt("k8s.container.name", k.container.clone().and_then(text));
        opt("k8s.node.name", text(k.node.clone()));
    }
    if let Some(c) = &r.cluster {
        opt("crashwatch.cluster.count", int(c.count as i64));
    }
    if cmdline && !r.cmdline.is_empty() {
        let args = r.cmdline.iter().filter_map(|s| text(s.clone())).collect();
        opt(
            "process.command_args",
            Some(AnyValue {
                value: Some(Value::ArrayValue(ArrayValue { values: args })),
            }),
        );
    }
    a
}

/// One crash as an OTLP/HTTP request body (protobuf).
pub fn encode(r: &Report, cmdline: bool) -> Vec<u8> {
    let now = crate::model::clock::now_ns();
    let record = LogRecord {
        time_unix_nano: crate::model::clock::parse_rfc3339(&r.time).unwrap_or(now),
        observed_time_unix_nano: now,
        severity_number: SeverityNumber::Fatal as i32,
        severity_text: "FATAL".into(),
        body: text(crate::pipeline::cluster::headline(r)),
        attributes: attributes(r, cmdline),
        ..Default::default()
    };
    let resource = Resource {
        attributes: vec![
            kv("host.name", text(r.host.clone())),
            kv("service.name", text("crashwatch")),
            kv("service.version", text(env!("CARGO_PKG_VERSION"))),
        ],
        ..Default::default()
    };
    ExportLogsServiceRequest {
        resource_logs: vec![ResourceLogs {
            resource: Some(resource),
            scope_logs: vec![ScopeLogs {
                scope: Some(InstrumentationScope {
                    name: "crashwatch".into(),
                    version: env!("CARGO_PKG_VERSION").into(),
                    ..Default::default()
                }),
                log_records: vec![record],
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
    .encode_to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_crash_decodes_back_with_its_attributes() {
        let r = Report {
            time: "2026-12-02T13:00:00.000001Z".into(),
            host: "node-1".into(),
            kind: "signal",
            pid: 7,
            ppid: 1,
            exe: Some("/usr/bin/app".into()),
            cmdline: vec!["app".into(), "--fast".into()],
            fingerprint: "v1:0123456789abcdef".into(),
            ..Report::default()
        };
        let req = ExportLogsServiceRequest::decode(&encode(&r, false)[..]).unwrap();
        let rec = &req.resource_logs[0].scope_logs[0].log_records[0];
        assert_eq!(rec.severity_number, SeverityNumber::Fatal as i32);
        assert_eq!(rec.time_unix_nano, 1_796_216_400_000_001_000);
        let get = |k: &str| {
            rec.attributes
                .iter()
                .find(|a| a.key == k)
                .map(|a| a.value.clone())
        };
        assert_eq!(get("process.pid"), Some(int(7)));
        assert_eq!(get("process.executable.name"), Some(text("app")));
        assert_eq!(
            get("crashwatch.fingerprint"),
            Some(text("v1:0123456789abcdef"))
        );
        assert_eq!(
            get("process.command_args"),
            None,
            "not without --otlp-cmdline"
        );
        let with = ExportLogsServiceRequest::decode(&encode(&r, true)[..]).unwrap();
        let rec = &with.resource_logs[0].scope_logs[0].log_records[0];
        assert!(rec
            .attributes
            .iter()
            .any(|a| a.key == "process.command_args"));
    }
}
