"""What a person looks at after (or during) a search: every candidate as a flat table row, the Pareto
figure, and one self-contained HTML report (inline SVG, hover shows each arch, no network needed, so it
opens from a cluster's artifact store and serves as the Kubeflow HTML view)."""

from __future__ import annotations

import html
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from vitnas.numbers import human
from vitnas.search.evolution import _num, pareto_front

COSTS = (("params", "params"), ("flops", "FLOPs (multiply-adds)"), ("latency_ms", "predicted latency (ms)"))
_VIRIDIS = ((68, 1, 84), (59, 82, 139), (33, 145, 140), (94, 201, 98), (253, 231, 37))


def best_index(history: Sequence[Mapping[str, Any]], best: Mapping[str, Any] | None) -> int | None:
    """The position of the selected candidate (the search's own choice, ties included) in `history`
    (records are unique: the search never evaluates an arch twice)."""
    return None if best is None else next((i for i, r in enumerate(history) if r == best), None)


def _gene(v: Any) -> Any:
    """A per-layer gene that is the same everywhere is shown as one number."""
    if isinstance(v, list):
        return v[0] if v and all(x == v[0] for x in v) else json.dumps(v)
    return v


def candidate_rows(history: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One flat row per evaluated candidate (what a sortable, filterable table holds)."""
    rows = []
    for i, r in enumerate(history):
        row: dict[str, Any] = {"candidate": i, "generation": int(r["generation"]), "origin": r["origin"],
                               "fitness": r["fitness"], "params": int(r["params"]), "flops": int(r["flops"])}
        for key in ("latency_ms", "proxy", "level", "chosen", "score"):
            if key in r:
                row[key] = r[key]
        row |= {k: _gene(v) for k, v in r["arch"].items() if v is not None and k not in ("name",)}
        rows.append(row)
    return rows


def columns(rows: Sequence[Mapping[str, Any]]) -> dict[str, list[Any]]:
    """Rows as columns (every key of any row; missing cells None), in first-seen key order; a column
    mixing numbers and text (a gene uniform in some archs, per-layer in others) is all text."""
    keys: dict[str, None] = {}
    for r in rows:
        keys.update(dict.fromkeys(r))
    out = {k: [r.get(k) for r in rows] for k in keys}
    for k, values in out.items():
        if any(isinstance(v, str) for v in values) and any(isinstance(v, (int, float)) for v in values):
            out[k] = [None if v is None else str(v) for v in values]
    return out


def arch_summary(arch: Mapping[str, Any]) -> str:
    genes = ("embed_dim", "depth", "num_heads", "mlp_ratio", "mlp_hidden", "qkv_dim", "local_units", "keep_tokens")
    return ", ".join(f"{k} {_gene(arch[k])}" for k in genes if arch.get(k) is not None)


def plot_pareto(history: Sequence[Mapping[str, Any]], path: Path, fitness_label: str,
                best: Mapping[str, Any] | None = None) -> None:
    """Fitness vs params, FLOPs (and latency when known): Pareto fronts in red, the selected arch starred."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, MaxNLocator

    specs = [(k, label) for k, label in COSTS if history and all(k in r for r in history)]
    fig, axes = plt.subplots(1, len(specs), figsize=(5 * len(specs) + 1, 4.2), squeeze=False, layout="constrained")
    fit = [r["fitness"] for r in history]
    chosen = best_index(history, best)
    gens = [r["generation"] for r in history]
    sc = None
    for ax, (key, label) in zip(axes[0], specs, strict=True):
        cost = [r[key] for r in history]
        sc = ax.scatter(cost, fit, c=gens, cmap="viridis", s=12, alpha=0.6, label="evaluated")
        front = pareto_front(cost, fit)
        ax.step([cost[i] for i in front], [fit[i] for i in front], where="post", color="tab:red", lw=1.5)
        ax.scatter([cost[i] for i in front], [fit[i] for i in front], color="tab:red", s=28,
                   label=f"Pareto front ({len(front)})", zorder=3)
        if chosen is not None:
            ax.scatter([cost[chosen]], [fit[chosen]], marker="*", s=220, color="gold", edgecolor="black",
                       label=f"selected ({human(history[chosen]['params'])} params)", zorder=4)
        ax.xaxis.set_major_locator(MaxNLocator(5))
        if key != "latency_ms":
            ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: human(v)))
        ax.set(xlabel=label, ylabel=fitness_label)
        ax.legend(fontsize=8, loc="lower right")
    if sc is not None:
        bar = fig.colorbar(sc, ax=axes[0].tolist(), label="generation")
        bar.locator = MaxNLocator(integer=True)
        bar.update_ticks()
    fig.suptitle(f"search: {len(history)} evaluated candidates")
    fig.savefig(path, dpi=100)
    plt.close(fig)


