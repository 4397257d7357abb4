{{/* Chart name, overridable. */}}
{{- define "policyserve.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Full name prefix of every object: release name + chart name (the release name alone when it
already contains the chart name). Cluster-scoped objects carry it too, so releases never clash.
*/}}
{{- define "policyserve.fullname" -}}
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

{{/* Chart name and version, for the helm.sh/chart label. */}}
{{- define "policyserve.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels on every object. */}}
{{- define "policyserve.labels" -}}
helm.sh/chart: {{ include "policyserve.chart" . }}
{{ include "policyserve.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: policyserve
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Selector labels of the release; add app.kubernetes.io/component per workload. */}}
{{- define "policyserve.selectorLabels" -}}
app.kubernetes.io/name: {{ include "policyserve.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "policyserve.operator.fullname" -}}
{{- printf "%s-operator" (include "policyserve.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "policyserve.agent.fullname" -}}
{{- printf "%s-agent" (include "policyserve.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "policyserve.operator.serviceAccountName" -}}
{{- if .Values.operator.serviceAccount.create }}
{{- default (include "policyserve.operator.fullname" .) .Values.operator.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.operator.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "policyserve.agent.serviceAccountName" -}}
{{- if .Values.agent.serviceAccount.create }}
{{- default (include "policyserve.agent.fullname" .) .Values.agent.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.agent.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "policyserve.operator.image" -}}
{{- printf "%s:%s" .Values.operator.image.repository (default .Chart.AppVersion .Values.operator.image.tag) }}
{{- end }}

{{/* The agent image; pass (dict "root" $ "gpu" true) for the GPU build. */}}
{{- define "policyserve.agent.image" -}}
{{- $tag := default .root.Chart.AppVersion .root.Values.agent.image.tag }}
{{- if .gpu }}{{ $tag = printf "%s-gpu" $tag }}{{ end }}
{{- printf "%s:%s" .root.Values.agent.image.repository $tag }}
{{- end }}

{{/* The operator's Lease name. */}}
{{- define "policyserve.leaseName" -}}
{{- default (include "policyserve.operator.fullname" .) .Values.operator.leaderElection.leaseName }}
{{- end }}

{{/* Whether the agents' probes use the gRPC probe type (Kubernetes >= 1.24). */}}
{{- define "policyserve.agent.grpcProbe" -}}
{{- $type := .Values.agent.probes.type }}
{{- if or (eq $type "grpc") (and (eq $type "auto") (semverCompare ">=1.24.0-0" .Capabilities.KubeVersion.Version)) }}true{{ end }}
{{- end }}

{{/* The agent's rules on namespaced objects: a ClusterRole's, or a Role's in watchNamespace. */}}
{{- define "policyserve.agent.namespacedRules" -}}
- apiGroups: ["policyserve.io"]
  resources: ["optimizationprofiles"]
  verbs: ["get", "list", "watch"]
# Server-side apply of the status the agent owns.
- apiGroups: ["policyserve.io"]
  resources: ["optimizationprofiles/status"]
  verbs: ["patch"]
- apiGroups: [""]
  resources: ["configmaps"]
  verbs: ["get"]
{{- end }}

{{/* The operator's rules on namespaced objects: a ClusterRole's, or a Role's in watchNamespace. */}}
{{- define "policyserve.operator.namespacedRules" -}}
- apiGroups: ["policyserve.io"]
  resources: ["policyservices"]
  verbs: ["get", "list", "watch", "patch", "update"]
- apiGroups: ["policyserve.io"]
  resources: ["policyservices/status"]
  verbs: ["get", "patch", "update"]
# Owner references with blockOwnerDeletion on the profiles need update on finalizers.
- apiGroups: ["policyserve.io"]
  resources: ["policyservices/finalizers"]
  verbs: ["update"]
- apiGroups: ["policyserve.io"]
  resources: ["optimizationprofiles"]
  verbs: ["get", "list", "watch", "create", "patch", "update", "delete", "deletecollection"]
- apiGroups: [""]
  resources: ["services"]
  verbs: ["get", "list", "watch", "create", "patch", "update", "delete"]
# deletecollection: the finalizer removes a PolicyService's slices by label in one call.
- apiGroups: ["discovery.k8s.io"]
  resources: ["endpointslices"]
  verbs: ["get", "list", "watch", "create", "patch", "update", "delete", "deletecollection"]
- apiGroups: [""]
  resources: ["endpoints"]
  verbs: ["get", "list", "watch", "create", "patch", "update", "delete"]
- apiGroups: ["events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
{{- end }}
