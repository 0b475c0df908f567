#!/usr/bin/env python3
"""Static checks of den's deployment artifacts (no Docker, cluster or AWS needed).

- every kustomize overlay is rendered (its resources, recursively) and each
  object validated against the Kubernetes schema (kubernetes-validate --strict);
- every Deployment has /health and /ready probes, resource requests, a non-root
  user, and a `den` role that exists;
- every den.toml held in a ConfigMap passes `den config check`;
- the Dockerfile builds in stages, runs as a non-root user and has a health check.

Usage: check-deploy.py DEN_BINARY KUBERNETES_VALIDATE
"""

import pathlib
import subprocess
import sys
import tempfile

import yaml

ROOT = pathlib.Path(__file__).resolve().parent.parent
K8S = ROOT / "deploy" / "k8s"
ROLES = {"run", "gateway", "worker", "interactions"}


def fail(message):
    print(f"check-deploy: {message}", file=sys.stderr)
    sys.exit(1)


def render(directory):
    """The objects of a kustomization: its resources, recursively."""
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
    objects = []
    for resource in kustomization.get("resources", []):
        path = (directory / resource).resolve()
        if path.is_dir():
            objects.extend(render(path))
        elif path.is_file():
            objects.extend((path, doc) for doc in yaml.safe_load_all(path.read_text()) if doc)
        else:
            fail(f"{directory}: resource {resource} does not exist")
    return objects


def check_deployment(path, deployment):
    spec = deployment["spec"]["template"]["spec"]
    if not spec.get("securityContext", {}).get("runAsNonRoot"):
        fail(f"{path}: pods must run as non-root")
    for container in spec["containers"]:
        name = f"{path}: {deployment['metadata']['name']}/{container['name']}"
        if container.get("livenessProbe", {}).get("httpGet", {}).get("path") != "/health":
            fail(f"{name}: liveness probe must GET /health")
        if container.get("readinessProbe", {}).get("httpGet", {}).get("path") != "/ready":
            fail(f"{name}: readiness probe must GET /ready")
        requests = container.get("resources", {}).get("requests", {})
        if "cpu" not in requests or "memory" not in requests:
            fail(f"{name}: needs cpu and memory requests")
        args = container.get("args", [])
        if not args or args[0] not in ROLES:
            fail(f"{name}: args must start with a den role ({', '.join(sorted(ROLES))})")


class CfnLoader(yaml.SafeLoader):
    """Reads CloudFormation YAML: every intrinsic (!Ref, !Sub...) becomes a stand-in."""


def _intrinsic(loader, suffix, node):
    return {"Ref": "AWS::Region"} if suffix == "Ref" and getattr(node, "value", "") == "AWS::Region" else "stand-in"


CfnLoader.add_multi_constructor("!", _intrinsic)


def check_ecs_environment(den):
    """Each ECS task's environment makes a configuration den accepts."""
    template = yaml.load((ROOT / "deploy" / "aws" / "den.yaml").read_text(), Loader=CfnLoader)
    tasks = {k: v for k, v in template["Resources"].items() if v["Type"] == "AWS::ECS::TaskDefinition"}
    if len(tasks) < 2:
        fail("the template needs gateway and worker task definitions")
    for name, task in tasks.items():
        for container in task["Properties"]["ContainerDefinitions"]:
            env = {"PATH": "/usr/bin:/bin"}
            for pair in container.get("Environment", []):
                value = pair["Value"]
                env[pair["Name"]] = "us-east-1" if isinstance(value, dict) else str(value)
            role = container["Command"][0]
            if role not in ROLES:
                fail(f"{name}: the command must be a den role, not {role}")
            with tempfile.TemporaryDirectory() as tmp:
                result = subprocess.run([den, "config", "check"], capture_output=True, text=True, env=env, cwd=tmp)
            if result.returncode != 0:
                fail(f"{name}: den rejects the task's environment: {result.stderr.strip()}")
            print(f"ECS task {name} ({role}): den accepts its environment")


def main():
    den, validate = str(pathlib.Path(sys.argv[1]).resolve()), sys.argv[2]
    overlays = sorted(p for p in (K8S / "overlays").iterdir() if p.is_dir())
    if len(overlays) < 2:
        fail("expected the one-process and split overlays")
    for overlay in overlays:
        objects = render(overlay)
        kinds = sorted({doc["kind"] for _, doc in objects})
        with tempfile.TemporaryDirectory() as tmp:
            rendered = pathlib.Path(tmp) / f"{overlay.name}.yaml"
            rendered.write_text(yaml.safe_dump_all([doc for _, doc in objects]))
            result = subprocess.run([validate, "--strict", "--quiet", str(rendered)], capture_output=True, text=True)
            if result.returncode != 0:
                fail(f"overlay {overlay.name} is not valid Kubernetes:\n{result.stdout}{result.stderr}")
            for path, doc in objects:
                if doc["kind"] == "Deployment":
                    check_deployment(path, doc)
                if doc["kind"] == "ConfigMap" and "den.toml" in doc.get("data", {}):
                    config = pathlib.Path(tmp) / "den.toml"
                    config.write_text(doc["data"]["den.toml"])
                    # Secrets are files at run time: point the check at stand-ins.
                    secrets = pathlib.Path(tmp) / "secrets"
                    secrets.mkdir(exist_ok=True)
                    text = doc["data"]["den.toml"].replace("/run/secrets/den", str(secrets))
                    config.write_text(text)
                    for name in ("DISCORD_TOKEN", "ANTHROPIC_API_KEY"):
                        (secrets / name).write_text("stand-in")
                    result = subprocess.run(
                        [den, "--config", str(config), "config", "check"], capture_output=True, text=True
                    )
                    if result.returncode != 0:
                        fail(f"{path}: den rejects its den.toml: {result.stderr.strip()}")
        print(f"overlay {overlay.name}: {len(objects)} objects ({', '.join(kinds)}) valid")

    check_ecs_environment(den)

    dockerfile = (ROOT / "Dockerfile").read_text()
    stages = [line for line in dockerfile.splitlines() if line.startswith("FROM ")]
    if len(stages) < 2:
        fail("the Dockerfile must build in one stage and run in another")
    user = [line for line in dockerfile.splitlines() if line.startswith("USER ")]
    if not user or user[-1].split()[1].split(":")[0] in ("root", "0"):
        fail("the runtime image must run as a non-root user")
    if "HEALTHCHECK" not in dockerfile or "den\", \"health\"" not in dockerfile:
        fail("the runtime image needs a HEALTHCHECK running `den health`")
    print(f"Dockerfile: {len(stages)} stages, {user[-1]}, health check")


if __name__ == "__main__":
    main()