# ---- the HTML report ------------------------------------------------------------------------------
def _colour(t: float) -> str:
    t = min(max(t, 0.0), 1.0) * (len(_VIRIDIS) - 1)
    i = min(int(t), len(_VIRIDIS) - 2)
    a, b = _VIRIDIS[i], _VIRIDIS[i + 1]
    r, g, bl = (round(x + (y - x) * (t - i)) for x, y in zip(a, b, strict=True))
    return f"#{r:02x}{g:02x}{bl:02x}"


def _ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    if not hi > lo:
        return [lo]
    raw = (hi - lo) / n
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    first = math.ceil(lo / step) * step
    return [first + k * step for k in range(int((hi - first) / step + 1e-9) + 1)]


class _Frame:
    """A plot area mapping data to SVG pixels, with axes and nice ticks."""

    W, H, L, R, T, B = 440, 300, 58, 12, 14, 42

    def __init__(self, xs: Sequence[float], ys: Sequence[float]) -> None:
        def span(v):
            lo, hi = min(v), max(v)
            pad = (hi - lo) * 0.05 or abs(hi) * 0.05 or 1.0
            return lo - pad, hi + pad
        (self.x0, self.x1), (self.y0, self.y1) = span(xs), span(ys)

    def x(self, v: float) -> float:
        return self.L + (v - self.x0) / (self.x1 - self.x0) * (self.W - self.L - self.R)

    def y(self, v: float) -> float:
        return self.H - self.B - (v - self.y0) / (self.y1 - self.y0) * (self.H - self.T - self.B)

    def axes(self, xlabel: str, ylabel: str, xfmt=human, yfmt=human) -> str:
        out = [f"<rect x='{self.L}' y='{self.T}' width='{self.W - self.L - self.R}' "
               f"height='{self.H - self.T - self.B}' fill='none' stroke='#999'/>"]
        for v in _ticks(self.x0, self.x1):
            out.append(f"<line x1='{self.x(v):.1f}' x2='{self.x(v):.1f}' y1='{self.H - self.B}' "
                       f"y2='{self.H - self.B + 4}' stroke='#666'/><text x='{self.x(v):.1f}' "
                       f"y='{self.H - self.B + 16}' text-anchor='middle'>{html.escape(xfmt(v))}</text>")
        for v in _ticks(self.y0, self.y1):
            out.append(f"<line x1='{self.L - 4}' x2='{self.L}' y1='{self.y(v):.1f}' y2='{self.y(v):.1f}' "
                       f"stroke='#666'/><text x='{self.L - 6}' y='{self.y(v) + 4:.1f}' "
                       f"text-anchor='end'>{html.escape(yfmt(v))}</text>")
        out.append(f"<text x='{(self.L + self.W - self.R) / 2}' y='{self.H - 6}' text-anchor='middle'>"
                   f"{html.escape(xlabel)}</text><text transform='translate(13,{(self.T + self.H - self.B) / 2}) "
                   f"rotate(-90)' text-anchor='middle'>{html.escape(ylabel)}</text>")
        return "".join(out)

    def svg(self, body: str) -> str:
        return (f"<svg xmlns='http://www.w3.org/2000/svg' width='{self.W}' height='{self.H}' "
                f"font-size='11' font-family='sans-serif'>{body}</svg>")


def _star(cx: float, cy: float, r: float = 10) -> str:
    pts = []
    for k in range(10):
        a = math.pi / 2 + k * math.pi / 5
        rr = r if k % 2 == 0 else r * 0.45
        pts.append(f"{cx + rr * math.cos(a):.1f},{cy - rr * math.sin(a):.1f}")
    return " ".join(pts)


