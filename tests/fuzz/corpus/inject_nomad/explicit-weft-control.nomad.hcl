# weft-control: the Weft control plane as a Nomad service job. One per cluster: proxies of
# every namespace find it through the Nomad service weft-control-grpc.
#
# Before the first run (Nomad 1.7 or later, ACLs on or off; the clients need the Docker driver
# and the CNI plugins that bridge networking uses):
#
# 1. The mesh's root CA, certificate and key in PEM, for example:
#      openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 3650 \
#        -subj "/CN=weft root" -keyout root.key -out root.pem
# 2. The key where only this job reads it (a Nomad Variable under nomad/jobs/<job>), and the
#    certificate where every job of a namespace reads it (nomad/jobs), once in each namespace
#    that runs meshed jobs (add -namespace NAME):
#      nomad var put nomad/jobs/weft-control root_cert=@root.pem root_key=@root.key
#      nomad var put nomad/jobs weft_trust_bundle=@root.pem
# 3. With ACLs on, let the job's workload identity read services in the meshed namespaces
#    (deploy-nomad/weft-control.policy.hcl says what it grants):
#      nomad acl policy apply -namespace default -job weft-control weft-control \
#        deploy-nomad/weft-control.policy.hcl
# 4. Run it, with up to three instances (each on its own node; each issues its own
#    intermediate CA from the root):
#      nomad job run -var count=3 deploy-nomad/weft-control.nomad.hcl
#
# Then add the proxy to jobs with `weft inject --platform nomad JOB.nomad.hcl`
# (deploy-nomad/examples/), with the same trust domain (--trust-domain).
#
# The mesh config file is rendered below, as the Helm chart's ConfigMap holds it on
# Kubernetes. Policy edits there reach a running control plane within a second (the template
# does not restart the task); [mesh], [ca] and [control] are read at start. If Nomad's API is
# served over TLS, change address to https:// and set ca_file (client_cert and client_key
# too for mutual TLS), rendering those files into secrets/ as the root is.

variable "count" {
  type        = number
  default     = 1
  description = "How many control-plane instances run, each on its own client node (1 to 3)."

  validation {
    condition     = var.count >= 1 && var.count <= 3
    error_message = "The control plane runs 1 to 3 instances."
  }
}

variable "trust_domain" {
  type        = string
  default     = "weft.local"
  description = "The mesh's trust domain: spiffe://<trust_domain>/ns/<namespace>/sa/<service>."
}

variable "image" {
  type        = string
  default     = "ghcr.io/weft-mesh/weft-control:0.1.0"
  description = "The control plane's image."
}

job "weft-control" {
  datacenters = ["*"]
  type        = "service"

  group "weft-control" {
    count = var.count

    # One instance per node, so that losing a node loses one instance.
    constraint {
      operator = "distinct_hosts"
      value    = "true"
    }

    update {
      max_parallel     = 1
      min_healthy_time = "10s"
      healthy_deadline = "3m"
      auto_revert      = true
    }

    network {
      mode = "bridge"
      port "grpc" {
        to = 7443
      }
      port "http" {
        to = 7080
      }
    }

    # What proxies dial (the address their template renders). Healthy once the instance
    # answers /ready: gRPC serves and every platform adapter has synced.
    service {
      name     = "weft-control-grpc"
      provider = "nomad"
      port     = "grpc"

      check {
        name     = "ready"
        type     = "http"
        port     = "http"
        path     = "/ready"
        interval = "5s"
        timeout  = "2s"
      }
    }

    # /live, /ready, /metrics and /api/state (the last two need the bearer token the control
    # plane writes to its data directory, since the listener is not on loopback).
    service {
      name     = "weft-control-http"
      provider = "nomad"
      port     = "http"

      check {
        name     = "ready"
        type     = "http"
        path     = "/ready"
        interval = "5s"
        timeout  = "2s"
      }

      check {
        name     = "live"
        type     = "http"
        path     = "/live"
        interval = "10s"
        timeout  = "2s"

        check_restart {
          limit = 3
          grace = "30s"
        }
      }
    }

    task "weft-control" {
      driver = "docker"
      # Not root; the templates below hand it its files.
      user = "65532"

      # The task's own workload identity in secrets/nomad_token: the token the Nomad adapter
      # presents to Nomad's API (token_file below), allowed by the ACL policy of step 3.
      identity {
        file = true
      }

      config {
        image = var.image
        args  = ["--config", "/local/mesh.toml", "--log-json"]
      }

      env {
        RUST_LOG = "info"
      }

      # The shared mesh config file.
      template {
        destination = "local/mesh.toml"
        change_mode = "noop"
        data        = <<-EOT
          [mesh]
          name = "weft"
          trust_domain = "${var.trust_domain}"

          [ca]
          data_dir = "/local/weft"
          root_cert = "/secrets/weft-root.pem"
          root_key = "/secrets/weft-root.key"
          leaf_ttl = "24h"

          [control]
          grpc_addr = "0.0.0.0:7443"
          http_addr = "0.0.0.0:7080"

          [policy]
          default_inbound = "allow"

          # Nomad's native services (provider = "nomad"); the API of the node the instance
          # runs on.
          [platforms.nomad]
          address = "http://{{ env "attr.unique.network.ip-address" }}:4646"
          token_file = "/secrets/nomad_token"
          token_audience = "weft"
          # namespaces = ["default"]
          # ca_file = "/secrets/nomad-ca.pem"
          # client_cert = "/secrets/nomad-client.pem"
          # client_key = "/secrets/nomad-client.key"

          # Services registered in Consul (provider = "consul"), for jobs that use it.
          # [platforms.consul]
          # address = "http://{{ env "attr.unique.network.ip-address" }}:8500"
          # token_file = "/secrets/consul_token"
          EOT
      }

      # The mesh's root, from the Nomad Variable only this job can read.
      template {
        destination          = "secrets/weft-root.pem"
        change_mode          = "restart"
        error_on_missing_key = true
        data                 = <<-EOT
          {{ with nomadVar "nomad/jobs/weft-control" }}{{ .root_cert }}{{ end }}
          EOT
      }

      template {
        destination          = "secrets/weft-root.key"
        change_mode          = "restart"
        error_on_missing_key = true
        perms                = "0400"
        uid                  = 65532
        gid                  = 65532
        data                 = <<-EOT
          {{ with nomadVar "nomad/jobs/weft-control" }}{{ .root_key }}{{ end }}
          EOT
      }

      resources {
        cpu    = 200
        memory = 256
      }

      # Time to drain the streams proxies hold open.
      kill_timeout = "15s"
    }
  }
}
