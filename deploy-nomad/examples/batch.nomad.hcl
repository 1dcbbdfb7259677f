# report: a batch job in the mesh that calls the api service of web-api.nomad.hcl once and
# completes.
#
# deploy-nomad/examples/batch.nomad.hcl is exactly what `weft inject` prints for
# tests/nomad/jobs/batch.nomad.hcl, the same job before meshing (a test keeps them equal):
#
#   weft inject --platform nomad --explicit --upstream api=127.0.0.1:9001 \
#     tests/nomad/jobs/batch.nomad.hcl > deploy-nomad/examples/batch.nomad.hcl
#   nomad job run deploy-nomad/examples/batch.nomad.hcl
#
# The group's service gives the proxy its identity (spiffe://<trust domain>/ns/<namespace>/sa/
# report); it has no port, as nothing calls the job, so explicit mode adds no inbound port. The
# proxy is a prestart sidecar: Nomad starts it before the report task and stops it once the
# report task has finished, so the allocation completes as any batch allocation does. Nomad
# does not wait for the proxy to hold a certificate before it starts the report task, so the
# task retries its first call for a while.

job "report" {
  datacenters = ["*"]
  type        = "batch"

  group "report" {
    network {
      mode = "bridge"
      port "weft_tap" { to = 7193 } # weft inject: the proxy's tap listener (mutual TLS, for the control plane)
      port "weft_admin" { to = 7191 } # weft inject: the proxy's admin listener (/metrics and probes, for Prometheus)
    }

    service {
      name     = "report"
      provider = "nomad"
      tags     = ["weft", "weft-admin=${NOMAD_HOST_PORT_weft_admin}"]
    }

    task "report" {
      driver = "docker"

      config {
        image = "curlimages/curl:8.11.1"
        args = [
          "--fail", "--silent", "--show-error",
          "--retry", "30", "--retry-connrefused", "--retry-all-errors", "--retry-delay", "1",
          "http://127.0.0.1:9001/",
        ]
      }

      resources {
        cpu    = 50
        memory = 32
      }
    }

    # weft inject: the Weft proxy, started before the group's tasks and stopped after them.
    task "weft-proxy" {
      driver = "docker"
      user   = "2102"

      lifecycle {
        hook    = "prestart"
        sidecar = true
      }

      # The proxy's credential for the control plane, written to secrets/nomad_weft.jwt.
      identity {
        name = "weft"
        aud  = ["weft"]
        file = true
        ttl  = "1h"
      }

      config {
        image      = "ghcr.io/weft-mesh/weft-proxy:0.1.0"
        entrypoint = ["weft-proxy"]
        args = [
          "--platform", "nomad",
          "--token-file", "${NOMAD_SECRETS_DIR}/nomad_weft.jwt",
          "--namespace", "${NOMAD_NAMESPACE}",
          "--workload", "${NOMAD_ALLOC_ID}",
          "--account", "report",
          "--trust-domain", "weft.local",
          "--trust-bundle", "${NOMAD_SECRETS_DIR}/weft-trust-bundle.pem",
          "--admin-addr", "0.0.0.0:7191",
          "--tap-addr", "0.0.0.0:7193",
          "--tap-advertise", "${NOMAD_HOST_ADDR_weft_tap}",
          "--upstream", "api=127.0.0.1:9001",
          "--log-json",
        ]
      }

      # The mesh's roots: the Nomad Variable nomad/jobs, key weft_trust_bundle.
      template {
        destination          = "secrets/weft-trust-bundle.pem"
        change_mode          = "noop"
        error_on_missing_key = true
        data                 = <<-EOT
          {{ with nomadVar "nomad/jobs" }}{{ .weft_trust_bundle }}{{ end }}
          EOT
      }

      # The control plane's gRPC address: one instance of the service weft-control-grpc.
      template {
        destination = "local/weft-control.env"
        env         = true
        data        = <<-EOT
          {{ range nomadService 1 (env "NOMAD_ALLOC_ID") "weft-control-grpc" }}WEFT_PROXY_CONTROL_ADDR={{ .Address }}:{{ .Port }}{{ end }}
          EOT
      }

      # The access log, where the job, group or task sets meta { weft_access_log = "json" }
      # ("common", "json" or "off"); without it the mesh file decides.
      template {
        destination = "local/weft-access-log.env"
        env         = true
        data        = <<-EOT
          {{ with env "NOMAD_META_weft_access_log" }}WEFT_PROXY_ACCESS_LOG={{ . }}{{ end }}
          EOT
      }

      resources {
        cpu    = 50
        memory = 128
      }
    }
  }
}
