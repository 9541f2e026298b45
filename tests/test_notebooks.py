"""Executes the notebooks on a tiny budget (nbclient)."""

import os

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
NOTEBOOKS = os.path.join(os.path.dirname(HERE), "notebooks")


CHECKS = {
    "quickstart.ipynb": ["test bits/dim on 500 images", "reconstruction error"],
    "moons.ipynb": ["test NLL", "the context matters", "samples finite: True"],
    "energies.ipynb": ["KL = log Z - ELBO in nats", "all fits finite: True"],
    "freeform.ipynb": ["test NLL in nats", "samples finite: True", "largest round-trip error"],
    "apps.ipynb": ["Bayes classifier on", "largest end-point error", "of the MAP fills", "AUROC",
                   "pixel AUROC"],
}


# quickstart runs by default; the others (about a minute together) with -m slow.
@pytest.mark.parametrize("name", [n if n == "quickstart.ipynb" else pytest.param(n, marks=pytest.mark.slow)
                                  for n in sorted(CHECKS)])
def test_notebook_executes(name, tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat", reason="nbformat is a test extra")
    nbclient = pytest.importorskip("nbclient", reason="nbclient is a test extra")
    monkeypatch.setenv("TFFLOWS_NOTEBOOK_STEPS", "20" if name in ("quickstart.ipynb", "apps.ipynb") else "30")
    monkeypatch.setenv("TFFLOWS_NOTEBOOK_KS", "2")  # energies.ipynb: K = 2 only (K = 32 takes minutes to trace)
    monkeypatch.setenv("TFFLOWS_NOTEBOOK_ENERGIES", "U2")  # and one energy: 5 fits, not 20
    nb = nbformat.read(os.path.join(NOTEBOOKS, name), as_version=4)
    nbclient.NotebookClient(nb, timeout=300, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    for text in CHECKS[name]:
        assert text in outputs
    errors = [o for c in nb.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors
