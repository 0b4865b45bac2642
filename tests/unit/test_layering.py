"""The import layers (CONVENTIONS.md): the model layer knows nothing of runs, data or tasks;
the trainer nothing of tasks; data nothing of the trainer or tasks; the library nothing of
configs/, the CLIs, benchmarks/, tools/ or tests/; tests/ and benchmarks/ nothing of each
other, tools/ nothing of tests/. Read with `ast` (function-level imports included), nothing imported."""

from __future__ import annotations

import ast
import os

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

MODEL_LAYER = ("config", "compute", "ops", "layers", "model", "heads", "losses", "functional",
               "errors", "files")
ABOVE_MODEL = ("flax_bert.trainer", "flax_bert.tasks", "flax_bert.data", "flax_bert.hf",
               "flax_bert.hf_names", "flax_bert.preemption", "flax_bert.distributed")
OUTSIDE_LIBRARY = ("configs", "train", "finetune", "benchmarks", "tools", "tests")


def python_files(folder: str) -> list[str]:
    """Every .py file under ROOT/folder, relative to ROOT."""
    out = []
    for dirpath, _, names in os.walk(os.path.join(ROOT, folder)):
        out += [os.path.relpath(os.path.join(dirpath, n), ROOT) for n in names
                if n.endswith(".py")]
    return sorted(out)


def module_of(path: str) -> str:
    """`flax_bert/data/corpus.py` -> `flax_bert.data.corpus` (a package: its __init__)."""
    parts = path[:-len(".py")].split(os.sep)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: str) -> list[tuple[int, str]]:
    """(line, module) of every import in the file, at any depth; `from a import b` gives
    `a.b` (b may be a module), relative imports resolved."""
    with open(os.path.join(ROOT, path), encoding="utf-8") as f:
        tree = ast.parse(f.read(), path)
    package = module_of(path).split(".")
    if not path.endswith("__init__.py"):
        package = package[:-1]
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package[:len(package) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            out += [(node.lineno, f"{base}.{alias.name}" if base else alias.name)
                    for alias in node.names]
    return out


def is_under(module: str, prefixes: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def offending(files: list[str], forbidden: tuple[str, ...]) -> list[str]:
    """`file:line imports module` for each import of a forbidden module (or below it)."""
    return [f"{path}:{line} imports {module}" for path in files
            for line, module in imports(path) if is_under(module, forbidden)]


def check(files: list[str], forbidden: tuple[str, ...]) -> None:
    bad = offending(files, forbidden)
    for line in bad:
        print(line)
    assert not bad, "\n".join(bad)


def test_the_model_layer_imports_no_layer_above_it():
    files = [os.path.join("flax_bert", f"{name}.py") for name in MODEL_LAYER]
    check(files, ABOVE_MODEL)


def test_the_trainer_imports_no_task():
    check(python_files(os.path.join("flax_bert", "trainer")), ("flax_bert.tasks",))


def test_data_imports_neither_the_trainer_nor_a_task():
    check(python_files(os.path.join("flax_bert", "data")),
          ("flax_bert.trainer", "flax_bert.tasks"))


def test_the_library_imports_nothing_outside_it():
    check(python_files("flax_bert"), OUTSIDE_LIBRARY)


def test_tests_and_benchmarks_do_not_import_each_other_and_tools_no_test():
    check(python_files("tests"), ("benchmarks",))
    check(python_files("benchmarks"), ("tests",))
    check(python_files("tools"), ("tests",))


def test_the_checks_see_function_level_and_relative_imports(tmp_path, monkeypatch):
    """The reader itself: an import inside a function, and a relative one, are found."""
    package = tmp_path / "flax_bert" / "data"
    package.mkdir(parents=True)
    (package / "x.py").write_text("import os\n\ndef f():\n    from ..trainer import loop\n"
                                  "    import configs.default\n")
    monkeypatch.setattr(f"{__name__}.ROOT", str(tmp_path))
    path = os.path.join("flax_bert", "data", "x.py")
    assert offending([path], ("flax_bert.trainer", "configs")) == [
        f"{path}:4 imports flax_bert.trainer.loop", f"{path}:5 imports configs.default"]
