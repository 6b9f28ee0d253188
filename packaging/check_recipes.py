"""Offline checks of the AMI recipes in packaging/ami/ (they cannot run here: they need AWS).

    python3 packaging/check_recipes.py [PACKAGE_FILE_LIST]

- lmi-agent.pkr.hcl parses as HCL2 (python-hcl2) and has what the recipe promises: an amazon-ebs source from
  the newest AL2023 image owned by amazon for the chosen architecture, the arch variable limited to x86_64 and
  aarch64 with the right instance types, a provisioner that installs the rpm and enables the unit, and an rpm
  path that is the one packaging/build.sh writes for the default version.
- imagebuilder-component.yaml parses as YAML and follows the component document schema: name, schemaVersion
  1.0, the build, validate and test phases, steps with unique names, known actions and their inputs.
- Every absolute /usr or /etc path either recipe references is a file of the package (PACKAGE_FILE_LIST,
  default target/lmi-package/files.txt from packaging/check.sh) or a directory holding one.
"""
import os
import re
import sys
import tomllib

import hcl2
import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
AMI = os.path.join(ROOT, "packaging", "ami")
ERRORS = []


def check(cond, message):
    if not cond:
        ERRORS.append(message)


def plain(v):
    """python-hcl2 output without its markers, string literals unquoted."""
    if isinstance(v, dict):
        return {plain(k): plain(x) for k, x in v.items() if k not in ("__is_block__", "__comments__")}
    if isinstance(v, list):
        return [plain(x) for x in v]
    if isinstance(v, str) and len(v) >= 2 and v[0] == '"' and v[-1] == '"':
        return v[1:-1]
    return v


def blocks(doc, kind):
    out = {}
    for b in doc.get(kind, []):
        out.update(b)
    return out


def cargo_version():
    with open(os.path.join(ROOT, "Cargo.toml"), "rb") as f:
        return tomllib.load(f)["workspace"]["package"]["version"]


def check_packer(path):
    with open(path) as f:
        doc = plain(hcl2.load(f))
    text = open(path).read()
    variables = blocks(doc, "variable")
    check(variables.get("arch", {}).get("default") == "x86_64", "packer: variable arch must default to x86_64")
    cond = variables.get("arch", {}).get("validation", [{}])[0].get("condition", "")
    check("x86_64" in cond and "aarch64" in cond, "packer: arch must be validated as x86_64 or aarch64")
    check(variables.get("version", {}).get("default") == cargo_version(),
          "packer: variable version must default to the workspace version %s" % cargo_version())
    check("instance_type" in variables, "packer: instance_type variable missing")
    for family in ("c7g", "m7i", "r7i"):
        check(family in text, "packer: instance family %s is not mentioned" % family)
    locs = blocks(doc, "locals")
    check("c7g" in locs.get("instance_type", "") and "m7i" in locs.get("instance_type", ""),
          "packer: default instance type must be c7g for aarch64 and m7i for x86_64")
    check("arm64" in locs.get("ami_arch", ""), "packer: aarch64 must map to EC2's arm64")
    src = blocks(doc, "source").get("amazon-ebs", {}).get("al2023")
    check(src is not None, "packer: source amazon-ebs.al2023 missing")
    if src:
        f = src.get("source_ami_filter", [{}])[0]
        check(f.get("owners") == ["amazon"], "packer: source_ami_filter must take images owned by amazon")
        check(f.get("most_recent") is True, "packer: source_ami_filter must take the most recent image")
        check(f.get("filters", {}).get("name", "").startswith("al2023-ami-"), "packer: base image must be AL2023")
        check(src.get("ssh_username") == "ec2-user", "packer: AL2023's user is ec2-user")
    build = doc.get("build", [{}])[0]
    check(build.get("sources") == ["source.amazon-ebs.al2023"], "packer: build must use source.amazon-ebs.al2023")
    provs = build.get("provisioner", [])
    files = [p["file"] for p in provs if "file" in p]
    shells = [p["shell"] for p in provs if "shell" in p]
    check(any(f.get("source") == "${local.rpm}" for f in files), "packer: the rpm must be uploaded")
    inline = " ".join(" ".join(s.get("inline", [])) for s in shells)
    check("dnf install -y /tmp/lmi-agent.rpm" in inline, "packer: the rpm must be installed with dnf")
    check("systemctl enable lmi-agent.service" in inline, "packer: the unit must be enabled")
    # The rpm path, with the variables' defaults, is what packaging/build.sh writes.
    rpm = locs.get("rpm", "")
    for name in ("rpm_dir", "version", "arch"):
        rpm = rpm.replace("${var.%s}" % name, variables.get(name, {}).get("default", "?"))
    check(rpm == "target/lmi-package/lmi-agent-%s-1.x86_64.rpm" % cargo_version(),
          "packer: rpm path %s is not what packaging/build.sh writes" % rpm)
    built = os.path.join(ROOT, rpm)
    if os.path.isdir(os.path.join(ROOT, "target", "lmi-package")) and any(
            n.endswith(".rpm") for n in os.listdir(os.path.join(ROOT, "target", "lmi-package"))):
        check(os.path.isfile(built), "packer: %s does not exist after packaging/build.sh" % rpm)
    return text


