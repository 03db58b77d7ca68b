# nftproxy: the image the Helm chart runs (helm/nftproxy).
#
# Debian 12 with Debian's python3 and python3-nftables (the libnftables binding),
# nftables, conntrack, iproute2, and iptables/ipset for `cleanup --kube-proxy`.
# The install steps are scripts/install.sh, the script CI runs too; it adds gcc
# and Python's headers to compile the hot modules (setup.py), removed again here.
#
# It runs as root in the host's network namespace (hostNetwork) because it
# programs that namespace's nftables and conntrack: it needs CAP_NET_ADMIN, and
# a writable /proc/sys (privileged, as kube-proxy) for the conntrack sysctls;
# CAP_SYS_MODULE only if nft should load kernel modules.
FROM debian:12-slim

COPY . /src/nftproxy
RUN bash /src/nftproxy/scripts/install.sh /opt/nftproxy \
    && apt-get purge -y -qq --auto-remove gcc libc6-dev python3-dev \
    && ln -s /opt/nftproxy/bin/nftproxy /usr/local/bin/nftproxy \
    && rm -rf /src/nftproxy /root/.cache /var/lib/apt/lists/*

ENTRYPOINT ["nftproxy", "run"]
