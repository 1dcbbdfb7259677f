# shop: one group serving two services (the current name and the one old clients still use)
# from one port, with a health check on a port of its own. An input of tests/nomad/check_jobs.py
# for both modes: one proxy fronts both services, so both get the tag weft-account=shop (one
# identity); in transparent mode the health port is left out of interception, so the check
# keeps reaching the application directly.

job "shop" {
  datacenters = ["*"]

  group "shop" {
    count = 2

    network {
      mode = "bridge"
      port "http" {
        to = 8080
      }
      port "health" {
        to = 8081
      }
    }

    service {
      name     = "shop"
      provider = "nomad"
      port     = "http"
      tags     = [
        "v2",
        "blue",
      ]

      check {
        type     = "http"
        port     = "health"
        path     = "/healthz"
        interval = "10s"
        timeout  = "2s"
      }
    }

    service {
      name     = "store" # the old name
      provider = "nomad"
      port     = "http"
    }

    task "shop" {
      driver = "docker"

      config {
        image = "registry.example/shop:2.4.1"
      }

      resources {
        cpu    = 100
        memory = 128
      }
    }
  }
}
