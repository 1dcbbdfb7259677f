# prometheus: a Prometheus that scrapes the Weft mesh on Nomad. It finds Nomad's native services
# through Nomad's API (nomad_sd_configs) and scrapes
# - the proxy of each meshed group (services tagged weft) at its admin port, which weft inject
#   exposes (below): its /metrics, the golden metrics the dashboards in configs/grafana/ read;
# - the control plane (the service weft-control-http of deploy-nomad/weft-control.nomad.hcl),
#   whose /metrics needs the token of its HTTP listener.
# Prometheus itself is not meshed: it dials the admin ports in plaintext, as they serve.
#
# Before the first run (Nomad 1.7 or later):
#
# 1. With ACLs on, let the job's workload identity list and read services, as the control
#    plane's does (deploy-nomad/prometheus.policy.hcl says what it grants):
#      nomad acl policy apply -namespace default -job prometheus prometheus \
#        deploy-nomad/prometheus.policy.hcl
# 2. The control plane's token, for its /metrics. Each control-plane instance writes its own to
#    /local/weft/http-token when it first starts (64 hex digits, kept for the life of the
#    allocation). Copy it into the Nomad Variable this job reads:
#      nomad alloc fs <allocation of weft-control> weft-control/local/weft/http-token
#      nomad var put nomad/jobs/prometheus weft_control_token=<that token>
#    What this does not cover: with several control-plane instances, each has a token of its
#    own, and a new allocation makes a new one. Only the instance whose token the Variable holds
#    is scraped; the others answer 401 and show as down until the Variable is updated. The
#    control-plane job does not yet give its instances one shared token (on Kubernetes the
#    chart's metrics.tokenSecret does).
# 3. The namespaces to look in: nomad_sd_configs below reads one namespace per entry (default,
#    as written). Add an entry per namespace that runs meshed jobs, and set the control plane's.
# 4. Run it:
#      nomad job run deploy-nomad/prometheus.nomad.hcl
#
# The proxies: `weft inject --platform nomad` gives each meshed group a port "weft_admin"
# (7191 inside, left out of interception) where the proxy's admin listener serves /metrics, and
# tags the group's services with weft-admin=<that port on the node>; this job scrapes every
# instance tagged weft and weft-admin=. Anything that reaches that port of the node can read the
# proxy's metrics (peer identities, service names and counts; no secrets) and its probes, as on
# Kubernetes, where injected pods open the admin port on the pod's address; admin actions stay
# off unless a proxy is started with them. A group injected before the port existed is not
# scraped until it is injected again.
#
# Exemplars (the trace of a sampled request in each latency bucket, shown by the dashboards'
# latency panels) are stored because of --enable-feature=exemplar-storage below.

variable "image" {
  type        = string
  default     = "prom/prometheus:v3.5.0"
  description = "Prometheus's image."
}

job "prometheus" {
  datacenters = ["*"]
  type        = "service"

  group "prometheus" {
    count = 1

    network {
      mode = "bridge"
      port "http" {
        to = 9090
      }
    }

    # Kept across updates on the same node, moved with the allocation when it can be.
    ephemeral_disk {
      sticky  = true
      migrate = true
      size    = 2048
    }

    # Where Grafana finds it.
    service {
      name     = "prometheus"
      provider = "nomad"
      port     = "http"

      check {
        name     = "ready"
        type     = "http"
        path     = "/-/ready"
        interval = "10s"
        timeout  = "2s"
      }
    }

    task "prometheus" {
      driver = "docker"

      # The task's own workload identity in secrets/nomad_token: what Prometheus presents to
      # Nomad's API to discover services, allowed by the ACL policy of step 1.
      identity {
        file = true
      }

      config {
        image = var.image
        args = [
          "--config.file=/local/prometheus.yml",
          "--storage.tsdb.path=/alloc/data/prometheus",
          "--storage.tsdb.retention.time=15d",
          "--enable-feature=exemplar-storage",
        ]
      }

      # The control plane's token (step 2); empty until the Variable holds it, which leaves the
      # control plane unscraped rather than Prometheus unstarted. Prometheus reads the file at
      # each scrape, so a new token needs no restart.
      template {
        destination = "secrets/weft-control-token"
        change_mode = "noop"
        perms       = "0400"
        uid         = 65534
        gid         = 65534
        data        = <<-EOT
          {{ if nomadVarExists "nomad/jobs/prometheus" }}{{ with nomadVar "nomad/jobs/prometheus" }}{{ if .weft_control_token }}{{ .weft_control_token }}{{ end }}{{ end }}{{ end }}
          EOT
      }

      # Prometheus's configuration; Nomad sends SIGHUP to reload it after an edit.
      template {
        destination   = "local/prometheus.yml"
        change_mode   = "signal"
        change_signal = "SIGHUP"
        data          = <<-EOT
          global:
            scrape_interval: 30s
            evaluation_interval: 30s

          scrape_configs:
            - job_name: prometheus
              static_configs:
                - targets: ["localhost:9090"]

            # The proxies of meshed groups, at the admin port weft inject exposes (see this
            # file's header): instances tagged weft and weft-admin=<node port>.
            - job_name: weft-proxies
              metrics_path: /metrics
              nomad_sd_configs:
                - server: "http://{{ env "attr.unique.network.ip-address" }}:4646"
                  namespace: default
                  authorization:
                    credentials_file: /secrets/nomad_token
              relabel_configs:
                - source_labels: [__meta_nomad_tags]
                  regex: ".*,weft,.*"
                  action: keep
                - source_labels: [__meta_nomad_tags]
                  regex: ".*,weft-admin=[0-9]+,.*"
                  action: keep
                - source_labels: [__meta_nomad_address, __meta_nomad_tags]
                  regex: "(.+);.*,weft-admin=([0-9]+),.*"
                  replacement: "$1:$2"
                  target_label: __address__
                - source_labels: [__meta_nomad_namespace]
                  target_label: namespace
                # The allocation, which the proxy names as its workload. No label per service:
                # the services of one group share one proxy, which is then scraped once.
                - source_labels: [__meta_nomad_service_id]
                  regex: "_nomad-task-([0-9a-f-]{36})-.*"
                  target_label: alloc

            # The control plane's /metrics, on the port of its service weft-control-http, with
            # the token of step 2.
            - job_name: weft-control
              metrics_path: /metrics
              authorization:
                credentials_file: /secrets/weft-control-token
              nomad_sd_configs:
                - server: "http://{{ env "attr.unique.network.ip-address" }}:4646"
                  namespace: default
                  authorization:
                    credentials_file: /secrets/nomad_token
              relabel_configs:
                - source_labels: [__meta_nomad_service]
                  regex: weft-control-http
                  action: keep
                - source_labels: [__meta_nomad_namespace]
                  target_label: namespace
                - source_labels: [__meta_nomad_service_id]
                  regex: "_nomad-task-([0-9a-f-]{36})-.*"
                  target_label: alloc
          EOT
      }

      resources {
        cpu    = 200
        memory = 512
      }
    }
  }
}
