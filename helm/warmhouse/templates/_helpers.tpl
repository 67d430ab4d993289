{{/* Names, labels, images and the shared pieces of every Warmhouse pod. */}}

{{- define "warmhouse.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/* Name of one component's objects: warmhouse.name (dict "root" $ "component" "broker") */}}
{{- define "warmhouse.name" -}}
{{- printf "%s-%s" (include "warmhouse.fullname" .root) .component | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "warmhouse.selectorLabels" -}}
app.kubernetes.io/name: {{ .root.Chart.Name }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "warmhouse.labels" -}}
{{ include "warmhouse.selectorLabels" . }}
app.kubernetes.io/part-of: warmhouse
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version | replace "+" "_" }}
{{- end -}}

{{/* Image of a Warmhouse component: warmhouse.image (dict "root" $ "component" "broker") */}}
{{- define "warmhouse.image" -}}
{{- $img := .root.Values.image -}}
{{- printf "%s/%s:%s" (trimSuffix "/" $img.registry) .component ($img.tag | default .root.Chart.AppVersion) -}}
{{- end -}}

{{- define "warmhouse.secretName" -}}
{{- .Values.secrets.existingSecret | default (printf "%s-secrets" (include "warmhouse.fullname" .)) -}}
{{- end -}}

{{/* Service addresses, the same names docker-compose.yml gives its services. */}}
{{- define "warmhouse.kafkaBootstrap" -}}
{{- if .Values.kafka.enabled -}}
{{- $name := include "warmhouse.name" (dict "root" . "component" "kafka") -}}
{{- $hosts := list -}}
{{- range $i := until (int .Values.kafka.replicas) -}}
{{- $hosts = append $hosts (printf "%s-%d.%s-headless.%s.svc:9092" $name $i $name $.Release.Namespace) -}}
{{- end -}}
{{- join "," $hosts -}}
{{- else -}}
{{- required "kafka.bootstrap is required when kafka.enabled=false" .Values.kafka.bootstrap -}}
{{- end -}}
{{- end -}}

{{- define "warmhouse.influxUrl" -}}
{{- if .Values.influxdb.enabled -}}
{{- printf "http://%s:8086" (include "warmhouse.name" (dict "root" . "component" "influxdb")) -}}
{{- else -}}
{{- required "influxdb.url is required when influxdb.enabled=false" .Values.influxdb.url -}}
{{- end -}}
{{- end -}}

{{- define "warmhouse.postgresHost" -}}
{{- if .Values.postgresql.enabled -}}
{{- include "warmhouse.name" (dict "root" . "component" "postgresql") -}}
{{- else -}}
{{- required "postgresql.host is required when postgresql.enabled=false" .Values.postgresql.host -}}
{{- end -}}
{{- end -}}

{{- define "warmhouse.registryUrl" -}}
{{- printf "http://%s:8082" (include "warmhouse.name" (dict "root" . "component" "device-registry")) -}}
{{- end -}}

{{- define "warmhouse.queryUrl" -}}
{{- printf "http://%s:8081" (include "warmhouse.name" (dict "root" . "component" "ingest-query")) -}}
{{- end -}}

{{/* Environment every Warmhouse service gets. */}}
{{- define "warmhouse.commonEnv" -}}
- name: WARMHOUSE_LOG_FORMAT
  value: {{ .Values.logFormat | quote }}
- name: RUST_LOG
  value: {{ .Values.logLevel | quote }}
{{- end -}}

{{/* Topic variables: warmhouse.topicEnv (dict "root" $ "topics" (list "telemetry" ...)) */}}
{{- define "warmhouse.topicEnv" -}}
{{- $names := dict "telemetry" "WARMHOUSE_TOPIC_TELEMETRY" "deviceEvents" "WARMHOUSE_TOPIC_DEVICE_EVENTS" "deviceCommands" "WARMHOUSE_TOPIC_DEVICE_COMMANDS" "registryEvents" "WARMHOUSE_TOPIC_REGISTRY_EVENTS" "deadLetters" "WARMHOUSE_TOPIC_DEAD_LETTERS" -}}
{{- range .topics }}
- name: {{ index $names . }}
  value: {{ index $.root.Values.topics . | quote }}
{{- end -}}
{{- end -}}

