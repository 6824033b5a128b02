"""Run the pods of a rendered Kubernetes manifest under Docker, as a kubelet would.

No Kubernetes control plane can be had on the development machines, so the container
test renders the dev overlay with ``kubectl kustomize`` and runs each pod's containers
with ``docker run`` flags derived from the pod spec alone: image, command and args with
``$(VAR)`` references expanded, env (values, ConfigMap and Secret references,
``envFrom``), user and group, read-only root, dropped capabilities, no privilege
escalation, resource limits, and only the mounts the pod declares (emptyDir -> a fresh
host directory shared by the pod's containers, 0777 as a kubelet makes it;
PersistentVolumeClaim -> a host directory the test supplies; ConfigMap keys -> files).
What a manifest gets wrong (a missing writable directory, a wrong entrypoint, a
config path that does not exist) fails here as it would in a cluster.

Deviations, all forced by the machine: every container uses the host network (tests
may only reach loopback), so Services resolve to 127.0.0.1 through ``--add-host``;
images that cannot be pulled are mapped to local stand-ins by the caller.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

POD_KINDS = ("Deployment", "StatefulSet", "Job", "DaemonSet")
_REFERENCE = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_]*)\)")
_QUANTITY = re.compile(r"^([0-9.]+)(m|Ki|Mi|Gi|Ti)?$")


def render(kustomization_dir: Path) -> list[dict[str, Any]]:
    out = subprocess.run(["kubectl", "kustomize", str(kustomization_dir)],
                         capture_output=True, text=True, check=True).stdout  # fmt: skip
    return [doc for doc in yaml.safe_load_all(out) if doc]


def expand(text: str, env: Mapping[str, str]) -> str:
    """Kubernetes' ``$(VAR)`` expansion: known names replaced, ``$$`` -> ``$``, others kept."""

    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        return env.get(match.group(1), match.group(0))

    return _REFERENCE.sub(replace, text)


def _cpus(quantity: str) -> str:
    number, unit = _QUANTITY.match(str(quantity)).groups()  # type: ignore[union-attr]
    return str(float(number) / 1000 if unit == "m" else float(number))


def _bytes(quantity: str) -> str:
    number, unit = _QUANTITY.match(str(quantity)).groups()  # type: ignore[union-attr]
    scale = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, None: 1}[unit]
    return str(int(float(number) * scale))


@dataclass
class Cluster:
    """What a kubelet would get from the API server: ConfigMaps, Secrets, volumes."""

    objects: list[dict[str, Any]]
    secrets: dict[str, dict[str, str]]
    claims: dict[str, Path]  # PersistentVolumeClaim name -> host directory
    workdir: Path  # emptyDirs and ConfigMap files go here
    hosts: tuple[str, ...] = ()  # Service names that resolve to 127.0.0.1
    image_map: dict[str, str] = field(default_factory=dict)  # unpullable repo -> stand-in
    label: str = "cdul-test"  # every container gets it, so a test can remove them all

    def find(self, kind: str, name: str) -> dict[str, Any]:
        for obj in self.objects:
            if obj["kind"] == kind and obj["metadata"]["name"] == name:
                return obj
        raise KeyError(f"no {kind} {name} in the rendered manifests")

    def config_map(self, name: str) -> dict[str, str]:
        return dict(self.find("ConfigMap", name).get("data", {}))

    def pod(self, kind: str, name: str) -> Pod:
        assert kind in POD_KINDS, kind
        return Pod(self, name, self.find(kind, name)["spec"]["template"]["spec"])


