"""Judge a built stack: kubeconform, stackgen's policies, a server dry-run.

* :mod:`.kubeconform`: ``kubeconform -strict`` against offline schemas;
* :mod:`.kubeschemas` and :mod:`.crdschemas`: those offline schemas, converted from
  kubernetes-validate's and from CRDs (``bin/setup`` runs them as ``python -m``);
* :mod:`.policies`: what schemas cannot say (one HPA per target, Pod Security, …);
* :mod:`.namespaces`: objects a kustomization's ``namespace:`` moved out of kube-system;
* :mod:`.dry_run`: ``kubectl apply --dry-run=server`` against the current context.
"""
