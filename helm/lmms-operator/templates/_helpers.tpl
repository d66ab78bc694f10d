{{/* The chart's name, or nameOverride: app.kubernetes.io/name and the full name's suffix. */}}
{{- define "lmms-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The release's full name (every object's name), at most 63 characters: fullnameOverride,
or the release name with the chart's name (nameOverride) unless it already holds it. */}}
{{- define "lmms-operator.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := include "lmms-operator.name" . -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "lmms-operator.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/name: {{ include "lmms-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: lmms-operator
{{- end -}}

{{- define "lmms-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "lmms-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end -}}

{{/* An image reference from {registry, repository, tag, digest}: the digest wins over the
tag; an empty tag is the chart's appVersion; global.imageRegistry (when the chart is a
subchart, say) goes in front of a repository that names no registry of its own. */}}
{{- define "lmms-operator.imageRef" -}}
{{- $repo := .image.repository -}}
{{- $registry := ((.root.Values.global | default dict).imageRegistry) | default "" -}}
{{- $first := regexFind "^[^/]+/" $repo -}}
{{- $own := and $first (or (contains "." $first) (contains ":" $first) (eq $first "localhost/")) -}}
{{- if and $registry (not $own) -}}
{{- $repo = printf "%s/%s" (trimSuffix "/" $registry) $repo -}}
{{- end -}}
{{- if .image.digest -}}
{{- printf "%s@%s" $repo .image.digest -}}
{{- else -}}
{{- printf "%s:%s" $repo (.image.tag | default .root.Chart.AppVersion) -}}
{{- end -}}
{{- end -}}

{{- define "lmms-operator.selectorPairs" -}}
{{- $pairs := list -}}
{{- range $k, $v := include "lmms-operator.selectorLabels" . | fromYaml -}}
{{- $pairs = append $pairs (printf "%s=%s" $k $v) -}}
{{- end -}}
{{- join "," $pairs -}}
{{- end -}}

{{- /* A map as k=v,k=v (sorted by key), e.g. settings.gpuMemory for LMMS_GPU_MEMORY. */}}
{{- define "lmms-operator.pairs" -}}
{{- $pairs := list -}}
{{- range $k, $v := . -}}
{{- $pairs = append $pairs (printf "%s=%v" $k $v) -}}
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
