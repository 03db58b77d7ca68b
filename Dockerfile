# nftproxy: the image the Helm chart runs (helm/nftproxy).
#
# Two stages. The builder compiles the hot modules (mypyc, setup.py) and makes the
# venv /opt/nftproxy: the run-time dependencies from requirements.lock, by hash;
# no pip or setuptools; byte-compiled. The final stage is Debian 12 with Debian's
# python3 and python3-nftables (the libnftables binding), nftables, conntrack,
# iproute2, and iptables/ipset for `cleanup --kube-proxy`, without documentation
# or apt lists, and the builder's venv. Both stages run scripts/install.sh, the
# script CI runs too (scripts/image.sh builds and tests this file).
#
# It runs in the host's network namespace (hostNetwork) because it programs that
# namespace's nftables and conntrack: it needs CAP_NET_ADMIN only, with a
# read-only root (the chart's unprivileged mode). Writing the conntrack sysctls
# needs a writable /proc/sys: the chart does that in a privileged init container
# (`nftproxy run --init-only`). CAP_SYS_MODULE only if nft should load modules.
#
# BASE names the base by tag; set a digest at build time to pin it:
#   --build-arg BASE=docker.io/library/debian:12-slim@sha256:...
ARG BASE=docker.io/library/debian:12-slim

FROM ${BASE} AS build
COPY . /src/nftproxy
RUN bash /src/nftproxy/scripts/install.sh /opt/nftproxy --image

FROM ${BASE}
COPY scripts/install.sh /tmp/install.sh
RUN bash /tmp/install.sh --image-runtime && rm /tmp/install.sh
COPY --from=build /opt/nftproxy /opt/nftproxy
# kube-proxy's command too: kubeadm's own DaemonSet runs it with only the image changed.
COPY scripts/kube-proxy /usr/local/bin/kube-proxy
RUN ln -s /opt/nftproxy/bin/nftproxy /usr/local/bin/nftproxy \
    && mkdir -p /var/lib/nftproxy /var/lib/kube-proxy \
    && kube-proxy --version

ENTRYPOINT ["nftproxy", "run"]
