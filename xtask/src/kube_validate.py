"""Offline validation of the Kubernetes manifests in a kustomize directory.

Run by xtask (xtask/src/kube.rs) in a venv holding the pinned kubernetes-validate and
jsonschema. Usage: kube_validate.py DIR KUBERNETES_VERSION CRD_FILE...

- Built-in kinds: kubernetes-validate's schemas of KUBERNETES_VERSION, strict (an unknown
  field fails, as the API server's strict field validation does).
- Kinds of the CRDs given: the CRD's openAPIV3Schema for that version, with every object
  that lists its properties closed to others unless it preserves unknown fields (the API
  server rejects unknown fields of a structural schema under strict validation).
- kustomization.yaml: each resource it lists exists, and every manifest in DIR is listed.
- Any document of a kind with no schema fails: nothing passes unchecked.

Prints one line per resource checked; exits 1 with every problem named when any fails.
"""

import copy
import os
import sys

import jsonschema
import kubernetes_validate
import yaml


def close_objects(schema):
    """The schema with additionalProperties: false wherever properties are listed."""
    if isinstance(schema, dict):
        out = {k: close_objects(v) for k, v in schema.items()}
        if (
            "properties" in out
            and "additionalProperties" not in out
            and not out.get("x-kubernetes-preserve-unknown-fields")
        ):
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [close_objects(v) for v in schema]
    return schema


def crd_schemas(paths):
    """{(apiVersion, kind): closed schema} for every served version of each CRD."""
    schemas = {}
    for path in paths:
        with open(path) as f:
            for crd in yaml.safe_load_all(f):
                if not crd or crd.get("kind") != "CustomResourceDefinition":
                    continue
                group = crd["spec"]["group"]
                kind = crd["spec"]["names"]["kind"]
                for v in crd["spec"]["versions"]:
                    schema = copy.deepcopy(v["schema"]["openAPIV3Schema"])
                    # apiVersion, kind and metadata are checked by the API server itself,
                    # not by the CRD's schema; the schema only names them.
                    schemas[(f"{group}/{v['name']}", kind)] = close_objects(schema)
    return schemas


def main():
    directory, version, crds = sys.argv[1], sys.argv[2], sys.argv[3:]
    custom = crd_schemas(crds)
    problems = []

    with open(os.path.join(directory, "kustomization.yaml")) as f:
        kustomization = yaml.safe_load(f)
    listed = kustomization.get("resources", [])
    manifests = sorted(
        n
        for n in os.listdir(directory)
        if n.endswith((".yaml", ".yml")) and n != "kustomization.yaml"
    )
    for name in listed:
        if name not in manifests:
            problems.append(f"kustomization.yaml: resource {name} is not a file here")
    for name in manifests:
        if name not in listed:
            problems.append(f"kustomization.yaml: {name} is not among its resources")

    for name in manifests:
        path = os.path.join(directory, name)
        try:
            with open(path) as f:
                docs = [d for d in yaml.safe_load_all(f) if d is not None]
        except yaml.YAMLError as e:
            problems.append(f"{name}: not YAML: {e}")
            continue
        if not docs:
            problems.append(f"{name}: no resource in it")
        for doc in docs:
            if not isinstance(doc, dict) or "apiVersion" not in doc or "kind" not in doc:
                problems.append(f"{name}: a document without apiVersion and kind")
                continue
            key = (doc["apiVersion"], doc["kind"])
            what = f"{name}: {doc['kind']} {doc.get('metadata', {}).get('name', '?')}"
            if key in custom:
                errors = sorted(
                    jsonschema.Draft7Validator(custom[key]).iter_errors(doc),
                    key=lambda e: list(e.absolute_path),
                )
                for e in errors:
                    where = ".".join(str(p) for p in e.absolute_path) or "(top)"
                    problems.append(f"{what}: {where}: {e.message}")
                if not errors:
                    print(f"ok {what} against its CRD schema")
                continue
            try:
                kubernetes_validate.validate(doc, version, strict=True)
                print(f"ok {what} against Kubernetes {version} (strict)")
            except kubernetes_validate.ValidationError as e:
                where = ".".join(str(p) for p in e.absolute_path) or "(top)"
                problems.append(f"{what}: {where}: {e.message}")
            except kubernetes_validate.SchemaNotFoundError:
                problems.append(f"{what}: no schema for {key[0]} {key[1]} in Kubernetes {version}")

    for p in problems:
        print(f"FAIL {p}")
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()
