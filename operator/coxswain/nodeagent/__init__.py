"""A node agent for the local cluster: it plays the kubelet's part with local processes.

It registers a real Node (no kwok annotation), watches the pods bound to it and runs every
container as a process in the pod's own network namespace (a veth pair to a bridge on the
host, an address from the agent's pod CIDR) and its own mount, UTS and PID namespaces
(volumes bind-mounted at their mountPaths, /etc/hosts naming every pod and Service it
knows). Status is reported like a kubelet's. See docs/node-agent.md.
"""
