# A Kubernetes component image for the kind node (kube-apiserver, kube-controller-manager,
# kube-scheduler, etcd, coredns): the static binary in /usr/local/bin on the Debian base image
# (certificates, time zones, a shell for debugging). bin/setup tags it with the name
# `kubeadm config images list` gives.
ARG BASE
FROM ${BASE}
ARG NAME
COPY bin/ /usr/local/bin/
ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
ENTRYPOINT ["/usr/local/bin/entrypoint"]
