"""An API client for what starts in kopf's startup handler, before kopf has logged in."""

from __future__ import annotations


def api_client():
    """In a pod, its ServiceAccount; elsewhere, the kubeconfig (KUBECONFIG), as kopf does."""
    import kubernetes

    cfg = kubernetes.client.Configuration()
    try:
        kubernetes.config.load_incluster_config(client_configuration=cfg)
    except kubernetes.config.ConfigException:
        kubernetes.config.load_kube_config(client_configuration=cfg)
    return kubernetes.client.ApiClient(cfg)
