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
    }

    service {
      name     = "api"
      provider = "nomad"
      port     = "http"
      tags     = ["v1"]
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
  }

  group "web" {
    network {
      mode = "bridge"
      port "http" {
        to = 8080
      }
    }

    service {
      name     = "web"
      provider = "nomad"
      port     = "http"

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
  }
}
