"""The package's layout: no import cycles among rectrain's modules (module-level
imports, including the package __init__ files they pass through), and the
streaming loop and the experiments tooling split into parts of readable size."""

import ast
import os

ROOT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "rectrain")


def _modules():
  out = {}
  for dirpath, _, files in os.walk(ROOT):
    for f in files:
      if f.endswith(".py"):
        path = os.path.join(dirpath, f)
        rel = os.path.relpath(path, os.path.dirname(ROOT))[:-3].replace(os.sep, ".")
        out[rel[: -len(".__init__")] if rel.endswith(".__init__") else rel] = path
  return out


def _imports(path, name, modules):
  """rectrain modules imported at module level (not inside functions)."""
  tree = ast.parse(open(path).read())
  found = set()
  is_pkg = path.endswith("__init__.py")
  for node in tree.body:
    if isinstance(node, ast.Import):
      found |= {a.name for a in node.names}
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ""
      if node.level:
        parts = name.split(".")
        parts = parts if is_pkg else parts[:-1]
        base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
      found.add(base)
      found |= {f"{base}.{a.name}" for a in node.names}
  deps = set()
  for mod in found:
    while mod and mod not in modules:
      mod = mod.rpartition(".")[0]
    if mod and mod != name:
      deps.add(mod)
  # importing a.b.c runs a/__init__ and a/b/__init__ first
  for dep in list(deps):
    parts = dep.split(".")
    deps |= {".".join(parts[:i]) for i in range(1, len(parts)) if ".".join(parts[:i]) != name}
  return deps


def test_no_import_cycles():
  modules = _modules()
  graph = {name: _imports(path, name, modules) for name, path in modules.items()}
  # a package's __init__ importing its own submodules is the normal re-export, not a cycle
  for name in graph:
    graph[name] = {d for d in graph[name] if not (modules[name].endswith("__init__.py")
                                                   and d.startswith(name + "."))}
  state, stack, cycles = {}, [], []

  def visit(n):
    state[n] = 1
    stack.append(n)
    for d in sorted(graph.get(n, ())):
      if state.get(d) == 1:
        cycles.append(stack[stack.index(d):] + [d])
      elif d not in state:
        visit(d)
    stack.pop()
    state[n] = 2

  for n in sorted(graph):
    if n not in state:
      visit(n)
  assert not cycles, cycles


def test_no_module_is_much_over_600_lines():
  long = {}
  for folder, _, files in os.walk(ROOT):
    for name in files:
      if name.endswith(".py"):
        path = os.path.join(folder, name)
        n = sum(1 for _ in open(path))
        if n > 600:
          long[os.path.relpath(path, ROOT)] = n
  assert not long, f"split these modules by responsibility: {long}"
