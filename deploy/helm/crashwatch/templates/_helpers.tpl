{{- define "crashwatch.name" -}}crashwatch{{- end -}}

{{- define "crashwatch.labels" -}}
app.kubernetes.io/name: crashwatch
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/component: node-agent
{{- end -}}

{{/* Where agents send reports: hub.url, or the chart's own hub's Service; empty: nowhere. */}}
{{- define "crashwatch.hubURL" -}}
{{- if .Values.hub.url -}}
{{ .Values.hub.url }}
{{- else if .Values.hub.enabled -}}
{{ printf "http://%s-hub.%s.svc:%d" (include "crashwatch.name" .) .Release.Namespace (int .Values.hub.port) }}
{{- end -}}
{{- end -}}

{{- define "crashwatch.selector" -}}
app.kubernetes.io/name: crashwatch
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* config.toml: JSON's strings, numbers, booleans and string lists are valid TOML. */}}
{{- define "crashwatch.toml" -}}
# crashwatch's configuration, rendered by the chart (keys: crashwatch run's long flags).
listen = {{ printf "0.0.0.0:%d" (int .Values.port) | toJson }}
state-dir = {{ .Values.stateDir | toJson }}
{{- with .Values.sinks }}
{{- if .outputFile }}
output-file = {{ .outputFile | toJson }}
{{- end }}
{{- if .webhooks }}
webhook = {{ .webhooks | toJson }}
webhook-format = {{ .webhookFormat | toJson }}
{{- end }}
{{- if .webhookHeaders }}
webhook-header = {{ .webhookHeaders | toJson }}
{{- end }}
{{- if .otlpEndpoint }}
otlp-endpoint = {{ .otlpEndpoint | toJson }}
{{- end }}
{{- if .otlpHeaders }}
otlp-header = {{ .otlpHeaders | toJson }}
{{- end }}
{{- if .redact }}
redact = {{ .redact | toJson }}
{{- end }}
{{- end }}
{{- with include "crashwatch.hubURL" . }}
hub = {{ list . | toJson }}
hub-token-file = "/etc/crashwatch-hub/ingest-token"
{{- end }}
{{- if .Values.dumps.enabled }}
dumps = true
dump-socket = {{ printf "%s/coredump.sock" .Values.dumps.socketDir | toJson }}
{{- if .Values.dumps.keepCores }}
keep-cores = true
{{- end }}
{{- end }}
{{- range $key, $value := .Values.config }}
{{ $key }} = {{ $value | toJson }}
{{- end }}
{{ end -}}
