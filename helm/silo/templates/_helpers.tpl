{{/* Names: "<release>-silo" unless the release name already holds the chart name. */}}
{{- define "silo.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "silo.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "silo.routerName" -}}{{ include "silo.fullname" . }}-router{{- end }}
{{- define "silo.controlPlaneName" -}}{{ include "silo.fullname" . }}-control-plane{{- end }}

{{- define "silo.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "silo.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: silo
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Selector labels of one component: include with (dict "ctx" $ "component" "router"). */}}
{{- define "silo.selectorLabels" -}}
app.kubernetes.io/name: {{ include "silo.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "silo.componentLabels" -}}
{{ include "silo.labels" .ctx }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "silo.image" -}}
{{- $image := .Values.image }}
{{- if $image.digest }}
{{- printf "%s@%s" $image.repository $image.digest }}
{{- else }}
{{- printf "%s:%s" $image.repository (default .Chart.AppVersion $image.tag) }}
{{- end }}
{{- end }}

{{- define "silo.jwtSecretName" -}}
{{- default (printf "%s-jwt" (include "silo.fullname" .)) .Values.jwt.secret.name }}
{{- end }}
{{- define "silo.controlPlaneSecretName" -}}
{{- default (include "silo.controlPlaneName" .) .Values.controlPlane.secret.name }}
{{- end }}
{{- define "silo.routerSecretName" -}}
{{- default (include "silo.routerName" .) .Values.router.secret.name }}
{{- end }}

{{- define "silo.serviceAccountName" -}}
{{- $component := index .ctx.Values .key }}
{{- if $component.serviceAccount.create }}
{{- default .default $component.serviceAccount.name }}
{{- else }}
{{- default "default" $component.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The JWT verification settings (ConfigMap data); an HMAC secret comes from silo.jwtSecretEnv. */}}
{{- define "silo.jwtConfig" -}}
SILO_JWT_ALGORITHMS: {{ join "," .Values.jwt.algorithms | quote }}
{{- with .Values.jwt.issuer }}
SILO_JWT_ISSUER: {{ . | quote }}
{{- end }}
SILO_JWT_LEEWAY_SECS: {{ .Values.jwt.leewaySecs | quote }}
{{- if eq .Values.jwt.keyType "publicKey" }}
SILO_JWT_PUBLIC_KEY_FILE: /etc/silo/jwt/jwt-public-key.pem
{{- else if eq .Values.jwt.keyType "jwks" }}
SILO_JWT_JWKS_FILE: /etc/silo/jwt/jwks.json
{{- end }}
{{- end }}

{{- define "silo.jwtSecretEnv" -}}
{{- if eq .Values.jwt.keyType "hmac" }}
- name: SILO_JWT_HMAC_SECRET
  valueFrom:
    secretKeyRef:
      name: {{ include "silo.jwtSecretName" . }}
      key: hmac-secret
{{- end }}
{{- end }}

{{- define "silo.tlsSecretName" -}}
{{- default (printf "%s-tls" (include "silo.fullname" .)) .Values.tls.secretName }}
{{- end }}

{{/* The gRPC server's TLS settings (ConfigMap data) when TLS is on. */}}
{{- define "silo.tlsServerConfig" -}}
{{- if .Values.tls.enabled }}
SILO_TLS_CERT_FILE: /etc/silo/tls/tls.crt
SILO_TLS_KEY_FILE: /etc/silo/tls/tls.key
{{- if .Values.tls.mutual }}
SILO_TLS_CLIENT_CA_FILE: /etc/silo/tls/ca.crt
{{- end }}
{{- end }}
{{- end }}

{{/* Volumes both pods have: a writable /tmp, for key files the JWT key, the TLS Secret
and the tenant databases' CA bundle when configured. */}}
{{- define "silo.commonVolumes" -}}
- name: tmp
  emptyDir:
    sizeLimit: 64Mi
{{- if .Values.tls.enabled }}
- name: tls
  secret:
    secretName: {{ include "silo.tlsSecretName" . }}
    defaultMode: 0440
{{- end }}
{{- with .Values.tenantDatabaseCa }}
{{- if and .secretName .configMapName }}
{{- fail "tenantDatabaseCa: set secretName or configMapName, not both" }}
{{- end }}
{{- if or .secretName .configMapName }}
- name: tenant-ca
  {{- if .secretName }}
  secret:
    secretName: {{ .secretName }}
    defaultMode: 0444
  {{- else }}
  configMap:
    name: {{ .configMapName }}
    defaultMode: 0444
  {{- end }}
    items:
      - key: {{ required "tenantDatabaseCa.key names the bundle's key" .key }}
        path: {{ .key }}
{{- end }}
{{- end }}
{{- if ne .Values.jwt.keyType "hmac" }}
- name: jwt
  secret:
    secretName: {{ include "silo.jwtSecretName" . }}
    defaultMode: 0440
    items:
      {{- if eq .Values.jwt.keyType "publicKey" }}
      - key: jwt-public-key.pem
        path: jwt-public-key.pem
      {{- else }}
      - key: jwks.json
        path: jwks.json
      {{- end }}
{{- end }}
{{- end }}

{{- define "silo.commonVolumeMounts" -}}
- name: tmp
  mountPath: /tmp
{{- if .Values.tls.enabled }}
- name: tls
  mountPath: /etc/silo/tls
  readOnly: true
{{- end }}
{{- if or .Values.tenantDatabaseCa.secretName .Values.tenantDatabaseCa.configMapName }}
- name: tenant-ca
  mountPath: /etc/silo/tenant-ca
  readOnly: true
{{- end }}
{{- if ne .Values.jwt.keyType "hmac" }}
- name: jwt
  mountPath: /etc/silo/jwt
  readOnly: true
{{- end }}
{{- end }}

{{/* Probes of one component: include with (dict "probes" .probes "port" 50051 "service" "pkg.Service" "tls" true); gRPC probes take a port number, not a name. With TLS (gRPC probes cannot speak it) the metrics port answers instead: /readyz is the gRPC health status, /healthz the process. */}}
{{- define "silo.probes" -}}
{{- if .tls }}
{{- if eq .probes.liveness.type "grpc" }}
{{- fail "probes.liveness.type grpc cannot be used with tls.enabled: Kubernetes gRPC probes do not speak TLS (use http)" }}
{{- end }}
startupProbe:
  httpGet:
    path: /readyz
    port: metrics
  periodSeconds: {{ .probes.startup.periodSeconds }}
  timeoutSeconds: {{ .probes.startup.timeoutSeconds }}
  failureThreshold: {{ .probes.startup.failureThreshold }}
readinessProbe:
  httpGet:
    path: /readyz
    port: metrics
  periodSeconds: {{ .probes.readiness.periodSeconds }}
  timeoutSeconds: {{ .probes.readiness.timeoutSeconds }}
  failureThreshold: {{ .probes.readiness.failureThreshold }}
livenessProbe:
  httpGet:
    path: /healthz
    port: metrics
  periodSeconds: {{ .probes.liveness.periodSeconds }}
  timeoutSeconds: {{ .probes.liveness.timeoutSeconds }}
  failureThreshold: {{ .probes.liveness.failureThreshold }}
{{- else }}
startupProbe:
  grpc:
    port: {{ .port }}
    service: {{ .service }}
  periodSeconds: {{ .probes.startup.periodSeconds }}
  timeoutSeconds: {{ .probes.startup.timeoutSeconds }}
  failureThreshold: {{ .probes.startup.failureThreshold }}
readinessProbe:
  grpc:
    port: {{ .port }}
    service: {{ .service }}
  periodSeconds: {{ .probes.readiness.periodSeconds }}
  timeoutSeconds: {{ .probes.readiness.timeoutSeconds }}
  failureThreshold: {{ .probes.readiness.failureThreshold }}
livenessProbe:
  {{- if eq .probes.liveness.type "grpc" }}
  grpc:
    port: {{ .port }}
    service: {{ .service }}
  {{- else }}
  httpGet:
    path: /metrics
    port: metrics
  {{- end }}
  periodSeconds: {{ .probes.liveness.periodSeconds }}
  timeoutSeconds: {{ .probes.liveness.timeoutSeconds }}
  failureThreshold: {{ .probes.liveness.failureThreshold }}
{{- end }}
{{- end }}
