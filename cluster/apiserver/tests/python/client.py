"""The official Kubernetes Python client against Cairn's API server: list, create,
patch, watch and delete, with the errors it raises. Run by tests/python_client.rs
with the kubeconfig as its argument; exits non-zero with the failing step on error."""

import sys
import threading
import time

from kubernetes import client, config, watch
from kubernetes.client.rest import ApiException


def main(kubeconfig):
    config.load_kube_config(config_file=kubeconfig)
    core = client.CoreV1Api()
    apps = client.AppsV1Api()

    names = [ns.metadata.name for ns in core.list_namespace().items]
    assert "default" in names and "kube-system" in names, names

    # A watch from now on sees what the rest of the script does.
    listed = core.list_namespaced_config_map("default")
    seen = []

    def follow():
        w = watch.Watch()
        for event in w.stream(core.list_namespaced_config_map, "default",
                              resource_version=listed.metadata.resource_version,
                              timeout_seconds=30):
            seen.append((event["type"], event["object"].metadata.name))
            if event["type"] == "DELETED":
                w.stop()

    follower = threading.Thread(target=follow)
    follower.start()
    time.sleep(0.5)

    body = client.V1ConfigMap(metadata=client.V1ObjectMeta(name="py", labels={"from": "python"}),
                              data={"a": "1"})
    created = core.create_namespaced_config_map("default", body)
    assert created.metadata.uid and created.metadata.resource_version, created.metadata

    patched = core.patch_namespaced_config_map("py", "default", {"data": {"b": "2"}})
    assert patched.data == {"a": "1", "b": "2"}, patched.data

    selected = core.list_namespaced_config_map("default", label_selector="from=python")
    assert [m.metadata.name for m in selected.items] == ["py"], selected.items

    try:
        core.create_namespaced_config_map("default", body)
        raise AssertionError("a second create succeeded")
    except ApiException as err:
        assert err.status == 409 and "AlreadyExists" in err.body, err

    try:
        core.read_namespaced_config_map("nope", "default")
        raise AssertionError("read a missing object")
    except ApiException as err:
        assert err.status == 404, err

    deployment = {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "pyweb"},
        "spec": {"selector": {"matchLabels": {"app": "pyweb"}},
                 "template": {"metadata": {"labels": {"app": "pyweb"}},
                              "spec": {"containers": [{"name": "c", "image": "busybox"}]}}},
    }
    made = apps.create_namespaced_deployment("default", deployment)
    assert made.spec.replicas == 1, made.spec
    apps.patch_namespaced_deployment_scale("pyweb", "default", {"spec": {"replicas": 4}})
    assert apps.read_namespaced_deployment("pyweb", "default").spec.replicas == 4
    apps.delete_namespaced_deployment("pyweb", "default")

    core.delete_namespaced_config_map("py", "default")
    follower.join(timeout=30)
    assert ("ADDED", "py") in seen and ("MODIFIED", "py") in seen and ("DELETED", "py") in seen, seen
    print("python client: all steps passed")


if __name__ == "__main__":
    main(sys.argv[1])