def _tooltip(i: int, r: Mapping[str, Any]) -> str:
    lat = f", {r['latency_ms']:.3g} ms" if "latency_ms" in r else ""
    return (f"#{i} generation {r['generation']} ({r['origin']}): fitness {_num(r['fitness']):.4g}, "
            f"{human(r['params'])} params, {human(r['flops'])} FLOPs{lat}\n{arch_summary(r['arch'])}")


def _scatter(history, key: str, label: str, fitness_label: str, chosen: int | None) -> str:
    ok = [i for i, r in enumerate(history) if math.isfinite(_num(r["fitness"]))]
    if not ok:
        return "<p>no candidate has a finite fitness</p>"
    cost = [history[i][key] for i in ok]
    fit = [_num(history[i]["fitness"]) for i in ok]
    f = _Frame(cost, fit)
    last = max(r["generation"] for r in history) or 1
    body = [f.axes(label, fitness_label, yfmt=lambda v: f"{v:.3g}")]
    front = [ok[j] for j in pareto_front(cost, fit)]
    for i in ok:
        r = history[i]
        body.append(f"<circle class='pt' data-i='{i}' cx='{f.x(r[key]):.1f}' cy='{f.y(_num(r['fitness'])):.1f}' "
                    f"r='3.5' fill='{_colour(r['generation'] / last)}' fill-opacity='0.7'>"
                    f"<title>{html.escape(_tooltip(i, r))}</title></circle>")
    steps = []
    for a, b in zip(front, front[1:], strict=False):
        steps.append(f"{f.x(history[a][key]):.1f},{f.y(_num(history[a]['fitness'])):.1f} "
                     f"{f.x(history[b][key]):.1f},{f.y(_num(history[a]['fitness'])):.1f}")
    if front:
        steps.append(f"{f.x(history[front[-1]][key]):.1f},{f.y(_num(history[front[-1]]['fitness'])):.1f}")
    body.append(f"<polyline points='{' '.join(steps)}' fill='none' stroke='#d62728' stroke-width='1.5'/>")
    for i in front:
        r = history[i]
        body.append(f"<circle class='pt' data-i='{i}' cx='{f.x(r[key]):.1f}' cy='{f.y(_num(r['fitness'])):.1f}' "
                    f"r='4.5' fill='#d62728'><title>Pareto: {html.escape(_tooltip(i, r))}</title></circle>")
    if chosen is not None and chosen in ok:
        r = history[chosen]
        body.append(f"<polygon class='pt' data-i='{chosen}' points='{_star(f.x(r[key]), f.y(_num(r['fitness'])))}' "
                    f"fill='gold' stroke='black'><title>selected: {html.escape(_tooltip(chosen, r))}</title>"
                    f"</polygon>")
    return f.svg("".join(body))


def _progress(stats: Sequence[Mapping[str, Any]], fitness_label: str) -> str:
    series = [("best_fitness", "best so far", "#d62728"), ("population_mean_fitness", "population mean", "#1f77b4"),
              ("generation_mean_fitness", "generation mean", "#999")]
    pts = [(s["generation"], _num(s.get(k, math.nan))) for s in stats for k, _, _ in series]
    pts = [(g, v) for g, v in pts if math.isfinite(v)]
    if not pts:
        return "<p>no generation finished</p>"
    f = _Frame([g for g, _ in pts], [v for _, v in pts])
    body = [f.axes("generation", fitness_label, xfmt=lambda v: f"{v:g}" if float(v).is_integer() else "",
                   yfmt=lambda v: f"{v:.3g}")]
    for n, (k, name, colour) in enumerate(series):
        line = [(s["generation"], _num(s.get(k, math.nan))) for s in stats]
        line = [(g, v) for g, v in line if math.isfinite(v)]
        body.append(f"<polyline points='{' '.join(f'{f.x(g):.1f},{f.y(v):.1f}' for g, v in line)}' fill='none' "
                    f"stroke='{colour}' stroke-width='2'/>")
        body += [f"<circle cx='{f.x(g):.1f}' cy='{f.y(v):.1f}' r='2.5' fill='{colour}'><title>generation {g}: "
                 f"{name} {v:.4g}</title></circle>" for g, v in line]
        body.append(f"<text x='{f.W - f.R - 6}' y='{f.H - f.B - 10 - 14 * n}' text-anchor='end' "
                    f"fill='{colour}'>{name}</text>")
    return f.svg("".join(body))


