{{/* Names: <release>-tunequeue, or the release name when it already says tunequeue. */}}
{{- define "tunequeue.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "tunequeue.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{/* Selector labels of one component: (dict "root" $ "component" "api"). */}}
{{- define "tunequeue.selector" -}}
app.kubernetes.io/name: {{ .root.Chart.Name }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "tunequeue.secretName" -}}
{{- if .Values.secrets.existingSecret -}}
{{- .Values.secrets.existingSecret -}}
{{- else -}}
{{- printf "%s-trial" (include "tunequeue.fullname" .) -}}
{{- end -}}
{{- end -}}

{{- define "tunequeue.apiImage" -}}
{{ .Values.images.api.repository }}:{{ .Values.images.api.tag }}
{{- end -}}

{{- define "tunequeue.workerImage" -}}
{{ .Values.images.worker.repository }}:{{ .Values.images.worker.tag }}
{{- end -}}

{{- define "tunequeue.serveUrl" -}}
http://{{ include "tunequeue.fullname" . }}-serve:{{ .Values.serve.service.port }}
{{- end -}}

{{/* A secretKeyRef env entry: (dict "name" "ENV" "root" $ "key" "secret-key" "optional" false). */}}
{{- define "tunequeue.secretEnv" -}}
- name: {{ .name }}
  valueFrom:
    secretKeyRef:
      name: {{ include "tunequeue.secretName" .root }}
      key: {{ .key }}
      {{- if .optional }}
      optional: true
      {{- end }}
{{- end -}}

{{/*
The environment every TuneQueue process gets (compose's x-tunequeue-env): settings from values, credentials from
the Secret. The URLs take their passwords from variables defined before them ($(VAR), which Kubernetes expands).
*/}}
{{- define "tunequeue.env" -}}
{{- $fullname := include "tunequeue.fullname" . -}}
- name: TUNEQUEUE_ENVIRONMENT
  value: production
{{ include "tunequeue.secretEnv" (dict "name" "POSTGRES_PASSWORD" "root" . "key" "database-password") }}
{{- if .Values.trial.enabled }}
- name: TUNEQUEUE_DATABASE_URL
  value: "postgresql+psycopg://tunequeue:$(POSTGRES_PASSWORD)@{{ $fullname }}-postgres:5432/tunequeue"
{{ include "tunequeue.secretEnv" (dict "name" "REDIS_PASSWORD" "root" . "key" "redis-password") }}
- name: TUNEQUEUE_REDIS_URL
  value: "redis://:$(REDIS_PASSWORD)@{{ $fullname }}-redis:6379/0"
{{- else }}
{{- $db := .Values.externalDatabase }}
- name: TUNEQUEUE_DATABASE_URL
  value: "postgresql+psycopg://{{ $db.user }}:$(POSTGRES_PASSWORD)@{{ $db.host }}:{{ $db.port }}/{{ $db.database }}{{ if $db.query }}?{{ $db.query }}{{ end }}"
{{- $redis := .Values.externalRedis }}
{{- if $redis.auth }}
{{ include "tunequeue.secretEnv" (dict "name" "REDIS_PASSWORD" "root" . "key" "redis-password") }}
{{- end }}
- name: TUNEQUEUE_REDIS_URL
  value: "{{ if $redis.tls }}rediss{{ else }}redis{{ end }}://{{ if $redis.auth }}:$(REDIS_PASSWORD)@{{ end }}{{ $redis.host }}:{{ $redis.port }}/{{ $redis.db }}"
{{- end }}
- name: TUNEQUEUE_ARTIFACTS
  value: {{ .Values.artifacts.location | quote }}
- name: TUNEQUEUE_S3_ENDPOINT_URL
  value: {{ if .Values.trial.enabled }}{{ printf "http://%s-minio:9000" $fullname | quote }}{{ else }}{{ .Values.artifacts.endpointUrl | quote }}{{ end }}
{{- if or .Values.trial.enabled .Values.artifacts.credentialsFromSecret }}
{{ include "tunequeue.secretEnv" (dict "name" "AWS_ACCESS_KEY_ID" "root" . "key" "s3-access-key-id") }}
{{ include "tunequeue.secretEnv" (dict "name" "AWS_SECRET_ACCESS_KEY" "root" . "key" "s3-secret-access-key") }}
{{- end }}
- name: AWS_DEFAULT_REGION
  value: {{ .Values.artifacts.region | quote }}
- name: TUNEQUEUE_WORK_DIR
  value: /var/lib/tunequeue/work
# s3:// base models are fetched here (common/model_cache.py): the pod's own folder, in its work emptyDir.
- name: TUNEQUEUE_MODEL_CACHE_DIR
  value: /var/lib/tunequeue/work/model-cache
- name: TUNEQUEUE_BASE_MODELS
  value: {{ .Values.baseModels | toJson | quote }}
- name: HF_HOME
  value: {{ printf "%s/huggingface" .Values.models.mountPath | quote }}
- name: TUNEQUEUE_WEBHOOK_ALLOW
  value: {{ .Values.webhookAllow | quote }}
- name: TUNEQUEUE_CELERY_QUEUE
  value: {{ .Values.queue | quote }}
- name: TUNEQUEUE_VALIDATE_QUEUE
  value: {{ .Values.validateQueue | quote }}
{{ include "tunequeue.secretEnv" (dict "name" "TUNEQUEUE_SECRETS_KEY" "root" . "key" "secrets-key" "optional" true) }}
{{- range $name, $value := .Values.extraEnv }}
- name: {{ $name }}
  value: {{ $value | toString | quote }}
{{- end }}
{{- end -}}

{{/* The pod settings every TuneQueue pod shares: no API token mounted, the images' non-root user. */}}
{{- define "tunequeue.podSecurity" -}}
automountServiceAccountToken: false
securityContext:
  runAsNonRoot: true
  runAsUser: 10001
  runAsGroup: 10001
  fsGroup: 10001
  seccompProfile:
    type: RuntimeDefault
{{- with .Values.images.pullSecrets }}
imagePullSecrets:
{{- range . }}
  - name: {{ . }}
{{- end }}
{{- end }}
{{- end -}}

{{- define "tunequeue.containerSecurity" -}}
securityContext:
  allowPrivilegeEscalation: false
  capabilities:
    drop: [ALL]
{{- end -}}

{{/*
Init container of every TuneQueue pod: waits until the database is at the migration head of this release's code
(compose: depends_on migrate, service_completed_successfully). Runs in the API image, which has alembic.ini and
migrations/.
*/}}
{{- define "tunequeue.waitForMigrations" -}}
- name: wait-for-migrations
  image: {{ include "tunequeue.apiImage" . }}
  imagePullPolicy: {{ .Values.images.pullPolicy }}
  command:
    - python
    - -c
    - |
{{ .Files.Get "files/wait_for_migrations.py" | indent 6 }}
  env:
{{ include "tunequeue.env" . | indent 4 }}
  {{- include "tunequeue.containerSecurity" . | nindent 2 }}
  resources:
    requests: {cpu: 50m, memory: 128Mi}
    limits: {memory: 512Mi}
{{- end -}}

{{/* The models volume: the claim when given, else an emptyDir. */}}
{{- define "tunequeue.modelsVolume" -}}
- name: models
{{- if .Values.models.existingClaim }}
  persistentVolumeClaim:
    claimName: {{ .Values.models.existingClaim }}
{{- else }}
  emptyDir: {}
{{- end }}
{{- end -}}
