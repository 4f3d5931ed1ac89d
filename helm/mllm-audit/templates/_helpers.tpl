{{/*
Chart name, truncated to the 63 characters a DNS label allows.
*/}}
{{- define "mllm-audit.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Fully qualified app name: the release name, prefixed to the chart name unless it holds it.
*/}}
{{- define "mllm-audit.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "mllm-audit.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "mllm-audit.selectorLabels" -}}
app.kubernetes.io/name: {{ include "mllm-audit.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "mllm-audit.labels" -}}
helm.sh/chart: {{ include "mllm-audit.chart" . }}
{{ include "mllm-audit.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/component: server
app.kubernetes.io/part-of: mllm-audit
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "mllm-audit.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "mllm-audit.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
The port the service listens on inside the container (MLLM_AUDIT_PORT).
*/}}
{{- define "mllm-audit.containerPort" -}}
8000
{{- end }}

{{/*
Image reference: the tag defaults to <appVersion>-cpu, or <appVersion>-cuda with gpu.enabled.
*/}}
{{- define "mllm-audit.image" -}}
{{- $variant := ternary "cuda" "cpu" .Values.gpu.enabled }}
{{- $tag := default (printf "%s-%s" .Chart.AppVersion $variant) .Values.image.tag }}
{{- printf "%s:%s" .Values.image.repository $tag }}
{{- end }}

{{/*
Name of the Secret holding the API key, empty when no key is configured.
*/}}
{{- define "mllm-audit.apiKeySecretName" -}}
{{- if .Values.apiKey.existingSecret }}
{{- .Values.apiKey.existingSecret }}
{{- else if .Values.apiKey.value }}
{{- include "mllm-audit.fullname" . }}
{{- end }}
{{- end }}

{{- define "mllm-audit.apiKeySecretKey" -}}
{{- if .Values.apiKey.existingSecret }}
{{- .Values.apiKey.existingSecretKey }}
{{- else }}
{{- "api-key" }}
{{- end }}
{{- end }}

{{/*
MLLM_AUDIT_MODEL for a mounted model: <mountPath>/<path>; empty for the bundled model (the
image's own default then applies).
*/}}
{{- define "mllm-audit.modelPath" -}}
{{- if ne .Values.model.source "bundled" }}
{{- if .Values.model.path }}
{{- printf "%s/%s" (trimSuffix "/" .Values.model.mountPath) (trimPrefix "/" .Values.model.path) }}
{{- else }}
{{- .Values.model.mountPath }}
{{- end }}
{{- end }}
{{- end }}

{{/*
A value as an environment variable string. Helm reads numbers as float64, which would print
10000000 as "1e+07": whole numbers are printed as integers.
*/}}
{{- define "mllm-audit.envValue" -}}
{{- if kindIs "float64" . }}
{{- if eq . (floor .) }}{{ int64 . }}{{ else }}{{ . }}{{ end }}
{{- else }}
{{- toString . }}
{{- end }}
{{- end }}

{{/*
Seconds in-flight audits get after SIGTERM (MLLM_AUDIT_DRAIN_TIMEOUT): the grace period less the
preStop sleep and shutdown.stopSeconds for the processes to stop, so the kubelet's SIGKILL never
cuts a drain short.
*/}}
{{- define "mllm-audit.drainTimeout" -}}
{{- sub (sub (int .Values.terminationGracePeriodSeconds) (int .Values.shutdown.preStopSleepSeconds)) (int .Values.shutdown.stopSeconds) }}
{{- end }}

{{/*
Checks of combinations the schema cannot express.
*/}}
{{- define "mllm-audit.validate" -}}
{{- $src := .Values.model.source }}
{{- if and (eq $src "pvc") (not .Values.model.pvc.claimName) }}
{{- fail "model.source=pvc needs model.pvc.claimName" }}
{{- end }}
{{- if and (eq $src "hostPath") (not .Values.model.hostPath.path) }}
{{- fail "model.source=hostPath needs model.hostPath.path" }}
{{- end }}
{{- if and (eq $src "image") (not .Values.model.image.repository) }}
{{- fail "model.source=image needs model.image.repository" }}
{{- end }}
{{- if and (eq $src "bundled") .Values.model.path }}
{{- fail "model.path is only used with a mounted model (model.source pvc, hostPath or image)" }}
{{- end }}
{{- if include "mllm-audit.truthy" (get .Values.config "MLLM_AUDIT_PROTECT_HEALTH") }}
{{- fail "config.MLLM_AUDIT_PROTECT_HEALTH=true would make the kubelet's /livez and /readyz probes fail with 401; keep them open inside the cluster" }}
{{- end }}
{{- if lt (int (include "mllm-audit.drainTimeout" .)) 1 }}
{{- fail "terminationGracePeriodSeconds must exceed shutdown.preStopSleepSeconds + shutdown.stopSeconds: no time would be left to drain in-flight audits" }}
{{- end }}
{{- if and (include "mllm-audit.truthy" (get .Values.config "MLLM_AUDIT_PROTECT_METRICS")) .Values.serviceMonitor.enabled (not (include "mllm-audit.apiKeySecretName" .)) }}
{{- fail "config.MLLM_AUDIT_PROTECT_METRICS=true needs an API key (apiKey.value or apiKey.existingSecret)" }}
{{- end }}
{{- if and .Values.autoscaling.enabled (gt (int .Values.autoscaling.minReplicas) (int .Values.autoscaling.maxReplicas)) }}
{{- fail "autoscaling.minReplicas must not exceed autoscaling.maxReplicas" }}
{{- end }}
{{- if and .Values.autoscaling.enabled (not .Values.autoscaling.targetCPUUtilizationPercentage) (not .Values.autoscaling.podsMetric.enabled) }}
{{- fail "autoscaling needs targetCPUUtilizationPercentage or podsMetric.enabled" }}
{{- end }}
{{- end }}

{{/*
"true" for a value the service parses as true (1, true, yes, on), empty otherwise.
*/}}
{{- define "mllm-audit.truthy" -}}
{{- if has (lower (toString .)) (list "1" "true" "yes" "on") }}true{{ end }}
{{- end }}
