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

{{/* The config file's metrics address; with kubeProxyCompat a flag overrides it. */}}
{{- define "nftproxy.metricsBindConfig" -}}
{{- include "nftproxy.bind" (list .Values.config.metricsBindAddress .Values.shadow.metricsPort .Values.shadow.enabled) -}}
{{- end -}}

{{/* Where /metrics listens: with kubeProxyCompat the node's address, port 10249. */}}
{{- define "nftproxy.metricsBind" -}}
{{- if .Values.kubeProxyCompat -}}
{{- if .Values.shadow.enabled -}}
{{- fail "kubeProxyCompat makes the pods look like kube-proxy to its monitors: it replaces kube-proxy, it cannot shadow it (shadow.enabled)" -}}
{{- end -}}
$(NODE_IP):10249
{{- else -}}
{{- include "nftproxy.metricsBindConfig" . -}}
{{- end -}}
{{- end -}}

{{- define "nftproxy.port" -}}
{{- regexFind "[0-9]+$" . -}}
{{- end -}}

{{- define "nftproxy.monitored" -}}
{{- if or .Values.podMonitor.enabled .Values.serviceMonitor.enabled -}}
{{- $bind := include "nftproxy.metricsBind" . -}}
{{- if or (not $bind) (hasPrefix "127." $bind) (hasPrefix "[::1]" $bind) -}}
{{- fail "podMonitor/serviceMonitor need config.metricsBindAddress on a non-loopback address, e.g. 0.0.0.0:10249" -}}
{{- end -}}
true
{{- end -}}
{{- end -}}

{{/*
The API server's real address as YAML ({host, port}), or nothing: k8sServiceHost and
k8sServicePort, or with k8sServiceHost "auto" the server of kubeadm's
kube-system/kube-proxy ConfigMap (kubeconfig.conf), else of kube-public/cluster-info,
read at install time (helm's lookup; `helm template` cannot look up).
*/}}
{{- define "nftproxy.apiServer" -}}
{{- $host := toString .Values.k8sServiceHost -}}
{{- $port := toString .Values.k8sServicePort -}}
{{- if eq $host "auto" -}}
{{- $server := "" -}}
{{- $proxy := lookup "v1" "ConfigMap" "kube-system" "kube-proxy" -}}
{{- if and $proxy (hasKey ($proxy.data | default dict) "kubeconfig.conf") -}}
{{- $server = include "nftproxy.serverOf" (index $proxy.data "kubeconfig.conf") -}}
{{- end -}}
{{- if not $server -}}
{{- $info := lookup "v1" "ConfigMap" "kube-public" "cluster-info" -}}
{{- if and $info (hasKey ($info.data | default dict) "kubeconfig") -}}
{{- $server = include "nftproxy.serverOf" (index $info.data "kubeconfig") -}}
{{- end -}}
{{- end -}}
{{- if not $server -}}
{{- fail "k8sServiceHost=auto: neither kube-system/kube-proxy (kubeconfig.conf) nor kube-public/cluster-info was found (helm template cannot look them up); set k8sServiceHost and k8sServicePort to the API server's address" -}}
{{- end -}}
{{- include "nftproxy.hostPort" $server -}}
{{- else if $host -}}
host: {{ $host | quote }}
port: {{ $port | default "443" | quote }}
{{- end -}}
{{- end -}}

{{/*
The server URL of a kubeconfig's first cluster (the text of kubeadm's kubeconfig.conf
or cluster-info's kubeconfig), or nothing.
*/}}
{{- define "nftproxy.serverOf" -}}
{{- $clusters := (fromYaml .).clusters | default list -}}
{{- if $clusters -}}
{{- (index $clusters 0).cluster.server | default "" -}}
{{- end -}}
{{- end -}}

{{/*
A server URL's host and port as YAML ({host, port}); 443 when the URL names none.
*/}}
{{- define "nftproxy.hostPort" -}}
{{- $hostport := (urlParse .).host -}}
{{- $port := regexFind ":[0-9]+$" $hostport | trimPrefix ":" -}}
{{- $host := trimSuffix (printf ":%s" $port) $hostport | trimPrefix "[" | trimSuffix "]" -}}
host: {{ $host | quote }}
port: {{ $port | default "443" | quote }}
{{- end -}}

{{/*
The arguments of `nftproxy run` both containers share (the init container adds
--init-only): the config file, the node's name, the chart's own settings.
*/}}
{{- define "nftproxy.runArgs" -}}
{{- if .Values.logJSON -}}
- --log-json
{{ end -}}
- run
- --config=/etc/nftproxy/config.yaml
- --hostname-override=$(NODE_NAME)
- --drift-check-period={{ .Values.driftCheckPeriod }}
{{- if .Values.configFile }}
{{- /* kubeadm's file as it is: the chart's addresses, hostPorts and serviceCounters as flags, which win */}}
- --healthz-bind-address={{ include "nftproxy.healthzBind" . }}
- --metrics-bind-address={{ include "nftproxy.metricsBind" . }}
- --host-ports={{ .Values.hostPorts }}
- --service-counters={{ .Values.serviceCounters }}
{{- else if .Values.kubeProxyCompat }}
- --metrics-bind-address={{ include "nftproxy.metricsBind" . }}
{{- end }}
{{- if .Values.serviceCIDR }}
- --service-cidr={{ .Values.serviceCIDR }}
{{- end }}
{{- end -}}

{{/*
Both containers' environment: the node's name, and the API server's own address
(the kubernetes Service's ClusterIP exists only once this proxy has programmed it).
*/}}
{{- define "nftproxy.env" -}}
- name: NODE_NAME
  valueFrom:
    fieldRef:
      fieldPath: spec.nodeName
{{- if .Values.kubeProxyCompat }}
- name: NODE_IP
  valueFrom:
    fieldRef:
      fieldPath: status.hostIP
{{- end }}
{{- with include "nftproxy.apiServer" . }}
{{- $address := . | fromYaml }}
- name: KUBERNETES_SERVICE_HOST
  value: {{ $address.host | quote }}
- name: KUBERNETES_SERVICE_PORT
  value: {{ $address.port | quote }}
{{- end }}
{{- end -}}

{{/*
The capabilities the proxy container adds: NET_ADMIN, and SYS_MODULE when nft may
load kernel modules.
*/}}
{{- define "nftproxy.capabilities" -}}
- NET_ADMIN
{{- if .Values.loadModules }}
- SYS_MODULE
{{- end }}
{{- end -}}
