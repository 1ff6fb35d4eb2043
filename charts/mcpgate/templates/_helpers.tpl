{{- define "mcpgate.labels" -}}
app.kubernetes.io/name: mcpgate
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end }}

{{/* The Secret holding the proxy's session key. */}}
{{- define "mcpgate.sessionKeySecret" -}}
{{- .Values.proxy.sessionKey.existingSecret | default (printf "%s-session-key" .Release.Name) -}}
{{- end -}}
