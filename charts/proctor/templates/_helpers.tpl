{{/* Names and labels: every template takes them from here. */}}

{{- define "proctor.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The release's base name: the release name alone when it already says "proctor". */}}
{{- define "proctor.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* The operator's Deployment, Service, ConfigMap, ClusterRole, ... */}}
{{- define "proctor.operatorName" -}}
{{- printf "%s-operator" (include "proctor.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "proctor.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "proctor.operatorName" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name is required when serviceAccount.create is false: name an existing ServiceAccount" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "proctor.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "proctor.selectorLabels" -}}
app.kubernetes.io/name: {{ include "proctor.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end -}}

{{- define "proctor.labels" -}}
helm.sh/chart: {{ include "proctor.chart" . }}
{{ include "proctor.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: proctor
{{- end -}}

{{/* Labels of objects that are not the operator (CRDs, test pod): no component selector. */}}
{{- define "proctor.commonLabels" -}}
helm.sh/chart: {{ include "proctor.chart" . }}
app.kubernetes.io/name: {{ include "proctor.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: proctor
{{- end -}}

{{- define "proctor.image" -}}
{{- $tag := default .Chart.AppVersion .Values.image.tag -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository $tag -}}
{{- end -}}
{{- end -}}

{{/* The peering object's name: fixed by the operator (controller.configure). */}}
{{- define "proctor.peeringName" -}}proctor{{- end -}}

{{/*
RBAC rules split by scope, for watchNamespaces: cluster-scoped resources stay in a ClusterRole,
the rest go to a Role in each watched namespace. Input: a list of rules; "scope": "cluster" or
"namespaced". Output: YAML list of rules (possibly empty).
*/}}
{{- define "proctor.rulesByScope" -}}
{{- $clusterScoped := list "nodes" "namespaces" "customresourcedefinitions" "clusterkopfpeerings" -}}
{{- $out := list -}}
{{- range .rules -}}
{{- $keep := list -}}
{{- range .resources -}}
{{- $isCluster := has . $clusterScoped -}}
{{- if eq $isCluster (eq $.scope "cluster") -}}
{{- $keep = append $keep . -}}
{{- end -}}
{{- end -}}
{{- if $keep -}}
{{- $out = append $out (dict "apiGroups" .apiGroups "resources" $keep "verbs" .verbs) -}}
{{- end -}}
{{- end -}}
{{- if $out -}}
{{ toYaml $out }}
{{- else -}}
[]
{{- end -}}
{{- end -}}

{{/* The operator configuration (operator/proctor/config.py, camelCase), empty values left out. */}}
{{- define "proctor.operatorConfig" -}}
{{- $cfg := dict -}}
{{- range $key, $value := .Values.config -}}
{{- if or (kindIs "bool" $value) (kindIs "float64" $value) (kindIs "int64" $value) (kindIs "int" $value) $value -}}
{{- $_ := set $cfg $key $value -}}
{{- end -}}
{{- end -}}
{{- toYaml $cfg -}}
{{- end -}}
