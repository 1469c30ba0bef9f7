"""experiments/quickstart.ipynb runs top to bottom on the demo checkpoint (executed with nbclient)."""

from pathlib import Path

import nbformat
from nbclient import NotebookClient

NOTEBOOK = Path(__file__).resolve().parents[1] / "experiments" / "quickstart.ipynb"


def test_quickstart_notebook_runs(demo_cache, demo_compilation_cache, tmp_path, monkeypatch):
    monkeypatch.setenv("OMNI_JAX_CACHE", str(demo_cache))  # the kernel inherits it
    # the README test runs the same calls in this process: share compiled programs (same matmul precision)
    monkeypatch.setenv("OMNI_JAX_COMPILATION_CACHE", str(demo_compilation_cache))
    monkeypatch.setenv("JAX_DEFAULT_MATMUL_PRECISION", "highest")
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    text = "".join(o.get("text", "") for o in outputs if o.get("output_type") == "stream")
    assert "(25, 16)" in text or ", 16)" in text  # codec codes: frames x 16
    assert any("image/png" in o.get("data", {}) for o in outputs)  # the router-statistics plot
    assert any("text/html" in o.get("data", {}) for o in outputs)  # the audio player
