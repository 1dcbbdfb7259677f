{{/* Labels every object of the release carries. */}}
{{- define "weft.labels" -}}
app.kubernetes.io/name: weft
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/* The control plane's pods: selected by these, never injected (weft.dev/control-plane). */}}
{{- define "weft.selector" -}}
app.kubernetes.io/name: weft
app.kubernetes.io/component: control-plane
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "weft.controlImage" -}}
{{ .Values.controlPlane.image.repository }}:{{ default .Chart.AppVersion .Values.controlPlane.image.tag }}
{{- end }}

{{- define "weft.proxyImage" -}}
{{ .Values.proxy.image.repository }}:{{ default .Chart.AppVersion .Values.proxy.image.tag }}
{{- end }}

{{- define "weft.caSecret" -}}
{{ default "weft-ca" .Values.ca.existingSecret }}
{{- end }}
