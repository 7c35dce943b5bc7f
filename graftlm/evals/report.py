"""A self-contained HTML report for the ladder: inline SVG bars with CI whiskers, loss curves, the table."""

from __future__ import annotations

import html
from pathlib import Path

COLORS = ["#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#edc948", "#b07aa1", "#ff9da7"]


def bar_chart(rungs: list[dict], width: int = 640, height: int = 300) -> str:
    pad_l, pad_b, pad_t = 40, 60, 10
    plot_h, n = height - pad_b - pad_t, max(1, len(rungs))
    slot = (width - pad_l - 10) / n
    y = lambda v: pad_t + plot_h * (1 - max(0.0, min(1.0, v)))  # noqa: E731
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-size="11">']
    for t in (0, 0.25, 0.5, 0.75, 1.0):
        parts.append(f'<line x1="{pad_l}" x2="{width - 10}" y1="{y(t):.1f}" y2="{y(t):.1f}" stroke="#ddd"/>'
                     f'<text x="{pad_l - 4}" y="{y(t) + 4:.1f}" text-anchor="end">{t:.2f}</text>')
    for i, r in enumerate(rungs):
        x, w = pad_l + i * slot + slot * 0.15, slot * 0.7
        cx = x + w / 2
        parts.append(f'<rect x="{x:.1f}" y="{y(r["score"]):.1f}" width="{w:.1f}" height="{y(0) - y(r["score"]):.1f}" '
                     f'fill="{COLORS[i % len(COLORS)]}"><title>{html.escape(r["name"])}: {r["score"]:.3f}</title></rect>')
        lo, hi = y(r["ci_low"]), y(r["ci_high"])
        parts.append(f'<line x1="{cx:.1f}" x2="{cx:.1f}" y1="{lo:.1f}" y2="{hi:.1f}" stroke="#000"/>'
                     f'<line x1="{cx - 6:.1f}" x2="{cx + 6:.1f}" y1="{lo:.1f}" y2="{lo:.1f}" stroke="#000"/>'
                     f'<line x1="{cx - 6:.1f}" x2="{cx + 6:.1f}" y1="{hi:.1f}" y2="{hi:.1f}" stroke="#000"/>')
        parts.append(f'<text x="{cx:.1f}" y="{height - pad_b + 16}" text-anchor="middle">{html.escape(r["name"])}</text>'
                     f'<text x="{cx:.1f}" y="{height - pad_b + 30}" text-anchor="middle">{r["score"]:.2f}</text>')
    parts.append("</svg>")
    return "".join(parts)


def loss_chart(curves: dict[str, list[dict]], width: int = 640, height: int = 260) -> str:
    series = [(f"{m} {key}", [(p["step"], p[key]) for p in pts if p.get(key) is not None])
              for m, pts in curves.items() for key in ("train_loss", "valid_loss")]
    series = [(name, pts) for name, pts in series if pts]
    if not series:
        return "<p>No loss curves (no fine-tuned rung reported metrics).</p>"
    xs = [x for _, pts in series for x, _ in pts]
    ys = [v for _, pts in series for _, v in pts]
    x0, x1, y0, y1 = min(xs), max(max(xs), min(xs) + 1), min(ys), max(max(ys), min(ys) + 1e-6)
    pad_l, pad_b, pad_t, pad_r = 50, 30, 10, 160
    sx = lambda v: pad_l + (width - pad_l - pad_r) * (v - x0) / (x1 - x0)  # noqa: E731
    sy = lambda v: pad_t + (height - pad_t - pad_b) * (1 - (v - y0) / (y1 - y0))  # noqa: E731
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-size="11">',
             f'<text x="{pad_l - 4}" y="{sy(y1) + 4:.1f}" text-anchor="end">{y1:.2f}</text>',
             f'<text x="{pad_l - 4}" y="{sy(y0):.1f}" text-anchor="end">{y0:.2f}</text>',
             f'<text x="{(width - pad_r) / 2:.0f}" y="{height - 6}" text-anchor="middle">step</text>',
             f'<rect x="{pad_l}" y="{pad_t}" width="{width - pad_l - pad_r}" height="{height - pad_t - pad_b}" '
             'fill="none" stroke="#ccc"/>']
    for i, (name, pts) in enumerate(series):
        color = COLORS[i % len(COLORS)]
        path = " ".join(f"{sx(x):.1f},{sy(v):.1f}" for x, v in pts)
        parts.append(f'<polyline fill="none" stroke="{color}" stroke-width="1.5" points="{path}"/>')
        parts.append(f'<text x="{width - pad_r + 8}" y="{pad_t + 14 * (i + 1)}" fill="{color}">{html.escape(name)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def write_report(result: dict, path: str | Path) -> Path:
    rows = "".join(
        f"<tr><td>{html.escape(r['name'])}</td><td>{r['score']:.3f}</td><td>[{r['ci_low']:.3f}, {r['ci_high']:.3f}]</td>"
        f"<td>{r['tokens']:.0f}</td><td>{r['latency_ms']:.1f}</td><td>{r['unit_hours']:.2f}</td><td>{r['cost']:.2f}</td></tr>"
        for r in result["rungs"])
    doc = f"""<!doctype html><html><head><meta charset="utf-8"><title>Customization ladder</title>
<style>body{{font-family:sans-serif;max-width:760px;margin:2em auto}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:3px 8px;text-align:right}}td:first-child{{text-align:left}}</style></head><body>
<h1>Customization ladder</h1>
<p>Base model <b>{html.escape(result['base_model'])}</b>; {result['n_eval']} eval examples from
{html.escape(result['eval_path'])}; scorer <b>{html.escape(result['scorer'])}</b>; 95% percentile-bootstrap CIs.
RAG source: {html.escape(str(result['rag_source']))}. Cost = training unit-hours × {result['price_per_unit_hour']}.</p>
<h2>Score per rung</h2>{bar_chart(result['rungs'])}
<h2>Verdict</h2><p>{html.escape(result['verdict']['text'])}</p>
<table><tr><th>rung</th><th>score</th><th>95% CI</th><th>tokens/example</th><th>latency ms/example</th>
<th>training unit-hours</th><th>cost</th></tr>{rows}</table>
<h2>Training loss</h2>{loss_chart(result.get('loss_curves') or {})}
</body></html>"""
    path = Path(path)
    path.write_text(doc, encoding="utf-8")
    return path
