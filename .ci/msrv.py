"""Fails when a dependency of freshen or freshen-core needs a newer Rust than
the workspace's rust-version says (the MSRV drifted with the lockfile)."""
import json
import subprocess
import sys

metadata = json.loads(subprocess.check_output(["cargo", "metadata", "--format-version", "1", "--locked"]))
packages = {p["id"]: p for p in metadata["packages"]}
nodes = {n["id"]: n for n in metadata["resolve"]["nodes"]}


def version(text):
    return tuple(int(part) for part in text.split("."))


def reachable(root):
    seen, stack = set(), [root]
    while stack:
        node = stack.pop()
        if node not in seen:
            seen.add(node)
            stack.extend(d["pkg"] for d in nodes[node]["deps"] if any(k["kind"] in (None, "build") for k in d["dep_kinds"]))
    return seen


declared = None
needed = []
for name in ("freshen-core", "freshen"):
    root = next(p for p in metadata["packages"] if p["name"] == name)
    declared = version(root["rust_version"])
    for node in reachable(root["id"]):
        rust = packages[node].get("rust_version")
        if rust:
            needed.append((version(rust), packages[node]["name"], packages[node]["version"]))
highest = max(needed)
print(f"rust-version {'.'.join(map(str, declared))}; the most any dependency needs: "
      f"{'.'.join(map(str, highest[0]))} ({highest[1]} {highest[2]})")
if highest[0][:2] > declared[:2]:
    sys.exit("the workspace's rust-version is lower than a dependency needs: raise it")
if highest[0][:2] < declared[:2]:
    print("(the workspace asks for more than its dependencies need: fine, if its own code does)")
