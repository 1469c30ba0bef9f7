import importlib
import pkgutil
import sys

import omni_jax.bench as bench_pkg

SKIP = {"limits", "timing", "fuzz_targets", "__main__"}


def available() -> list[str]:
    return sorted(m.name.replace("_", "-") for m in pkgutil.iter_modules(bench_pkg.__path__) if m.name not in SKIP)


def main(argv: list[str]) -> int:
    names = available()
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: python -m omni_jax.bench {" + ",".join(names) + "} [--json] [options]")
        return 0 if argv else 2
    name = argv[0]
    if name not in names:
        print(f"omni_jax.bench: unknown benchmark {name!r}; choose from {', '.join(names)}", file=sys.stderr)
        return 2
    from omni_jax.compilation import setup_compilation_cache

    setup_compilation_cache()  # compiled programs are kept between runs (see omni_jax.compilation)
    module = importlib.import_module(f"omni_jax.bench.{name.replace('-', '_')}")
    module.main(argv[1:])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
