{{/* The release's full name, at most 63 characters. */}}
{{- define "lmms-operator.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "lmms-operator.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: lmms-operator
{{- end -}}

{{- define "lmms-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end -}}

{{/* The selector labels as key=value,key=value (LMMS_OPERATOR_POD_LABELS). */}}
{{- define "lmms-operator.selectorPairs" -}}
{{- $pairs := list -}}
{{- range $k, $v := include "lmms-operator.selectorLabels" . | fromYaml -}}
{{- $pairs = append $pairs (printf "%s=%s" $k $v) -}}
{{- end -}}
{{- join "," $pairs -}}
{{- end -}}

{{- define "lmms-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "lmms-operator.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* Labels every runner pod carries (set by the operator). */}}
{{- define "lmms-operator.runnerSelector" -}}
app.kubernetes.io/managed-by: lmms-operator
{{- end -}}

{{/* Namespaces with runner pods, for NetworkPolicies and the PodMonitor. */}}
{{- define "lmms-operator.runnerNamespaces" -}}
{{- $ns := .Values.networkPolicy.runnerNamespaces | default .Values.watch.namespaces | default (list .Release.Namespace) -}}
{{- toJson $ns -}}
{{- end -}}

{{/* A LabelSelector (matchLabels, matchExpressions) in kubectl's -l syntax, for
LMMS_PROMETHEUS_*_SELECTOR. */}}
{{- define "lmms-operator.selectorString" -}}
{{- $terms := list -}}
{{- range $k, $v := .matchLabels -}}
{{- $terms = append $terms (printf "%s=%s" $k $v) -}}
{{- end -}}
{{- range .matchExpressions -}}
{{- if eq .operator "In" -}}
{{- $terms = append $terms (printf "%s in (%s)" .key (join "," .values)) -}}
{{- else if eq .operator "NotIn" -}}
{{- $terms = append $terms (printf "%s notin (%s)" .key (join "," .values)) -}}
{{- else if eq .operator "Exists" -}}
{{- $terms = append $terms .key -}}
{{- else -}}
{{- $terms = append $terms (printf "!%s" .key) -}}
{{- end -}}
{{- end -}}
{{- join "," $terms -}}
{{- end -}}

{{/* Whether runner pods admit the Prometheus pods of networkPolicy.prometheus (the runner
PodMonitor): with podMonitor and networkPolicy enabled, and a selector set. */}}
{{- define "lmms-operator.prometheusPeer" -}}
{{- $p := .Values.networkPolicy.prometheus | default dict -}}
{{- if and .Values.podMonitor.enabled .Values.networkPolicy.enabled (or (include "lmms-operator.selectorString" ($p.namespaceSelector | default dict)) (include "lmms-operator.selectorString" ($p.podSelector | default dict))) -}}
true
{{- end -}}
{{- end -}}
