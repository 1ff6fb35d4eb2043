{{- define "mcpgate.labels" -}}
app.kubernetes.io/name: mcpgate
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end }}
