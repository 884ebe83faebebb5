"""One standalone HTML page for a run folder: the verdict, the summary, the checks and
every plot inline (PNG as data: URIs), so the page can be mailed or attached to CI as a
single file. Pure: `render(results, images)` -> str; `write(out_dir)` reads the folder's
results.json and the PNGs it names and writes report.html next to them.
"""

from __future__ import annotations

import base64
import html
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from meshstress import safefs

PAGE = "report.html"
_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 70em; color: #222; }
h1 { font-size: 1.4em; } h2 { font-size: 1.15em; margin-top: 1.6em; }
.PASSED { color: #11772e; } .FAILED { color: #b3261e; } .INVALID { color: #9a5b00; }
pre { background: #f6f6f6; padding: 1em; overflow-x: auto; font-size: 0.85em; }
table { border-collapse: collapse; font-size: 0.9em; }
td, th { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; }
td.pass { color: #11772e; } td.fail { color: #b3261e; }
img { max-width: 100%; border: 1px solid #ddd; margin: 0.5em 0; }
"""


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def render(results: Mapping[str, Any], images: Mapping[str, bytes]) -> str:
    """The page for `results` with `images` (file name -> PNG bytes) inline."""
    from meshstress.report import summary, verdict_word

    run = results.get("run") or {}
    word = verdict_word(results)
    title = f"meshstress: {run.get('scenario', '?')} {word}"
    out = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{_e(title)}</title><style>{_STYLE}</style></head><body>",
        f'<h1>{_e(run.get("scenario", "?"))}: <span class="{word}">{word}</span></h1>',
        "<p>"
        + ", ".join(
            _e(f"{k} {run[k]}")
            for k in ("started", "where", "kernel", "wall_s", "meshstress_version")
            if run.get(k) is not None
        )
        + (f"; schema {_e(results['schema_version'])}" if "schema_version" in results else "")
        + "</p>",
    ]
    checks = results.get("checks") or []
    if checks:
        out.append("<h2>Checks</h2><table><tr><th></th><th>assertion</th><th>measured</th>"
                   "<th>explanation</th></tr>")  # fmt: skip
        for c in checks:
            ok = bool(c.get("passed"))
            out.append(
                f'<tr><td class="{"pass" if ok else "fail"}">{"PASS" if ok else "FAIL"}</td>'
                f"<td>{_e(c.get('assert'))}</td><td>{_e(c.get('actual', ''))}</td>"
                f"<td>{_e(c.get('explanation') or c.get('error') or '')}</td></tr>"
            )
        out.append("</table>")
    for name in sorted(images):
        data = base64.b64encode(images[name]).decode("ascii")
        out.append(f"<h2>{_e(Path(name).stem)}</h2>")
        out.append(f'<img alt="{_e(name)}" src="data:image/png;base64,{data}">')
    out.append("<h2>Summary</h2>")
    out.append(f"<pre>{_e(summary(results))}</pre>")
    out.append("<h2>results.json</h2><details><summary>show</summary>")
    out.append(f"<pre>{_e(json.dumps(results, indent=1))}</pre></details>")
    out.append("</body></html>")
    return "\n".join(out) + "\n"


def write(out_dir: Path, results: Mapping[str, Any] | None = None) -> Path:
    """Write out_dir/report.html from its results.json (or `results`) and the plots that
    results.json names (run.plots); a plot file that is missing is left out."""
    if results is None:
        results = json.loads((out_dir / "results.json").read_text(encoding="utf-8"))
    images: dict[str, bytes] = {}
    for name in (results.get("run") or {}).get("plots") or []:
        if not isinstance(name, str) or "/" in name or not name.endswith(".png"):
            continue  # only plain file names in this folder
        try:
            images[name] = safefs.read_bytes(out_dir, name)
        except (FileNotFoundError, OSError):
            continue
    safefs.write_file(out_dir, PAGE, render(results, images))
    return out_dir / PAGE
