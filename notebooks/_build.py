"""Shared by the notebook generators (make_*.py): build a notebook from
`(kind, source)` cells, optionally execute it with nbclient, strip
TensorFlow's C++ start-up log lines from its stderr outputs, and write it."""

import os
import re
import sys

import nbformat as nbf

# TensorFlow's C++ start-up log (absl) reaches the kernel's stderr before any
# setting can silence it; it is noise in a stored notebook.
NOISE = re.compile(r"^(WARNING: All log messages before absl|[IWE]\d{4} \d\d:\d\d:\d\d|To enable the following)")


def write_notebook(cells, name, timeout=1800):
    """Writes `cells` to notebooks/`name`, executed first when `--execute` is in argv."""
    nb = nbf.v4.new_notebook()
    nb.cells = [nbf.v4.new_markdown_cell(src) if kind == "md" else nbf.v4.new_code_cell(src) for kind, src in cells]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    out = os.path.join(os.path.dirname(os.path.abspath(__file__)), name)
    if "--execute" in sys.argv:
        import nbclient

        nbclient.NotebookClient(nb, timeout=timeout, kernel_name="python3",
                                resources={"metadata": {"path": os.path.dirname(out)}}).execute()
        for cell in nb.cells:
            if cell.cell_type != "code":
                continue
            kept = []
            for o in cell.get("outputs", []):
                if o.get("output_type") == "stream" and o.get("name") == "stderr":
                    o["text"] = "".join(line for line in o["text"].splitlines(True) if not NOISE.match(line))
                    if not o["text"].strip():
                        continue
                kept.append(o)
            cell.outputs = kept
    nbf.write(nb, out)
    print("wrote", out)
