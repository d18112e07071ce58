{{/*
Chart name, shortened to the 63 characters a DNS label allows.
*/}}
{{- define "feed.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Full name of the release's resources. The StatefulSet pod name adds "-0"
and the controller-revision-hash label adds 11 more characters, so keep it
to 52 characters.
*/}}
{{- define "feed.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 52 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 52 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 52 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/*
Chart label value: name-version.
*/}}
{{- define "feed.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Selector labels: stable for the lifetime of a release.
*/}}
{{- define "feed.selectorLabels" -}}
app.kubernetes.io/name: {{ include "feed.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/*
Labels on every resource: chart labels, then commonLabels (which cannot
override the chart's own keys). Callers add app.kubernetes.io/component.
*/}}
{{- define "feed.labels" -}}
{{- $own := dict "helm.sh/chart" (include "feed.chart" .) "app.kubernetes.io/version" (toString .Chart.AppVersion) "app.kubernetes.io/managed-by" .Release.Service "app.kubernetes.io/part-of" "feed" }}
{{- $own = merge $own (fromYaml (include "feed.selectorLabels" .)) }}
{{- toYaml (merge $own (deepCopy (default (dict) .Values.commonLabels))) }}
{{- end }}

{{/*
ServiceAccount name.
*/}}
{{- define "feed.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "feed.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
Container image reference: digest wins over tag; the tag defaults to appVersion.
*/}}
{{- define "feed.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/*
Name of the Secret that holds the API key (chart-created or existing).
*/}}
{{- define "feed.apiKeySecretName" -}}
{{- if .Values.apiKey.existingSecret }}
{{- .Values.apiKey.existingSecret }}
{{- else }}
{{- include "feed.fullname" . }}
{{- end }}
{{- end }}

{{/*
Fail early, with a readable message, when required settings are missing or
contradict each other. Included by the StatefulSet.
*/}}
{{- define "feed.validate" -}}
{{- $missing := list }}
{{- if not .Values.api.baseUrl }}{{- $missing = append $missing "api.baseUrl" }}{{- end }}
{{- if not .Values.api.libraryId }}{{- $missing = append $missing "api.libraryId" }}{{- end }}
{{- if not .Values.kafka.bootstrapServers }}{{- $missing = append $missing "kafka.bootstrapServers" }}{{- end }}
{{- if and (not .Values.apiKey.value) (not .Values.apiKey.existingSecret) }}{{- $missing = append $missing "apiKey.value or apiKey.existingSecret" }}{{- end }}
{{- if $missing }}
{{- fail (printf "feed: missing required values: %s. One release follows one library; see the chart README." (join ", " $missing)) }}
{{- end }}
{{- if and .Values.apiKey.value .Values.apiKey.existingSecret }}
{{- fail "feed: set either apiKey.value or apiKey.existingSecret, not both." }}
{{- end }}
{{- if and .Values.kafka.configSecret.name .Values.kafka.config }}
{{- fail "feed: set either kafka.config or kafka.configSecret.name, not both (FEED_KAFKA__CONFIG is a single JSON object)." }}
{{- end }}
{{- end }}
