"""A network lab of namespaces on one machine: a node, hosts behind veths, probes.

Used by the packet tests, the demo and the benchmarks. Needs root.
"""
