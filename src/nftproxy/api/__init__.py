"""The Kubernetes API side: list and watch, and the objects received."""
