# The Nomad ACL policy of the weft-control job's workload identity. The Nomad adapter lists
# services across namespaces (/v1/services), reads each (/v1/service/<name>) and follows the
# Service topic of the event stream; all three need read-job in a namespace, and nothing more.
# Proxies' identities are checked against the cluster's public keys, which need no token.
#
# Attach it to the job (the namespace is the job's own):
#   nomad acl policy apply -namespace default -job weft-control weft-control \
#     deploy-nomad/weft-control.policy.hcl
#
# With [platforms.nomad] namespaces set in the mesh config file, name those namespaces here
# instead of "*".

namespace "*" {
  capabilities = ["read-job"]
}