@dataclass
class Pod:
    cluster: Cluster
    name: str
    spec: dict[str, Any]
    _dirs: dict[str, Path] = field(default_factory=dict)

    def container(self, name: str) -> dict[str, Any]:
        for container in [*self.spec.get("initContainers", []), *self.spec["containers"]]:
            if container["name"] == name:
                return container
        raise KeyError(f"pod {self.name} has no container {name}")

    def env(self, container: dict[str, Any], extra: Mapping[str, str] = ()) -> dict[str, str]:
        """The container's environment as the kubelet builds it (envFrom, then env)."""
        env: dict[str, str] = {}
        for source in container.get("envFrom", []):
            env.update(self.cluster.config_map(source["configMapRef"]["name"]))
        for item in container.get("env", []):
            if "value" in item:
                env[item["name"]] = expand(str(item["value"]), env)
                continue
            ref = item["valueFrom"]
            if "configMapKeyRef" in ref:
                key = ref["configMapKeyRef"]
                env[item["name"]] = self.cluster.config_map(key["name"])[key["key"]]
            else:
                key = ref["secretKeyRef"]
                values = self.cluster.secrets.get(key["name"], {})
                if key["key"] not in values and key.get("optional"):
                    continue  # as the kubelet does: an optional key that is not there
                env[item["name"]] = values[key["key"]]
        env.update(extra)
        return env

    def argv(
        self, container: dict[str, Any], env: Mapping[str, str]
    ) -> tuple[list[str], list[str]]:
        """(command, args) after ``$(VAR)`` expansion; an empty command keeps the image's."""
        command = [expand(str(c), env) for c in container.get("command", [])]
        args = [expand(str(a), env) for a in container.get("args", [])]
        return command, args

    def _volume_dir(self, volume: dict[str, Any]) -> Path:
        name = volume["name"]
        if name not in self._dirs:
            path = self.cluster.workdir / self.name / name
            path.mkdir(parents=True, exist_ok=True)
            os.chmod(path, 0o777)  # what the kubelet gives an emptyDir
            self._dirs[name] = path
        return self._dirs[name]

    def _mount(self, mount: dict[str, Any]) -> list[str]:
        volume = next(v for v in self.spec.get("volumes", []) if v["name"] == mount["name"])
        target = mount["mountPath"]
        read_only = bool(mount.get("readOnly"))
        # medium: Memory too: Docker 20.10's --tmpfs ignored mode=1777 here (root-owned
        # 0755, unwritable for the nginx sidecar's uid 101); a 0777 directory behaves alike.
        if "emptyDir" in volume:
            source = self._volume_dir(volume)
        elif "persistentVolumeClaim" in volume:
            claim = volume["persistentVolumeClaim"]
            source = self.cluster.claims[claim["claimName"]]
            read_only = read_only or bool(claim.get("readOnly"))
        elif "configMap" in volume:
            source = self._volume_dir(volume)
            for key, value in self.cluster.config_map(volume["configMap"]["name"]).items():
                (source / key).write_text(value)
                os.chmod(source / key, 0o644)
            read_only = True
        else:
            raise NotImplementedError(f"volume kind of {volume}")
        if "subPath" in mount:
            source = source / mount["subPath"]
        return ["--mount", f"type=bind,source={source},target={target}"
                + (",readonly" if read_only else "")]  # fmt: skip

    def docker_run(
        self,
        container_name: str,
        *,
        docker_name: str,
        extra_env: Mapping[str, str] = (),
        docker_flags: tuple[str, ...] = (),
    ) -> list[str]:
        """The ``docker run`` command line for one of this pod's containers (detached)."""
        container = self.container(container_name)
        pod_security = self.spec.get("securityContext", {})
        security = {**pod_security, **container.get("securityContext", {})}
        user, group = security.get("runAsUser"), security.get("runAsGroup")
        if pod_security.get("runAsNonRoot") or security.get("runAsNonRoot"):
            assert user not in (None, 0), f"{container_name}: runAsNonRoot without a user"
        flags = ["--name", docker_name, "--label", self.cluster.label, "--network", "host"]
        # The kubelet's /etc/hosts names the pod itself (torchrun's rendezvous needs it);
        # on the host network the pod's hostname is the machine's.
        names = (*self.cluster.hosts, socket.gethostname())
        flags += [f"--add-host={host}:127.0.0.1" for host in names]
        if user is not None:
            flags += ["--user", f"{user}:{group if group is not None else user}"]
        if "fsGroup" in pod_security:
            flags += ["--group-add", str(pod_security["fsGroup"])]
        if security.get("readOnlyRootFilesystem"):
            flags.append("--read-only")
        for capability in security.get("capabilities", {}).get("drop", []):
            flags += ["--cap-drop", capability]
        if security.get("allowPrivilegeEscalation") is False:
            flags += ["--security-opt", "no-new-privileges"]
        limits = container.get("resources", {}).get("limits", {})
        if "cpu" in limits:
            flags += ["--cpus", _cpus(limits["cpu"])]
        if "memory" in limits:
            flags += ["--memory", _bytes(limits["memory"])]
        for mount in container.get("volumeMounts", []):
            flags += self._mount(mount)
        env = self.env(container, extra_env)
        for key, value in env.items():
            flags += ["--env", f"{key}={value}"]
        command, args = self.argv(container, env)
        if command:
            flags += ["--entrypoint", command[0]]
            args = [*command[1:], *args]
        repository = container["image"].rsplit(":", 1)[0]
        image = self.cluster.image_map.get(repository, container["image"])
        return ["docker", "run", "--detach", *flags, *docker_flags, image, *args]
