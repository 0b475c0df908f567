#!/usr/bin/env python3
"""Static checks of den's deployment artifacts (no Docker, cluster or AWS needed).

- every kustomize overlay is rendered (its resources, recursively) and each
  object validated against the Kubernetes schema (kubernetes-validate --strict);
- every Deployment has /health and /ready probes, resource requests, a non-root
  user, and a `den` role that exists;
- every den.toml held in a ConfigMap passes `den config check`;
- the environment of every ECS task and Lambda function in the CloudFormation
  templates passes `den config check`, and each function's handler is a role;
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
LAMBDA_ROLES = {"interactions", "worker"}
# Values for references that have no default: a region, an Ed25519 public key (RFC 8032's first test vector).
PARAMETER_STAND_INS = {
    "AWS::Region": "us-east-1",
    "PublicKey": "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a",
}


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
    if suffix == "FindInMap" and isinstance(node, yaml.SequenceNode):
        return {"Fn::FindInMap": loader.construct_sequence(node)}
    if suffix == "Ref" and isinstance(node, yaml.ScalarNode):
        return {"Ref": node.value}
    return "stand-in"


CfnLoader.add_multi_constructor("!", _intrinsic)


def _value(template, value):
    """An environment value as den would see it: mappings resolved, other intrinsics stood in for."""
    if isinstance(value, dict) and "Fn::FindInMap" in value:
        mapping, key, name = value["Fn::FindInMap"]
        return str(template["Mappings"][mapping][key][name])
    if isinstance(value, dict) and "Ref" in value:
        name = value["Ref"]
        if name in PARAMETER_STAND_INS:
            return PARAMETER_STAND_INS[name]
        return str(template.get("Parameters", {}).get(name, {}).get("Default", "stand-in"))
    return "stand-in" if isinstance(value, dict) else str(value)


def _config_check(den, name, env):
    with tempfile.TemporaryDirectory() as tmp:
        result = subprocess.run([den, "config", "check"], capture_output=True, text=True, env=env, cwd=tmp)
    if result.returncode != 0:
        fail(f"{name}: den rejects its environment: {result.stderr.strip()}")


def check_aws_environments(den):
    """Each ECS task's and Lambda function's environment makes a configuration den accepts."""
    for file in ("den.yaml", "den-lambda.yaml"):
        template = yaml.load((ROOT / "deploy" / "aws" / file).read_text(), Loader=CfnLoader)
        resources = template["Resources"].items()
        tasks = {k: v for k, v in resources if v["Type"] == "AWS::ECS::TaskDefinition"}
        functions = {k: v for k, v in resources if v["Type"] == "AWS::Lambda::Function"}
        if not tasks:
            fail(f"{file}: the template needs a gateway task definition")
        for name, task in tasks.items():
            for container in task["Properties"]["ContainerDefinitions"]:
                env = {"PATH": "/usr/bin:/bin"}
                env.update({p["Name"]: _value(template, p["Value"]) for p in container.get("Environment", [])})
                role = container["Command"][0]
                if role not in ROLES:
                    fail(f"{file} {name}: the command must be a den role, not {role}")
                _config_check(den, f"{file} {name}", env)
                print(f"{file}: ECS task {name} ({role}): den accepts its environment")
        for name, function in functions.items():
            props = function["Properties"]
            if props.get("Runtime") != "provided.al2023" or props.get("Handler") not in LAMBDA_ROLES:
                fail(f"{file} {name}: a provided.al2023 function whose handler is a den Lambda role")
            env = {"PATH": "/usr/bin:/bin"}
            env.update({k: _value(template, v) for k, v in props["Environment"]["Variables"].items()})
            _config_check(den, f"{file} {name}", env)
            print(f"{file}: Lambda function {name} ({props['Handler']}): den accepts its environment")
        if file == "den-lambda.yaml" and set(p["Properties"]["Handler"] for p in functions.values()) != LAMBDA_ROLES:
            fail(f"{file}: needs an interactions function and a worker function")


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

    check_aws_environments(den)

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
