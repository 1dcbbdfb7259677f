# The Nomad ACL policy of the prometheus job's workload identity (deploy-nomad/prometheus.nomad.hcl).
# Prometheus's Nomad service discovery lists services (/v1/services) and reads each
# (/v1/service/<name>); both need read-job in a namespace, and nothing more.
#
# Attach it to the job (the namespace is the job's own):
#   nomad acl policy apply -namespace default -job prometheus prometheus \
#     deploy-nomad/prometheus.policy.hcl
#
# To let it see fewer namespaces, name those here instead of "*" (the ones its
# nomad_sd_configs read).

namespace "*" {
  capabilities = ["read-job"]
}
