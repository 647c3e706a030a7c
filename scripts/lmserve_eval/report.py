"""report -- the sweep's (and score's) HTML page, PNG plots and text tables.

Plots use matplotlib's Agg backend (no display needed).  Every setting is one
point: x = the model's mean log-probability of its samples (quality as the
model sees it; higher = more typical text), y = a diversity measure.
"""

import datetime
import html
import os

from .phases import write_atomic

PLOTS = (
    ("diversity_vs_quality.png", "distinct_2", "distinct-2 (pooled over samples)",
     "Diversity vs quality: distinct-2 against the model's mean log-prob"),
    ("ttr_vs_quality.png", "ttr", "type-token ratio (mean per sample)",
     "Type-token ratio against the model's mean log-prob"),
)


def _fmt(v, digits=3):
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def plot_settings(path, rows, ykey, ylabel, title):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts = [(r["mean_logprob"], r[ykey], r) for r in rows
           if r.get("mean_logprob") is not None and r.get(ykey) is not None]
    fig, ax = plt.subplots(figsize=(10.0, 5.2), dpi=100)
    try:
        temps = sorted({r.get("temperature", 1.0) for _, _, r in pts})
        cmap = plt.get_cmap("viridis")

        def colour(t):
            return cmap(0.85 * temps.index(t) / max(1, len(temps) - 1))

        numbers = {}  # points that coincide share one annotation
        for x, y, r in pts:
            marker = "o" if r.get("repetition_penalty", 1.0) in (None, 1.0) else "s"
            ax.scatter([x], [y], color=colour(r.get("temperature", 1.0)), marker=marker, s=50,
                       edgecolor="black", linewidth=0.5, zorder=3,
                       label=f"{r['setting'] + 1}: {r['label']}")
            numbers.setdefault((round(x, 3), round(y, 3)), []).append(str(r["setting"] + 1))
        for (x, y), ns in numbers.items():
            ax.annotate(",".join(ns), (x, y), textcoords="offset points", xytext=(6, 4), fontsize=8)
        if pts:
            ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False,
                      title="setting (square: repetition penalty)", title_fontsize=7,
                      ncol=1 if len(pts) <= 24 else 2)
        else:
            ax.text(0.5, 0.5, "no scored samples", ha="center", va="center", transform=ax.transAxes)
        ax.set_xlabel("mean log-prob per token of the samples under the model (higher = more typical)")
        ax.set_ylabel(ylabel)
        ax.set_title(title, fontsize=10)
        ax.grid(True, alpha=0.3)
        ax.margins(x=0.12, y=0.1)
        fig.tight_layout()
        fig.savefig(path, format="png")
    finally:
        plt.close(fig)


TABLE_COLUMNS = (("number", "#", None), ("label", "setting", None), ("ttr", "TTR", 3), ("distinct_1", "distinct-1", 3),
                 ("distinct_2", "distinct-2", 3), ("repeated_ngram_rate", "repeated n-grams", 3),
                 ("mean_tokens", "tokens", 1), ("mean_logprob", "log-prob/token", 3),
                 ("perplexity", "perplexity", 2), ("variation", "variation", 2))


def sweep_table(rows):
    heads = [h for _, h, _ in TABLE_COLUMNS]
    data = [[(r["label"] if k == "label" else _fmt(r.get(k), d)) for k, _, d in TABLE_COLUMNS]
            for r in rows]
    widths = [max(len(h), *(len(row[i]) for row in data)) for i, h in enumerate(heads)]
    out = ["  ".join(h.ljust(w) if i == 1 else h.rjust(w) for i, (h, w) in enumerate(zip(heads, widths)))]
    for row in data:
        out.append("  ".join(c.ljust(w) if i == 1 else c.rjust(w)
                             for i, (c, w) in enumerate(zip(row, widths))))
    return "\n".join(out)


