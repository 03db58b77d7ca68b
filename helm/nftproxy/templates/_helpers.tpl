{{- define "nftproxy.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "nftproxy.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "nftproxy.labels" -}}
{{ include "nftproxy.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "nftproxy.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "nftproxy.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* host:port with the port replaced in shadow mode (kube-proxy keeps its own). */}}
{{- define "nftproxy.bind" -}}
{{- $address := index . 0 -}}
{{- $shadowPort := index . 1 -}}
{{- $shadow := index . 2 -}}
{{- if and $shadow $address -}}
{{- $host := regexReplaceAll ":[0-9]+$" $address "" -}}
{{- printf "%s:%v" $host $shadowPort -}}
{{- else -}}
{{- $address -}}
{{- end -}}
{{- end -}}

{{- define "nftproxy.healthzBind" -}}
{{- include "nftproxy.bind" (list .Values.config.healthzBindAddress .Values.shadow.healthzPort .Values.shadow.enabled) -}}
{{- end -}}

{{- define "nftproxy.metricsBind" -}}
{{- include "nftproxy.bind" (list .Values.config.metricsBindAddress .Values.shadow.metricsPort .Values.shadow.enabled) -}}
{{- end -}}

{{- define "nftproxy.port" -}}
{{- regexFind "[0-9]+$" . -}}
{{- end -}}

{{- define "nftproxy.monitored" -}}
{{- if or .Values.podMonitor.enabled .Values.serviceMonitor.enabled -}}
{{- if or (not .Values.config.metricsBindAddress) (hasPrefix "127." .Values.config.metricsBindAddress) (hasPrefix "[::1]" .Values.config.metricsBindAddress) -}}
{{- fail "podMonitor/serviceMonitor need config.metricsBindAddress on a non-loopback address, e.g. 0.0.0.0:10249" -}}
{{- end -}}
true
{{- end -}}
{{- end -}}
