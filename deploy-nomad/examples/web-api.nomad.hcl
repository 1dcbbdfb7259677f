# web-api: a front end, web (nginx), calling api (a small echo server), both in the mesh.
#
# deploy-nomad/examples/web-api.nomad.hcl is exactly what `weft inject` prints for
# tests/nomad/jobs/web-api.nomad.hcl, the same job before meshing (a test keeps them equal):
#
#   weft inject --platform nomad --service api tests/nomad/jobs/web-api.nomad.hcl \
#     | weft inject --platform nomad --service web --explicit --upstream api=127.0.0.1:9001 - \
#     > deploy-nomad/examples/web-api.nomad.hcl
#   nomad job run deploy-nomad/examples/web-api.nomad.hcl
#
# Needs the control plane (deploy-nomad/weft-control.nomad.hcl) and the Nomad Variable
# nomad/jobs with the mesh's roots in this job's namespace (see that file).
#
# The two groups use the mesh's two modes, on purpose:
# - api is transparent: its weft-init task redirects every TCP connection that reaches the
#   group to the proxy, so only mesh peers (mutual TLS, under the mesh's policy) reach the
#   application, at the address and port api registers. Clients need nothing new. weft-init
#   needs NET_ADMIN and NET_RAW: the Nomad client's Docker plugin must allow them
#   (plugin "docker" { config { allow_caps = [<the defaults>, "net_admin", "net_raw"] } }).
# - web is explicit: it is the edge that browsers and load balancers outside the mesh reach on
#   its own port, which stays as it is. nginx calls api at 127.0.0.1:9001, where web's proxy
#   listens (--upstream api=127.0.0.1:9001) and carries the call to api over mutual TLS. Mesh
#   peers reach web at the group's `weft` port, named by the tag weft-inbound.

job "web-api" {
  datacenters = ["*"]
  type        = "service"

  group "api" {
    count = 2

    network {
      mode = "bridge"
      port "http" {
        to = 8080
      }
      port "weft_tap" { to = 7193 } # weft inject: the proxy's tap listener (mutual TLS, for the control plane)
      port "weft_admin" { to = 7191 } # weft inject: the proxy's admin listener (/metrics and probes, for Prometheus)
    }

    service {
      name     = "api"
      provider = "nomad"
      port     = "http"
      tags     = ["v1", "weft", "weft-admin=${NOMAD_HOST_PORT_weft_admin}"]
    }

    task "api" {
      driver = "docker"

      config {
        image = "hashicorp/http-echo:1.0"
        args  = ["-listen=:8080", "-text=hello from api"]
      }

      resources {
        cpu    = 50
        memory = 32
      }
    }

    # weft inject: writes the nat rules that send the group's TCP through the proxy, then
    # exits. It needs NET_ADMIN and NET_RAW: the Docker plugin's allow_caps in the client's
    # configuration must include net_admin and net_raw.
    task "weft-init" {
      driver = "docker"
      user   = "0"

      lifecycle {
        hook    = "prestart"
        sidecar = false
      }

      config {
        image      = "ghcr.io/weft-mesh/weft-proxy:0.1.0"
        entrypoint = ["weft-proxy"]
        args       = ["init", "--proxy-uid", "2102", "--inbound-port", "7143", "--outbound-port", "7140", "--skip-inbound-ports", "7193,7191"]
        cap_add    = ["NET_ADMIN", "NET_RAW"]
      }

      resources {
        cpu    = 20
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
          "--account", "api",
          "--trust-domain", "weft.local",
          "--trust-bundle", "${NOMAD_SECRETS_DIR}/weft-trust-bundle.pem",
          "--admin-addr", "0.0.0.0:7191",
          "--tap-addr", "0.0.0.0:7193",
          "--tap-advertise", "${NOMAD_HOST_ADDR_weft_tap}",
          "--transparent",
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

  group "web" {
    network {
      mode = "bridge"
      port "http" {
        to = 8080
      }
      port "weft" { to = 7143 } # weft inject: the proxy's inbound listener
      port "weft_tap" { to = 7193 } # weft inject: the proxy's tap listener (mutual TLS, for the control plane)
      port "weft_admin" { to = 7191 } # weft inject: the proxy's admin listener (/metrics and probes, for Prometheus)
    }

    service {
      name     = "web"
      provider = "nomad"
      port     = "http"
      tags     = ["weft", "weft-admin=${NOMAD_HOST_PORT_weft_admin}", "weft-inbound=${NOMAD_HOST_PORT_weft}"]

      check {
        type     = "http"
        path     = "/healthz"
        interval = "10s"
        timeout  = "2s"
      }
    }

    task "web" {
      driver = "docker"

      config {
        image   = "nginx:1.27-alpine"
        volumes = ["local/default.conf:/etc/nginx/conf.d/default.conf"]
      }

      # api through web's proxy: plain HTTP on loopback here, mutual TLS between the proxies.
      template {
        destination = "local/default.conf"
        data        = <<-EOT
          server {
            listen 8080;
            location = /healthz { return 200 "ok"; }
            location / { proxy_pass http://127.0.0.1:9001; }
          }
          EOT
      }

      resources {
        cpu    = 100
        memory = 64
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
          "--account", "web",
          "--trust-domain", "weft.local",
          "--trust-bundle", "${NOMAD_SECRETS_DIR}/weft-trust-bundle.pem",
          "--admin-addr", "0.0.0.0:7191",
          "--tap-addr", "0.0.0.0:7193",
          "--tap-advertise", "${NOMAD_HOST_ADDR_weft_tap}",
          "--app-port", "${NOMAD_PORT_http}",
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