{{/* Bearer-token verification variables (registry, query API). */}}
{{- define "warmhouse.authEnv" -}}
- name: WARMHOUSE_JWT_SECRET_FILE
  value: /run/secrets/warmhouse/jwt-secret
{{- with .Values.auth.jwtPublicKey }}
- name: WARMHOUSE_JWT_PUBLIC_KEY
  value: {{ . | quote }}
{{- end }}
{{- with .Values.auth.issuer }}
- name: WARMHOUSE_JWT_ISSUER
  value: {{ . | quote }}
{{- end }}
{{- with .Values.auth.audience }}
- name: WARMHOUSE_JWT_AUDIENCE
  value: {{ . | quote }}
{{- end }}
{{- end -}}

{{/* Extra environment from values: warmhouse.extraEnv .Values.broker.env */}}
{{- define "warmhouse.extraEnv" -}}
{{- range $name, $value := . }}
- name: {{ $name }}
  value: {{ $value | toString | quote }}
{{- end -}}
{{- end -}}

{{/* The Secret's keys a pod mounts at /run/secrets/warmhouse: warmhouse.secretVolume (dict "root" $ "keys" (list ...)) */}}
{{- define "warmhouse.secretVolume" -}}
- name: secrets
  secret:
    secretName: {{ include "warmhouse.secretName" .root }}
    defaultMode: 0440
    items:
{{- range .keys }}
      - key: {{ . }}
        path: {{ . }}
{{- end }}
{{- end -}}

{{/* An init container minting an admin service token into /run/warmhouse/tokens/<file>:
     warmhouse.mintToken (dict "root" $ "sub" "warmhouse-broker" "file" "broker-registry-token") */}}
{{- define "warmhouse.mintToken" -}}
- name: mint-{{ .file }}
  image: {{ include "warmhouse.image" (dict "root" .root "component" "tools") }}
  imagePullPolicy: {{ .root.Values.image.pullPolicy }}
  command:
    - /usr/local/bin/warmhouse-entrypoint
    - sh
    - -ec
    - umask 077; warmhouse-token --admin --sub {{ .sub }} --ttl-secs {{ int .root.Values.serviceTokens.ttlSeconds }} > /run/warmhouse/tokens/{{ .file }}
  env:
    - name: WARMHOUSE_JWT_SECRET_FILE
      value: /run/secrets/warmhouse/jwt-secret
{{- with .root.Values.auth.issuer }}
    - name: WARMHOUSE_JWT_ISSUER
      value: {{ . | quote }}
{{- end }}
{{- with .root.Values.auth.audience }}
    - name: WARMHOUSE_JWT_AUDIENCE
      value: {{ . | quote }}
{{- end }}
  securityContext:
    {{- toYaml .root.Values.containerSecurityContext | nindent 4 }}
  resources:
    requests: {cpu: 10m, memory: 16Mi}
    limits: {memory: 64Mi}
  volumeMounts:
    - name: secrets
      mountPath: /run/secrets/warmhouse
      readOnly: true
    - name: tokens
      mountPath: /run/warmhouse/tokens
{{- end -}}

{{/* HTTP probes on a port name. */}}
{{- define "warmhouse.probes" -}}
startupProbe:
  httpGet: {path: /healthz, port: {{ .port }}}
  periodSeconds: 2
  failureThreshold: 30
livenessProbe:
  httpGet: {path: /healthz, port: {{ .port }}}
  periodSeconds: 10
  timeoutSeconds: 3
  failureThreshold: 3
readinessProbe:
  httpGet: {path: /readyz, port: {{ .port }}}
  periodSeconds: 5
  timeoutSeconds: 3
  failureThreshold: 2
{{- end -}}

{{/* Pod annotations for Prometheus' kubernetes_sd "prometheus.io/*" convention. */}}
{{- define "warmhouse.scrapeAnnotations" -}}
prometheus.io/scrape: "true"
prometheus.io/port: {{ .port | quote }}
prometheus.io/path: /metrics
{{- end -}}

{{- define "warmhouse.scheduling" -}}
{{- with .nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}
