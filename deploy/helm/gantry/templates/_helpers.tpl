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
