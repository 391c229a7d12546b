{{- define "runsync.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}{{ .Release.Name | trunc 63 | trimSuffix "-" }}{{- else -}}{{ printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" }}{{- end -}}
{{- end -}}

{{- define "runsync.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "runsync.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end -}}

{{- define "runsync.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{- define "runsync.tlsSecret" -}}{{ include "runsync.fullname" . }}-webhook-tls{{- end -}}

{{- /* tls.mode "self": the Secret the operator makes and keeps (CA and serving certificate). Not
  the name chart 0.1.0 rendered its own Secret under: Helm deletes that one on upgrade. */ -}}
{{- define "runsync.caSecret" -}}{{ include "runsync.fullname" . }}-webhook-ca{{- end -}}

{{- /* The DNS names the apiserver uses for the webhook Service. */ -}}
{{- define "runsync.serviceHosts" -}}
{{- $service := printf "%s.%s.svc" (include "runsync.fullname" .) .Release.Namespace -}}
{{ $service }},{{ $service }}.cluster.local
{{- end -}}

{{- /* The webhook path is kopf's handler id in operator/values.py (WEBHOOK_ID); a test keeps them equal. */ -}}
{{- define "runsync.webhookPath" -}}/inject-pods{{- end -}}

{{- define "runsync.securityContext" -}}
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop: ["ALL"]
seccompProfile:
  type: RuntimeDefault
{{- end -}}