CSS = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ccc;padding:3px 7px;text-align:right}
td:nth-child(2),th:nth-child(2){text-align:left}th{background:#f2f2f2}
img{max-width:100%;border:1px solid #ddd;margin:.5em 0}pre{white-space:pre-wrap;background:#f7f7f7;padding:.5em;font-size:13px}
dt{font-weight:600}dd{margin:0 0 .4em 1.5em}.p{color:#777}"""


def _html_table(rows, columns):
    h = ["<table><tr>" + "".join(f"<th>{html.escape(t)}</th>" for _, t, _ in columns) + "</tr>"]
    for r in rows:
        h.append("<tr>" + "".join(
            f"<td>{html.escape(str(r.get(k)) if d is None else _fmt(r.get(k), d))}</td>"
            for k, _, d in columns) + "</tr>")
    h.append("</table>")
    return "\n".join(h)


def write_sweep_report(out_dir, meta, rows, examples):
    files = []
    for name, key, ylabel, title in PLOTS:
        plot_settings(os.path.join(out_dir, name), rows, key, ylabel, title)
        files.append(name)
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(meta['title'])}</title>",
             f"<style>{CSS}</style></head><body>",
             f"<h1>{html.escape(meta['title'])}</h1>",
             "<p>" + " · ".join(html.escape(f"{k}: {v}") for k, v in (
                 ("server", meta["url"]), ("model", meta.get("model") or "?"),
                 ("prompts", meta["prompts"]), ("samples per prompt and setting", meta["samples"]),
                 ("seeds", meta["seeds"]), ("max_tokens", meta["max_tokens"]), ("made", now))) + "</p>",
             "<h2>Diversity against quality</h2>",
             "<p>One point per setting. Right = text the model finds more probable; up = more varied text.</p>"]
    for name, _, _, title in PLOTS:
        parts.append(f"<figure><img src='{name}' alt='{html.escape(title)}'><figcaption>{html.escape(title)}</figcaption></figure>")
    parts.append("<h2>Metrics per setting</h2>")
    parts.append(_html_table(rows, TABLE_COLUMNS))
    parts.append("<p>Also as <a href='metrics.csv'>metrics.csv</a> and <a href='metrics.json'>metrics.json</a>; "
                 "every sample is in generations.jsonl, its scoring in scores.jsonl.</p>")
    parts.append("<h2>Definitions</h2><dl>"
                 "<dt>words</dt><dd>lower-cased runs of letters, digits and inner apostrophes; punctuation dropped</dd>"
                 "<dt>TTR</dt><dd>distinct words / words of one sample, averaged over the setting's samples</dd>"
                 "<dt>distinct-n</dt><dd>distinct word n-grams / n-grams, pooled over all samples of the setting</dd>"
                 f"<dt>repeated n-grams</dt><dd>share of a sample's {meta['rep_n']}-grams that already occurred in it, averaged</dd>"
                 "<dt>tokens</dt><dd>completion tokens per sample, as the server counted them</dd>"
                 "<dt>log-prob/token</dt><dd>the model's mean log-probability of the sample's tokens given the prompt, "
                 "from an echo request (prompt + sample, echo, logprobs, max_tokens 0), pooled over all tokens of the setting</dd>"
                 "<dt>perplexity</dt><dd>exp(−log-prob/token)</dd>"
                 "<dt>variation</dt><dd>per prompt, (distinct samples − 1) / (samples − 1), averaged; 0 = all samples identical</dd></dl>")
    parts.append("<h2>Examples (first prompt)</h2>")
    for r in rows:
        ex = examples.get(r["setting"], [])
        parts.append(f"<h3>{html.escape(r['label'])}</h3>")
        for prompt, text in ex:
            parts.append(f"<pre><span class='p'>{html.escape(prompt)}</span>{html.escape(text)}</pre>")
    parts.append("</body></html>\n")
    write_atomic(os.path.join(out_dir, "index.html"), "\n".join(parts))
    files.insert(0, "index.html")
    return files


SCORE_COLUMNS = (("what", "", None), ("texts", "texts", None), ("mean_tokens", "tokens", 1),
                 ("mean_words", "words", 1), ("mean_logprob", "log-prob/token", 3),
                 ("perplexity", "perplexity", 2), ("ttr", "TTR", 3), ("distinct_1", "distinct-1", 3),
                 ("distinct_2", "distinct-2", 3), ("repeated_ngram_rate", "repeated n-grams", 3))


def score_table(rows):
    heads = [h for _, h, _ in SCORE_COLUMNS]
    data = [[(str(r.get(k)) if d is None else _fmt(r.get(k), d)) for k, _, d in SCORE_COLUMNS]
            for r in rows]
    widths = [max(len(h), *(len(row[i]) for row in data)) for i, h in enumerate(heads)]
    out = ["  ".join(h.ljust(w) if i == 0 else h.rjust(w) for i, (h, w) in enumerate(zip(heads, widths)))]
    for row in data:
        out.append("  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                             for i, (c, w) in enumerate(zip(row, widths))))
    return "\n".join(out)


def write_score_report(out_dir, meta, rows, per_text):
    parts = ["<!doctype html><html><head><meta charset='utf-8'><title>held-out score</title>",
             f"<style>{CSS}</style></head><body><h1>Held-out comparison</h1>",
             "<p>" + " · ".join(html.escape(f"{k}: {v}") for k, v in meta.items()) + "</p>",
             "<p>Each text is split into a prefix and its true continuation. The true continuation's "
             "log-prob/token and perplexity come from one echo request; the sampled continuations are "
             "drawn from the prefix and scored the same way.</p>",
             _html_table(rows, SCORE_COLUMNS), "<h2>Per text</h2>"]
    for t in per_text:
        parts.append(f"<h3>{html.escape(str(t['id']))} — perplexity of the true continuation "
                     f"{_fmt(t['true']['perplexity'], 2)}</h3>")
        parts.append(f"<pre><span class='p'>{html.escape(t['prefix'])}</span>{html.escape(t['continuation'])}</pre>")
        for s in t["samples"][:3]:
            parts.append(f"<pre><span class='p'>{html.escape(t['prefix'])}</span>{html.escape(s)}</pre>")
    parts.append("</body></html>\n")
    write_atomic(os.path.join(out_dir, "index.html"), "\n".join(parts))
