{{/* ---- names and labels ---------------------------------------------------------------- */}}

{{- define "ragtune.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "ragtune.fullname" -}}
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

{{/* Labels that select one component's pods: (dict "ctx" $ "component" "api") */}}
{{- define "ragtune.selectorLabels" -}}
app.kubernetes.io/name: {{ include "ragtune.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "ragtune.labels" -}}
{{ include "ragtune.selectorLabels" . }}
helm.sh/chart: {{ printf "%s-%s" .ctx.Chart.Name .ctx.Chart.Version | replace "+" "_" }}
app.kubernetes.io/version: {{ .ctx.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .ctx.Release.Service }}
app.kubernetes.io/part-of: ragtune
{{- end -}}

{{- define "ragtune.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{- define "ragtune.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "ragtune.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "ragtune.secretName" -}}
{{- default (include "ragtune.fullname" .) .Values.existingSecret -}}
{{- end -}}

{{/* ---- where Milvus and PostgreSQL are -------------------------------------------------- */}}

{{/* The milvus dependency's Service: "<release>-milvus", the naming rule of both the vendored
     stand-in and the official chart (release names containing "milvus" are used as is). */}}
{{- define "ragtune.milvusUri" -}}
{{- if .Values.milvus.enabled -}}
{{- $name := "milvus" -}}
{{- $host := "" -}}
{{- if .Values.milvus.fullnameOverride -}}
{{- $host = .Values.milvus.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else if contains $name .Release.Name -}}
{{- $host = .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $host = printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- printf "http://%s:%d" $host (int (.Values.milvus.service | default dict).port | default 19530) -}}
{{- else -}}
{{- .Values.externalMilvus.uri -}}
{{- end -}}
{{- end -}}

{{- define "ragtune.postgresqlFullname" -}}
{{- if .Values.postgresql.fullnameOverride -}}
{{- .Values.postgresql.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else if contains "postgresql" .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-postgresql" .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/* The catalog URL carries no password: pods get it as PGPASSWORD (see ragtune.env), which
     libpq, and so psycopg, reads when the URL has none. */}}
{{- define "ragtune.catalogUrl" -}}
{{- if .Values.postgresql.enabled -}}
{{- printf "postgresql+psycopg://%s@%s:5432/%s" .Values.postgresql.auth.username (include "ragtune.postgresqlFullname" .) .Values.postgresql.auth.database -}}
{{- else -}}
{{- .Values.externalPostgresql.url -}}
{{- end -}}
{{- end -}}

{{/* The Secret and key with the catalog password, as "name/key"; empty when there is none. */}}
{{- define "ragtune.catalogPasswordRef" -}}
{{- if .Values.postgresql.enabled -}}
{{- printf "%s/password" (default (include "ragtune.postgresqlFullname" .) .Values.postgresql.auth.existingSecret) -}}
{{- else if .Values.externalPostgresql.existingSecret -}}
{{- printf "%s/%s" .Values.externalPostgresql.existingSecret .Values.externalPostgresql.passwordKey -}}
{{- end -}}
{{- end -}}

{{/* ---- checks that JSON Schema cannot express: fail early with the fix in the message ----- */}}
{{- define "ragtune.validate" -}}
{{- if and (not .Values.milvus.enabled) (not .Values.externalMilvus.uri) -}}
{{- fail "milvus.enabled=false needs externalMilvus.uri (e.g. http://milvus.milvus.svc:19530): ragtune pods share one Milvus server; Milvus Lite (a local file) allows a single process" -}}
{{- end -}}
{{- if and (not .Values.postgresql.enabled) (not .Values.externalPostgresql.url) -}}
{{- fail "postgresql.enabled=false needs externalPostgresql.url (e.g. postgresql+psycopg://ragtune@db:5432/ragtune): the API, worker and indexing pods share one catalog" -}}
{{- end -}}
{{- if regexMatch "://[^/@]*:[^/@]*@" .Values.externalPostgresql.url -}}
{{- fail "externalPostgresql.url must not contain a password (it would land in a ConfigMap): put it in the Secret named by externalPostgresql.existingSecret" -}}
{{- end -}}
{{- if ge (int .Values.config.chunk_overlap) (int .Values.config.chunk_size) -}}
{{- fail (printf "config.chunk_overlap (%v) must be smaller than config.chunk_size (%v)" .Values.config.chunk_overlap .Values.config.chunk_size) -}}
{{- end -}}
{{- if and .Values.api.autoscaling.enabled (gt (int .Values.api.autoscaling.minReplicas) (int .Values.api.autoscaling.maxReplicas)) -}}
{{- fail (printf "api.autoscaling.minReplicas (%v) is above maxReplicas (%v)" .Values.api.autoscaling.minReplicas .Values.api.autoscaling.maxReplicas) -}}
{{- end -}}
{{- if and .Values.api.autoscaling.enabled (not (dig "requests" "cpu" "" .Values.api.resources)) -}}
{{- fail "api.autoscaling needs api.resources.requests.cpu: the HorizontalPodAutoscaler targets a percentage of it" -}}
{{- end -}}
{{- if and (or .Values.indexing.job.enabled .Values.indexing.cronJob.enabled) (not .Values.indexing.volume) -}}
{{- fail "indexing.job / indexing.cronJob need indexing.volume: the pod volume holding the documents (e.g. {persistentVolumeClaim: {claimName: documents, readOnly: true}})" -}}
{{- end -}}
{{- $llm := .Values.llm -}}
{{- if and $llm.enabled $llm.adapters (ne $llm.engine "vllm") -}}
{{- fail (printf "llm.adapters needs llm.engine=vllm: engine %s serves one model (give `ragtune serve-llm` its adapter as RAGTUNE_LLM_ADAPTER in llm.extraEnv)" $llm.engine) -}}
{{- end -}}
{{- $names := list (default $llm.model $llm.servedModelName) -}}
{{- range $llm.adapters -}}
{{- if has .name $names -}}
{{- fail (printf "llm.adapters: the model name %q is used twice (adapters and the base model's servedModelName each need their own)" .name) -}}
{{- end -}}
{{- $names = append $names .name -}}
{{- end -}}
{{- end -}}

{{/* ---- pod pieces shared by every ragtune workload --------------------------------------- */}}

{{/* Settings from the ConfigMap and Secret, the catalog password, then extra variables. */}}
{{- define "ragtune.env" -}}
{{- $ctx := .ctx -}}
envFrom:
  - configMapRef:
      name: {{ include "ragtune.fullname" $ctx }}
  - secretRef:
      name: {{ include "ragtune.secretName" $ctx }}
{{- $ref := include "ragtune.catalogPasswordRef" $ctx }}
{{- if or $ref .extraEnv }}
env:
  {{- if $ref }}
  - name: PGPASSWORD
    valueFrom:
      secretKeyRef:
        name: {{ splitList "/" $ref | first }}
        key: {{ splitList "/" $ref | last }}
  {{- end }}
  {{- with .extraEnv }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
{{- end }}
{{- end -}}

{{/* Restarts pods when their settings change (a ConfigMap change alone restarts nothing). */}}
{{- define "ragtune.configChecksums" -}}
checksum/config: {{ include (print .Template.BasePath "/configmap.yaml") . | sha256sum }}
checksum/secret: {{ include (print .Template.BasePath "/secret.yaml") . | sha256sum }}
{{- end -}}

{{/* The root filesystem is read-only: /tmp (caches, uploads in flight) and the data directory
     are the only writable paths. */}}
{{- define "ragtune.volumeMounts" -}}
- name: tmp
  mountPath: /tmp
- name: data
  mountPath: /var/lib/ragtune
{{- end -}}

{{- define "ragtune.volumes" -}}
- name: tmp
  emptyDir:
    sizeLimit: 2Gi
- name: data
{{- if .Values.persistence.enabled }}
  persistentVolumeClaim:
    claimName: {{ default (printf "%s-data" (include "ragtune.fullname" .)) .Values.persistence.existingClaim }}
{{- else }}
  emptyDir:
    sizeLimit: 10Gi
{{- end }}
{{- end -}}

{{- define "ragtune.podSpecCommon" -}}
serviceAccountName: {{ include "ragtune.serviceAccountName" . }}
# ragtune never calls the Kubernetes API: no token in its pods.
automountServiceAccountToken: false
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
securityContext:
  {{- toYaml .Values.podSecurityContext | nindent 2 }}
{{- end -}}

{{/* The `ragtune ingest` Job spec, shared by the install/upgrade Job and the CronJob: an Indexed
     Job whose pod i indexes shard i of N of the same folder. */}}
{{- define "ragtune.indexJobSpec" -}}
{{- $shards := int .Values.indexing.shards -}}
completionMode: Indexed
completions: {{ $shards }}
parallelism: {{ $shards }}
backoffLimit: {{ .Values.indexing.backoffLimit }}
template:
  metadata:
    labels:
      {{- include "ragtune.selectorLabels" (dict "ctx" . "component" "index") | nindent 6 }}
    annotations:
      {{- include "ragtune.configChecksums" . | nindent 6 }}
  spec:
    {{- include "ragtune.podSpecCommon" . | nindent 4 }}
    restartPolicy: Never
    containers:
      - name: index
        image: {{ include "ragtune.image" . | quote }}
        imagePullPolicy: {{ .Values.image.pullPolicy }}
        # Kubernetes expands $(JOB_COMPLETION_INDEX) from the env entry below.
        command: ["ragtune", "ingest", {{ .Values.indexing.path | quote }}, "--shard", "$(JOB_COMPLETION_INDEX)/{{ $shards }}"]
        {{- /* The Job controller sets JOB_COMPLETION_INDEX too; declaring it makes the expansion explicit. */}}
        {{- $index := dict "name" "JOB_COMPLETION_INDEX" "valueFrom" (dict "fieldRef" (dict "fieldPath" "metadata.annotations['batch.kubernetes.io/job-completion-index']")) }}
        {{- include "ragtune.env" (dict "ctx" . "extraEnv" (list $index)) | nindent 8 }}
        securityContext:
          {{- toYaml .Values.securityContext | nindent 10 }}
        {{- with .Values.indexing.resources }}
        resources:
          {{- toYaml . | nindent 10 }}
        {{- end }}
        volumeMounts:
          {{- include "ragtune.volumeMounts" . | nindent 10 }}
          - name: documents
            mountPath: {{ .Values.indexing.path }}
            readOnly: true
    volumes:
      {{- include "ragtune.volumes" . | nindent 6 }}
      - name: documents
        {{- toYaml .Values.indexing.volume | nindent 8 }}
{{- end -}}

{{/* A setting's value as the app reads it from the environment: strings as they are, lists
     comma-separated (the app splits them), numbers and booleans through toJson, because Helm
     holds YAML numbers as float64 and would print 52428800 as 5.24288e+07. */}}
{{- define "ragtune.settingValue" -}}
{{- if kindIs "string" . -}}
{{- . -}}
{{- else if kindIs "slice" . -}}
{{- join "," . -}}
{{- else -}}
{{- toJson . -}}
{{- end -}}
{{- end -}}
