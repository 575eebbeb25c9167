{{- define "gantry.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "gantry.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "gantry.labels" -}}
{{ include "gantry.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "gantry.adminSecret" -}}
{{- default (printf "%s-admin" (include "gantry.fullname" .)) .Values.admin.existingSecret -}}
{{- end -}}

{{- define "gantry.manifestPath" -}}
{{- if eq .Values.app.source "configMaps" -}}
/srv/app/{{ .Values.app.manifest }}
{{- else if eq .Values.app.source "image" -}}
/app/{{ .Values.app.manifest }}
{{- else -}}
{{- fail (printf "app.source must be image or configMaps, not %q" .Values.app.source) -}}
{{- end -}}
{{- end -}}

{{- define "gantry.rppal" -}}
{{- if not (has .Values.gpio.backend (list "sim" "rppal")) -}}
{{- fail (printf "gpio.backend must be sim or rppal, not %q" .Values.gpio.backend) -}}
{{- end -}}
{{- if eq .Values.gpio.backend "rppal" -}}true{{- end -}}
{{- end -}}

{{/* The KEDA floor: 0 in the http modes (the interceptor wakes the app), 1
with prometheus (a pod at zero reports nothing, so nothing would wake it). */}}
{{- define "gantry.minReplicas" -}}
{{- $k := .Values.keda -}}
{{- $http := has $k.mode (list "http" "http-legacy") -}}
{{- if eq (toString $k.minReplicas) "" -}}
{{- if $http }}0{{ else }}1{{ end -}}
{{- else if and (not $http) (lt (int $k.minReplicas) 1) -}}
{{- fail "keda.minReplicas must be at least 1 with keda.mode=prometheus: a pod at zero reports no metric, so nothing would wake it; use keda.mode=http to scale to zero" -}}
{{- else -}}
{{- int $k.minReplicas -}}
{{- end -}}
{{- end -}}

{{/* Traffic goes through the HTTP add-on's interceptor. */}}
{{- define "gantry.viaInterceptor" -}}
{{- if and .Values.keda.enabled (has .Values.keda.mode (list "http" "http-legacy")) -}}true{{- end -}}
{{- end -}}

{{/*
The Secret holding the runtime-config file, if any: the user's, or the one
the chart writes for keyValue.redis.
*/}}
{{- define "gantry.runtimeConfigSecret" -}}
{{- if .Values.runtimeConfig.existingSecret -}}
{{- .Values.runtimeConfig.existingSecret -}}
{{- else if .Values.keyValue.redis.stores -}}
{{- if not .Values.keyValue.redis.url -}}
{{- fail "keyValue.redis.stores needs keyValue.redis.url (redis://host:port)" -}}
{{- end -}}
{{- if not (regexMatch "^rediss?://[^/]+" .Values.keyValue.redis.url) -}}
{{- fail (printf "keyValue.redis.url %q is not a Redis URL: give redis://host:port" .Values.keyValue.redis.url) -}}
{{- end -}}
{{- printf "%s-runtime-config" (include "gantry.fullname" .) -}}
{{- end -}}
{{- end -}}
