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
    }

    service {
      name     = "report"
      provider = "nomad"
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
  }
}
