"""A network lab of namespaces on one machine: a node, hosts behind veths, probes;
the fake API server; the demo and its built-in example.

Used by the packet tests, the demo and the benchmarks; only ``cli`` and the tests
import it. Needs root.
"""
