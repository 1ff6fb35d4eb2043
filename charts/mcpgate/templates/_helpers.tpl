{{/* The release's base name: every object the chart makes is named from it, so two
releases in two namespaces never collide (the operator's own objects in its namespace have
fixed names: one release per namespace). */}}
{{- define "mcpgate.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" -}}
{{- else if contains "mcpgate" .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-mcpgate" .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/* Cluster-scoped objects are shared by every namespace: their names carry the release's
namespace too. */}}
{{- define "mcpgate.clusterName" -}}
{{- printf "%s-%s" .Release.Namespace (include "mcpgate.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "mcpgate.selectorLabels" -}}
app.kubernetes.io/name: mcpgate
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "mcpgate.labels" -}}
{{ include "mcpgate.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{/* A component's ServiceAccount (operator or proxy). */}}
{{- define "mcpgate.serviceAccount" -}}
{{- printf "%s-%s" (include "mcpgate.fullname" .root) .component -}}
{{- end -}}

{{/* The Secret holding the proxy's session key: the operator creates it when missing. */}}
{{- define "mcpgate.sessionKeySecret" -}}
{{- .Values.proxy.sessionKey.existingSecret | default (printf "%s-session-key" (include "mcpgate.fullname" .)) -}}
{{- end -}}

{{/* The cluster-scoped object that owns what the operator creates (Manager Roles in tenant
namespaces, copies in the gateway namespace): deleting the release deletes it, and the
garbage collector then deletes all of those. */}}
{{- define "mcpgate.ownerClusterRole" -}}
{{- printf "%s-operator" (include "mcpgate.clusterName" .) -}}
{{- end -}}

{{- define "mcpgate.image" -}}
{{- printf "%s:%s" .image.repository (.image.tag | default .root.Chart.AppVersion) -}}
{{- end -}}

{{/* Scheduling, pull secrets and pod security shared by both Deployments: `.values` is the
component's values. */}}
{{- define "mcpgate.podSpec" -}}
{{- with .root.Values.imagePullSecrets }}
imagePullSecrets: {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .values.priorityClassName }}
priorityClassName: {{ . }}
{{- end }}
{{- with .values.nodeSelector }}
nodeSelector: {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .values.tolerations }}
tolerations: {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .values.affinity }}
affinity: {{- toYaml . | nindent 2 }}
{{- end }}
{{- if .values.topologySpreadConstraints }}
topologySpreadConstraints: {{- toYaml .values.topologySpreadConstraints | nindent 2 }}
{{- else if gt (int .values.replicas) 1 }}
# Replicas on different nodes and zones when the cluster allows it.
topologySpreadConstraints:
{{- range list "kubernetes.io/hostname" "topology.kubernetes.io/zone" }}
- maxSkew: 1
  topologyKey: {{ . }}
  whenUnsatisfiable: ScheduleAnyway
  labelSelector:
    matchLabels: {{- include "mcpgate.selectorLabels" $.root | nindent 6 }}
      app.kubernetes.io/component: {{ $.component }}
{{- end }}
{{- end }}
securityContext: {{- toYaml .values.podSecurityContext | nindent 2 }}
{{- end -}}

{{- define "mcpgate.podMeta" -}}
labels: {{- include "mcpgate.labels" .root | nindent 2 }}
  app.kubernetes.io/component: {{ .component }}
  {{- with .values.podLabels }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
{{- with .values.podAnnotations }}
annotations: {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{/* The OpenTelemetry environment of both components. */}}
{{- define "mcpgate.tracingEnv" -}}
{{- with .Values.tracing.otlpEndpoint }}
- {name: OTEL_EXPORTER_OTLP_ENDPOINT, value: {{ . | quote }}}
- {name: OTEL_TRACES_SAMPLER, value: {{ ternary "parentbased_traceidratio" "traceidratio" $.Values.tracing.followCallerSampling }}}
- {name: OTEL_TRACES_SAMPLER_ARG, value: {{ $.Values.tracing.sampleRatio | toString | quote }}}
{{- end }}
{{- end -}}