_SCRIPT = """
document.querySelectorAll('th').forEach((th, col) => th.addEventListener('click', () => {
  const body = th.closest('table').tBodies[0], asc = th.dataset.dir !== 'asc';
  th.dataset.dir = asc ? 'asc' : 'desc';
  const key = tr => { const t = tr.cells[col].textContent, n = parseFloat(t); return isNaN(n) ? t : n; };
  [...body.rows].sort((a, b) => { const x = key(a), y = key(b); return (x > y ? 1 : x < y ? -1 : 0) * (asc ? 1 : -1); })
    .forEach(tr => body.appendChild(tr));
}));
document.querySelectorAll('.pt').forEach(p => p.addEventListener('click', () => {
  const row = document.getElementById('c' + p.dataset.i);
  document.querySelectorAll('tr.hit').forEach(r => r.classList.remove('hit'));
  row.classList.add('hit'); row.scrollIntoView({block: 'center'});
}));
"""

_STYLE = """
body{font-family:sans-serif;margin:1.5em;color:#222} h1{font-size:1.4em} h2{font-size:1.1em;margin-top:1.5em}
.figs{display:flex;flex-wrap:wrap;gap:12px} table{border-collapse:collapse;font-size:12px}
td,th{border:1px solid #ccc;padding:2px 6px;text-align:right}
th{cursor:pointer;background:#f4f4f4;position:sticky;top:0}
tr.sel td{background:#fff3b0;font-weight:bold} tr.hit td{background:#cde}
.scroll{max-height:480px;overflow:auto;display:inline-block} .pt{cursor:pointer}
"""


def _cell(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.6g}"
    return html.escape(str(v)) if v is not None else ""


def html_report(history: Sequence[Mapping[str, Any]], stats: Sequence[Mapping[str, Any]],
                best: Mapping[str, Any] | None, fitness_label: str, *, title: str = "vitnas search",
                summary: Mapping[str, Any] | None = None) -> str:
    """One self-contained HTML page: summary, Pareto fronts (hover: the arch; click: its table row),
    progress per generation and every candidate in a sortable table, the selected arch highlighted."""
    chosen = best_index(history, best)
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
             f"<style>{_STYLE}</style></head><body><h1>{html.escape(title)}</h1>"]
    if chosen is not None:
        r = history[chosen]
        parts.append(f"<p><b>selected</b> (candidate #{chosen}, generation {r['generation']}, {r['origin']}): "
                     f"{fitness_label} {_num(r['fitness']):.4g}, {human(r['params'])} params, "
                     f"{human(r['flops'])} FLOPs<br><code>{html.escape(arch_summary(r['arch']))}</code></p>")
    if summary:
        cells = "".join(f"<tr><th>{html.escape(k)}</th><td>{_cell(v)}</td></tr>" for k, v in summary.items())
        parts.append(f"<details><summary>metrics</summary><table>{cells}</table></details>")
    specs = [(k, label) for k, label in COSTS if history and all(k in r for r in history)]
    parts.append("<h2>Pareto fronts</h2><p>Colour: generation (dark early, yellow late); red: the Pareto front; "
                 "star: the selected arch. Hover a point for its arch, click it to find its row.</p><div class='figs'>")
    parts += [_scatter(history, k, label, fitness_label, chosen) for k, label in specs]
    parts.append(f"</div><h2>Progress per generation</h2>{_progress(stats, fitness_label)}")
    rows = candidate_rows(history)
    cols = list(columns(rows))
    head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
    body = "".join(f"<tr id='c{r['candidate']}'{' class=sel' if r['candidate'] == chosen else ''}>"
                   + "".join(f"<td>{_cell(r.get(c))}</td>" for c in cols) + "</tr>" for r in rows)
    parts.append(f"<h2>Every evaluated candidate ({len(rows)})</h2><p>Click a column to sort.</p>"
                 f"<div class='scroll'><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>")
    parts.append(f"<script>{_SCRIPT}</script></body></html>")
    return "".join(parts)