KNOWN_ACTIONS = {
    "ExecuteBash": "commands", "ExecuteBinary": "path", "ExecutePowerShell": "commands",
    "S3Download": None, "S3Upload": None, "WebDownload": None, "Reboot": None,
    "CreateFile": None, "DeleteFile": None, "CopyFile": None, "MoveFile": None, "CreateFolder": None,
    "UpdateOS": None, "InstallMSI": None, "SetFilePermissions": None, "Assert": None,
}


def check_component(path):
    with open(path) as f:
        doc = yaml.safe_load(f)
    check(isinstance(doc, dict), "component: not a mapping")
    check(isinstance(doc.get("name"), str) and doc["name"], "component: name missing")
    check(str(doc.get("schemaVersion")) == "1.0", "component: schemaVersion must be 1.0")
    params = {k for p in doc.get("parameters", []) for k in p}
    phases = doc.get("phases", [])
    names = [p.get("name") for p in phases]
    check(sorted(names) == ["build", "test", "validate"], "component: phases must be build, validate, test: %s" % names)
    text = open(path).read()
    for ref in re.findall(r"\{\{\s*(\w+)\s*\}\}", text):
        check(ref in params, "component: {{ %s }} is not a declared parameter" % ref)
    for phase in phases:
        steps = phase.get("steps", [])
        check(steps, "component: phase %s has no steps" % phase.get("name"))
        seen = set()
        for step in steps:
            n = step.get("name", "")
            check(re.fullmatch(r"[A-Za-z][A-Za-z0-9]*", n or "") is not None, "component: bad step name %r" % n)
            check(n not in seen, "component: duplicate step name %s" % n)
            seen.add(n)
            action = step.get("action")
            check(action in KNOWN_ACTIONS, "component: step %s has unknown action %r" % (n, action))
            inputs = step.get("inputs")
            check(inputs is not None, "component: step %s has no inputs" % n)
            key = KNOWN_ACTIONS.get(action)
            if key:
                vals = inputs.get(key) if isinstance(inputs, dict) else None
                check(isinstance(vals, list) and vals and all(isinstance(c, str) for c in vals),
                      "component: step %s needs inputs.%s as a list of strings" % (n, key))
            if action == "S3Download":
                check(isinstance(inputs, list) and all("source" in i and "destination" in i for i in inputs),
                      "component: S3Download step %s needs source and destination" % n)
    build_cmds = " ".join(c for p in phases if p.get("name") == "build" for s in p.get("steps", [])
                          if isinstance(s.get("inputs"), dict) for c in s["inputs"].get("commands", []))
    check("dnf install -y /tmp/lmi-agent.rpm" in build_cmds, "component: build must install the rpm")
    check("systemctl enable lmi-agent.service" in build_cmds, "component: build must enable the unit")
    return text


def check_paths(texts, file_list):
    with open(file_list) as f:
        files = {l.strip() for l in f if l.strip()}
    dirs = set()
    for f in list(files):
        d = os.path.dirname(f)
        while d and d != "/":
            dirs.add(d)
            d = os.path.dirname(d)
    for name, text in texts.items():
        for path in sorted(set(re.findall(r"(?<![\w.])/(?:usr|etc)/[\w./-]*[\w]", text))):
            check(path in files or path in dirs,
                  "%s references %s, which is not in the package" % (name, path))


def main():
    file_list = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "target", "lmi-package", "files.txt")
    texts = {
        "lmi-agent.pkr.hcl": check_packer(os.path.join(AMI, "lmi-agent.pkr.hcl")),
        "imagebuilder-component.yaml": check_component(os.path.join(AMI, "imagebuilder-component.yaml")),
    }
    if os.path.exists(file_list):
        check_paths(texts, file_list)
    else:
        ERRORS.append("no package file list at %s (run packaging/check.sh first)" % file_list)
    for e in ERRORS:
        print("recipe check FAILED: " + e, file=sys.stderr)
    if ERRORS:
        sys.exit(1)
    print("AMI recipes: ok (HCL2 and YAML parsed, structure and package paths checked)")


if __name__ == "__main__":
    main()
