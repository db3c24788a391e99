{{/* The name shared by the chart's objects: the release's. */}}
{{- define "upgrader.name" -}}
{{- .Release.Name | trunc 52 | trimSuffix "-" -}}
{{- end -}}

{{/* The run id every pod of the Job (every Job of the CronJob) shares: <release>-<target> (upgrader.incluster.run_id_for). */}}
{{- define "upgrader.runId" -}}
{{- $target := required "set target (e.g. stable-2.14.10)" .Values.target -}}
{{- $id := .Values.runId | default (regexReplaceAll "[^a-z0-9-]+" (printf "%s-%s" .Release.Name $target | lower) "-" | trimAll "-") -}}
{{- if not (regexMatch "^[a-z0-9][a-z0-9-]{0,50}[a-z0-9]$" $id) -}}
{{- fail (printf "run id %q: 2-52 lowercase letters, digits and dashes; shorten the release name or set runId" $id) -}}
{{- end -}}
{{- $id -}}
{{- end -}}

{{- define "upgrader.serviceAccountName" -}}
{{- .Values.serviceAccount.name | default (include "upgrader.name" .) -}}
{{- end -}}

{{- define "upgrader.stateNamespace" -}}
{{- .Values.stateNamespace | default .Release.Namespace -}}
{{- end -}}

{{- define "upgrader.image" -}}
{{- $repo := required "set image.repository (the image built from the Containerfile)" .Values.image.repository -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" $repo .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" $repo (required "set image.digest (preferred) or image.tag" .Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{- define "upgrader.hasSpec" -}}
{{- if and .Values.spec .Values.specSecret -}}
{{- fail "give the spec as spec (a ConfigMap) or specSecret (a Secret), not both" -}}
{{- end -}}
{{- if or .Values.spec .Values.specSecret -}}true{{- end -}}
{{- end -}}

{{- define "upgrader.env" -}}
- name: HOME
  value: /tmp/upgrader
- name: XDG_CACHE_HOME
  value: /tmp/upgrader/cache
- name: XDG_CONFIG_HOME
  value: /tmp/upgrader/config
- name: XDG_STATE_HOME
  value: /tmp/upgrader/state
- name: HELM_CACHE_HOME
  value: /tmp/upgrader/helm/cache
- name: HELM_CONFIG_HOME
  value: /tmp/upgrader/helm/config
- name: HELM_DATA_HOME
  value: /tmp/upgrader/helm/data
{{- end -}}

{{- define "upgrader.hardened" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
capabilities:
  drop: ["ALL"]
{{- end -}}

{{/* The pod: upgrader.incluster.pod_template; the arguments: upgrader.incluster.job_args. Call with (dict "root" $ "name" NAME "wait" BOOL). */}}
{{- define "upgrader.pod" -}}
{{- $root := .root -}}
{{- $v := $root.Values -}}
metadata:
  labels:
    app.kubernetes.io/name: upgrader
    app.kubernetes.io/instance: {{ .name }}
spec:
  serviceAccountName: {{ include "upgrader.serviceAccountName" $root }}
  automountServiceAccountToken: true
  restartPolicy: Never
  {{- with $v.imagePullSecrets }}
  imagePullSecrets:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  securityContext:
    runAsNonRoot: true
    runAsUser: 65532
    runAsGroup: 65532
    fsGroup: 65532
    seccompProfile:
      type: RuntimeDefault
  initContainers:
    - name: helm-repo
      image: {{ include "upgrader.image" $root | quote }}
      imagePullPolicy: {{ $v.image.pullPolicy }}
      command: ["helm"]
      args: ["repo", "add", "linkerd", {{ $v.helmRepository | quote }}]
      env:
        {{- include "upgrader.env" . | nindent 8 }}
      volumeMounts:
        - name: work
          mountPath: /tmp/upgrader
      securityContext:
        {{- include "upgrader.hardened" . | nindent 8 }}
      resources:
        {{- toYaml $v.resources | nindent 8 }}
  containers:
    - name: upgrader
      image: {{ include "upgrader.image" $root | quote }}
      imagePullPolicy: {{ $v.image.pullPolicy }}
      args:
        - --log-format
        - json
        - apply
        - --to
        - {{ $v.target | quote }}
        {{- if include "upgrader.hasSpec" $root }}
        - --spec
        - /etc/upgrader/spec.yaml
        {{- end }}
        - --yes
        - --state-store
        - {{ printf "kubernetes:%s" (include "upgrader.stateNamespace" $root) | quote }}
        - --run-id
        - {{ include "upgrader.runId" $root | quote }}
        - --take-over-lock
        {{- range $v.windows }}
        - --window
        - {{ . | quote }}
        {{- end }}
        {{- if .wait }}
        - --wait-for-window
        {{- end }}
      env:
        {{- include "upgrader.env" . | nindent 8 }}
      volumeMounts:
        - name: work
          mountPath: /tmp/upgrader
        {{- if include "upgrader.hasSpec" $root }}
        - name: spec
          mountPath: /etc/upgrader
          readOnly: true
        {{- end }}
      securityContext:
        {{- include "upgrader.hardened" . | nindent 8 }}
      resources:
        {{- toYaml $v.resources | nindent 8 }}
  volumes:
    - name: work
      emptyDir: {}
    {{- if $v.specSecret }}
    - name: spec
      secret:
        secretName: {{ $v.specSecret }}
        items:
          - key: spec.yaml
            path: spec.yaml
    {{- else if $v.spec }}
    - name: spec
      configMap:
        name: {{ include "upgrader.name" $root }}-spec
        items:
          - key: spec.yaml
            path: spec.yaml
    {{- end }}
{{- end -}}

{{- define "upgrader.jobSpec" -}}
backoffLimit: {{ .root.Values.backoffLimit }}
podReplacementPolicy: Failed
# bad input (exit 2), preflight errors (exit 4) and a run stopped for an operator (exit 6) end the Job;
# evictions do not count as failures
podFailurePolicy:
  rules:
    - action: FailJob
      onExitCodes:
        containerName: upgrader
        operator: In
        values: [2, 4, 6]
    - action: Ignore
      onPodConditions:
        - type: DisruptionTarget
          status: "True"
{{- with .root.Values.activeDeadlineSeconds }}
activeDeadlineSeconds: {{ . }}
{{- end }}
{{- if not (kindIs "invalid" .root.Values.ttlSecondsAfterFinished) }}
ttlSecondsAfterFinished: {{ .root.Values.ttlSecondsAfterFinished }}
{{- end }}
template:
  {{- include "upgrader.pod" . | nindent 2 }}
{{- end -}}
