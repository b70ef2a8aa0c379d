"""Markdown tables for the README, from the JSON results in benchmarks/results/.

    python benchmarks/report.py kernels|target|drafts|study|per_video|tau|offline|serve|reliability|summary|compiled [ARCH]
    python benchmarks/report.py long [FILE]          # bench_long.py cells (default results/long_workloads.json)
    python benchmarks/report.py target_long          # eval-target --task narrate/chat/stream
    python benchmarks/report.py window               # the window study (results/window_study.json)

ARCH (target, drafts, offline, serve, summary): qwen2.5-vl (default) or llava-onevision, whose
results live in ``<name>_llava-onevision.json`` (``target``: the rows of that family).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

RESULTS = Path(__file__).parent / "results"


def kernels() -> str:
    d = json.loads((RESULTS / "bench_kernels.json").read_text())
    cells = {(r["method"], r["batch"], r["num_visual"]): r["median_ms"] for r in d["results"]}
    batches = d["config"]["batches"]
    rows = ["| visual tokens | " + " | ".join(f"sparrow B={b} | full B={b} | ratio" for b in batches) + " |",
            "|---|" + "---|---|---|" * len(batches)]
    for v in d["config"]["visual_tokens"]:
        cols = []
        for b in batches:
            s, f = cells[("sparrow_torch", b, v)], cells[("full_torch", b, v)]
            cols.append(f"{s:.3f} ms | {f:.2f} ms | {f / s:.0f}x")
        rows.append(f"| {v:,} | " + " | ".join(cols) + " |")
    hw = d["hardware"]
    c = d["config"]
    return "\n".join(rows) + (f"\n\nMedians; {hw['cpu_model']}, {hw['cpu_count']} cores, torch {hw['torch_version']}, "
                              f"{c['dtype']}, W={c['window_size']}, {c['num_q_heads']}/{c['num_kv_heads']} heads, "
                              f"head_dim {c['head_dim']}, one decode query per sequence.")


def _results(name: str, arch: str) -> Path:
    return RESULTS / (f"{name}.json" if arch == DEFAULT_ARCH else f"{name}_{arch}.json")


DEFAULT_ARCH = "qwen2.5-vl"


def _pct(x: float) -> str:
    """A share as a percentage to one decimal, without a trailing ``.0`` (0.805 -> 80.5%)."""
    return f"{100 * x:.1f}".removesuffix(".0") + "%"


def target(arch: str = DEFAULT_ARCH) -> str:
    """Table of the target's accuracy by video length; also writes its plot
    (``target_quality[_ARCH].png``: exact, facts and form accuracy against visual tokens)."""
    from sparrow_vllm.families import get_family
    from sparrow_vllm.target.build import file_sha256

    rows = json.loads((RESULTS / "target_quality.json").read_text())
    rows = [r for r in rows if r.get("family", DEFAULT_ARCH) == arch]
    parts = get_family(arch).vision_parts_path()
    current = file_sha256(parts) if parts.exists() else None
    stale = [r for r in rows if r.get("target_stamp", {}).get("vision_parts_sha256", current) != current]
    rows = [r for r in rows if r not in stale]
    out = ["| split | visual tokens | samples | exact | facts | form | answered by |",
           "|---|---|---|---|---|---|---|"]
    for r in rows:
        form = _pct(r["form_accuracy"]) if "form_accuracy" in r else "-"
        out.append(f"| {r['split']} | {r['visual_tokens']:,} | {r['n']} | {_pct(r['exact_accuracy'])} "
                   f"| {_pct(r['facts_accuracy'])} | {form} | {r.get('engine', 'vllm')} |")
    if stale:
        lengths = ", ".join(f"{r['visual_tokens']:,}" for r in stale)
        out.append(f"\n({len(stale)} rows measured on other vision parts than the committed ones left out: "
                   f"{lengths} visual tokens)")
    _plot_target(rows, _results("target_quality", arch).with_suffix(".png"), arch)
    return "\n".join(out)


def _plot_target(rows: list[dict], path: Path, arch: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    for split in sorted({r["split"] for r in rows}):
        rs = sorted((r for r in rows if r["split"] == split), key=lambda r: r["visual_tokens"])
        x = [r["visual_tokens"] for r in rs]
        ax.plot(x, [100 * r["exact_accuracy"] for r in rs], "o-", label=f"{split}: exact")
        ax.plot(x, [100 * r["facts_accuracy"] for r in rs], "s--", label=f"{split}: facts")
        if all("form_accuracy" in r for r in rs):
            ax.plot(x, [100 * r["form_accuracy"] for r in rs], "^:", label=f"{split}: form (keeps the template)")
        for r in rs:
            ax.annotate(f"n={r['n']}", (r["visual_tokens"], 100 * r["exact_accuracy"]), fontsize=7,
                        textcoords="offset points", xytext=(0, 6), ha="center")
    ax.set_xscale("log")
    ax.set_ylim(0, 100)
    ax.set_xlabel("visual tokens per video")
    ax.set_ylabel("greedy answers correct (%)")
    ax.set_title(f"embedded {arch} target on SparrowWorld (vLLM, CPU)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def drafts(arch: str = DEFAULT_ARCH) -> str:
    """eval-draft reports collected in results/draft_eval[_ARCH].json (a list of eval-draft JSONs)."""
    reports = json.loads(_results("draft_eval", arch).read_text())
    ks = sorted({int(k) for r in reports for k in r["results"]})
    out = ["| draft | attention | anchor layers | visual tokens | samples | " + " | ".join(f"tau k={k}" for k in ks)
           + " | acceptance per position (k=%d) |" % ks[-1],
           "|---|---|---|---|---|" + "---|" * len(ks) + "---|"]
    for r in reports:
        res = r["results"]
        taus = " | ".join(f"{res[str(k)]['tau']:.2f}" for k in ks)
        acc = ", ".join(f"{a:.2f}" for a in res[str(ks[-1])]["acceptance_per_position"])
        name = Path(r["draft"]).name
        out.append(f"| {name} | {r['attention']} | {r['anchor_layers']} | {r['visual_tokens']:,} | {r['samples']} | {taus} | {acc} |")
    return "\n".join(out)


def per_video(name: str = "draft_study_test25k16", split_at: str | None = None) -> str:
    """tau at the largest k of every report in results/NAME.json (a list of eval-draft reports),
    for the answers that ran to the token cap (loops, drifting text) and the others apart;
    ``split_at`` N: also the first N samples and the rest (a test set grown by later samples)."""
    reports = json.loads((RESULTS / f"{name}.json").read_text())
    k = str(max(int(k) for r in reports for k in r["results"]))

    def tau(samples: list[dict]) -> str:
        rounds = sum(len(s["accepted"][k]) for s in samples)
        accepted = sum(sum(s["accepted"][k]) for s in samples)
        return f"{1 + accepted / rounds:.2f} ({rounds})" if rounds else "-"

    head = f"| draft | samples | tau k={k} (rounds) | answers at the token cap | other answers |"
    if split_at is not None:
        n = int(split_at)
        head += f" first {n} samples | the others |"
    out = [head, "|---" * (head.count("|") - 1) + "|"]
    for r in reports:
        ps = r["per_sample"]
        cap = r["max_new_tokens"] - 1  # the first answer token comes from prefill
        capped = [s for s in ps if s["to_generate"] >= cap]
        row = (f"| {Path(r['draft']).name} | {len(ps)} | {tau(ps)} | {len(capped)}: {tau(capped)} | "
               f"{tau([s for s in ps if s['to_generate'] < cap])} |")
        if split_at is not None:
            row += f" {tau(ps[:n])} | {tau(ps[n:])} |"
        out.append(row)
    return "\n".join(out)


def study(name: str = "draft_study_lengths", *plotted: str) -> str:
    """The draft study (``python -m sparrow_vllm.draft.study ... --out results/NAME.json``) as a
    markdown table; also plots tau at the largest k against video length, one line per draft
    (only the ``plotted`` drafts when named; ``results/NAME.png``; the always-right draft's
    ceiling dotted)."""
    from sparrow_vllm.draft.study import markdown

    path = RESULTS / f"{name}.json"
    rows = json.loads(path.read_text())["rows"]
    _plot_study([r for r in rows if not plotted or r["draft"] in plotted], path.with_suffix(".png"))
    return markdown(rows)


def _plot_study(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    k = max((k for r in rows for k in r["tau"]), key=int)
    fig, ax = plt.subplots(figsize=(6.8, 3.8))
    ceiling = {}
    for draft in sorted(dict.fromkeys(r["draft"] for r in rows), key=lambda d: ("short" in d, d)):
        rs = sorted((r for r in rows if r["draft"] == draft and k in r["tau"]), key=lambda r: r["visual_tokens"])
        if len(rs) < 2:
            continue
        style = "o-" if rs[0]["recipe"] == "sparrow" else "s--"
        ax.plot([r["visual_tokens"] for r in rs], [r["tau"][k] for r in rs], style, label=draft)
        ceiling.update({r["visual_tokens"]: r["tau_oracle"][k] for r in rs})
    xs = sorted(ceiling)
    ax.plot(xs, [ceiling[x] for x in xs], "k:", label="always-right draft")
    ax.set_xscale("log")
    ax.set_ylim(1, None)
    ax.set_xlabel("visual tokens per video")
    ax.set_ylabel(f"mean accepted length tau (k={k})")
    ax.set_title("drafts on the embedded Qwen2.5-VL target (sparrow eval-draft, CPU)")
    _save(fig, ax, path)


def _save(fig, ax, path: Path, legend_outside: bool = False) -> None:
    """Grid, a small legend (right of the axes when ``legend_outside``), tight layout: the study
    plots' common finish."""
    import matplotlib.pyplot as plt

    ax.grid(alpha=0.3)
    if legend_outside:
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    else:
        ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def window(name: str = "window_study") -> str:
    """The window study (drafts trained at several W on the long tasks, ``sparrow eval-draft``
    reports collected by ``python -m sparrow_vllm.draft.study``) as a table; also plots tau at the
    largest k against W, one line per test set, EAGLE-3 (no window) dashed (``results/NAME.png``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from sparrow_vllm.draft.study import markdown

    path = RESULTS / f"{name}.json"
    rows = json.loads(path.read_text())["rows"]
    k = max((k for r in rows for k in r["tau"]), key=int)
    fig, ax = plt.subplots(figsize=(9.5, 4.0))
    anchors = min((r["anchor_layers"] for r in rows if r["eval_window"]), key=len, default=None)
    for data in sorted({r["data"] for r in rows}):
        sp = sorted((r for r in rows if r["data"] == data and r["eval_window"] and r["anchor_layers"] == anchors),
                    key=lambda r: r["eval_window"])
        line, = ax.plot([r["eval_window"] for r in sp], [r["tau"][k] for r in sp], "o-", label=f"sparrow, {data}")
        for r in rows:  # EAGLE-3 (no window) dashed; a Sparrow draft of other anchors a cross
            if r["data"] == data and r["eval_window"] is None:
                ax.axhline(r["tau"][k], ls="--", color=line.get_color(), lw=1, label=f"eagle3, {data}")
            elif r["data"] == data and r["anchor_layers"] != anchors:
                ax.plot([r["eval_window"]], [r["tau"][k]], "x", ms=8, color=line.get_color(),
                        label=f"sparrow, anchors {','.join(map(str, r['anchor_layers']))}, {data}")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("draft window W (text tokens; trained and served)")
    ax.set_ylabel(f"mean accepted length tau (k={k})")
    ax.set_title("window study, long tasks (sparrow eval-draft, CPU)")
    _save(fig, ax, path.with_suffix(".png"), legend_outside=True)
    rows = sorted(rows, key=lambda r: (r["data"], r["eval_window"] or 1 << 30))
    split = [r for r in rows if "tau_by_text_place" in r]
    if not split:
        return markdown(rows)
    at, ks = split[0]["tau_by_text_place"]["at"], split[0]["tau_by_text_place"]["k"]
    out = [markdown(rows), "", f"tau (k={ks}) by where the answer lies in the request's text:", "",
           f"| data | draft | W | answers inside the first {at} text tokens: tau (rounds) "
           f"| answers past them: tau (rounds) |", "|---|---|---|---|---|"]
    for r in split:
        t = r["tau_by_text_place"]
        cell = lambda p: "-" if t[p]["tau"] is None else f"{t[p]['tau']:.2f} ({t[p]['rounds']})"  # noqa: E731
        out.append(f"| {r['data']} | {r['draft']} | {r['eval_window'] or 'full'} | {cell('inside')} | {cell('past')} |")
    return "\n".join(out)


def tau() -> str:
    """benchmarks/check_tau.py results (results/check_tau_*.json): vLLM vs eval-draft."""
    out = ["| visual tokens | samples | vLLM output == transformers output | tau in vLLM | tau in eval-draft | gap |",
           "|---|---|---|---|---|---|"]
    for f in sorted(RESULTS.glob("check_tau_*.json"), key=lambda f: json.loads(f.read_text())["visual_tokens"]):
        r = json.loads(f.read_text())
        a = r["summary"]["all"]
        same = sum(x["same_output"] for x in r["per_sample"])
        out.append(f"| {r['visual_tokens']:,} | {a['samples']} | {same}/{a['samples']} | {a['tau_vllm']:.3f} | "
                   f"{a['tau_eval_draft']:.3f} | {a['relative_gap']:+.1%} |")
    return "\n".join(out)


def offline(arch: str = DEFAULT_ARCH) -> str:
    """benchmarks/bench_offline.py: one row per (visual tokens, batch), methods side by side."""
    d = json.loads(_results("bench_offline", arch).read_text())
    rows = {m: {(r["visual_tokens"], r["batch"]): r for r in rs} for m, rs in d["methods"].items()}
    out = ["| visual tokens | batch | none: decode tok/s | eagle3: tau / speedup | sparrow: tau / speedup | "
           "draft share of time: eagle3 / sparrow | sparrow: bound tau/(1+kc) | sparrow: verify step / plain step |",
           "|---|---|---|---|---|---|---|---|"]

    def ts(r):
        return f"{r['mean_accepted_length'] or 1:.2f} / {r.get('speedup_vs_none', 0):.2f}x" if r else "-"

    for key in sorted(rows.get("none", {})):
        n, e, sp = rows["none"][key], rows.get("eagle3", {}).get(key), rows.get("sparrow", {}).get(key)
        share = " / ".join(f"{r['draft_share']:.0%}" if r and r.get("draft_share") else "-" for r in (e, sp))
        bound = f"{sp['speedup_bound']:.2f}x" if sp and sp.get("speedup_bound") else "-"
        ver = f"{sp['verify_over_plain_step']:.2f}x" if sp and sp.get("verify_over_plain_step") else "-"
        out.append(f"| {key[0]:,} | {key[1]} | {n['decode_tok_s']:.1f} | {ts(e)} | {ts(sp)} | {share} | {bound} | {ver} |")
    hw = d["hardware"]
    out.append(f"\n{hw.get('cpu')}, {hw.get('cores')} cores; {hw.get('note')}; k={d['config']['k']}, greedy, "
               f"max_tokens {d['config']['max_tokens']}.")
    return "\n".join(out)


def serve(arch: str = DEFAULT_ARCH) -> str:
    """benchmarks/bench_serve.py: one row per method and concurrency."""
    d = json.loads(_results("bench_serve", arch).read_text())
    out = ["| method | concurrency | requests | TTFT (median) | TPOT (median) | output tok/s | tau | "
           "throughput vs none |", "|---|---|---|---|---|---|---|---|"]
    for method, levels in d["methods"].items():
        for r in levels:
            tau = f"{r['mean_accepted_length']:.2f}" if r.get("mean_accepted_length") else "-"
            out.append(f"| {method} | {r['concurrency']} | {r['completed']}/{r['requests']} | {r['ttft_s_median']:.2f} s | "
                       f"{r['tpot_s_median'] * 1e3:.0f} ms | {r['output_throughput_tok_s']:.1f} | {tau} | "
                       f"{r.get('throughput_ratio_vs_none', 1.0):.2f} |")
    g = d["greedy_mismatches"]
    hw = d["hardware"]
    out.append(f"\nGreedy outputs differing from no speculation: "
               + ", ".join(f"{m} {g['mismatches'][m]}/{g['compared'][m]}" for m in g["mismatches"])
               + f". {hw['cpu']}, {hw['cores']} cores, vLLM {hw['vllm']}, torch {hw['torch']}; {hw['note']}")
    return "\n".join(out)


def reliability(name: str = "reliability") -> str:
    """benchmarks/bench_load.py: concurrent streams with client aborts against vllm serve."""
    d = json.loads((RESULTS / f"{name}.json").read_text())
    f, c = d["figures"], d["config"]
    return (f"| requests | in flight | served | aborted by the client | errors | mismatches vs no speculation | "
            f"left in the engine | load time |\n|---|---|---|---|---|---|---|---|\n"
            f"| {f['requests']} | {c['concurrency']} | {f['served']} | {f['aborted']} | {f['errors']} | "
            f"{f['mismatches']} | {int(f['requests_left_in_engine'])} | {f['load_s']:.0f} s |\n\n"
            f"Videos of {c['visual_tokens_range'][0]:,}-{c['visual_tokens_range'][1]:,} visual tokens, "
            f"k={'auto' if c.get('auto') else c['k']}, max_tokens {c['max_tokens']}, max_num_seqs "
            f"{c['max_num_seqs']}, server alive afterwards: {f['server_alive_after_load']}.")


def compiled(name: str = "compiled_vs_eager") -> str:
    """benchmarks/bench_compiled.py: Sparrow in vLLM's default compiled mode against eager."""
    d = json.loads((RESULTS / f"{name}.json").read_text())
    c, e = d["config"], d["engines"]
    names = {"none_compiled": "no speculation, compiled", "sparrow_eager": "Sparrow, eager (`--enforce-eager`)",
             "sparrow_compiled": "Sparrow, compiled (vLLM's default)",
             "sparrow_compiled_draft_eager": "Sparrow, compiled target, eager draft"}
    rows = ["| engine | tau (k=%d) | tau / eager's | outputs equal to no speculation | draft ms per step | "
            "decode tok/s | speedup vs none |" % c["k"], "|---|---|---|---|---|---|---|"]
    for key, label in names.items():
        r = e[key]
        tau = f"{r['mean_accepted_length']:.3f}" if r["mean_accepted_length"] else "-"
        ratio = f"{r['tau_vs_eager']:.3f}" if r.get("tau_vs_eager") else "-"
        draft = f"{r['draft_ms_per_call']:.1f}" if r.get("draft_ms_per_call") else "-"
        rows.append(f"| {label} | {tau} | {ratio} | {r['same_outputs_as_none']}/{r['requests']} | {draft} | "
                    f"{r['decode_tok_s']:.1f} | {r['speedup_vs_none_compiled']:.2f}x |")
    hw = d["hardware"]
    return "\n".join(rows) + (f"\n\n{c['requests']} requests at {c['visual_tokens']:,} visual tokens, batch {c['batch']}, "
                              f"greedy, {e['none_compiled']['output_tokens']:,} output tokens per engine"
                              + ("" if c.get("stop_at_eos") else " (every request decodes max_tokens, past its end token)")
                              + f"; {hw['cpu']}, {hw['cores']} cores, vLLM {hw['vllm']}.")


def summary(arch: str = DEFAULT_ARCH) -> str:
    """The README's one table per family: EAGLE-3 against Sparrow, from draft_eval, bench_offline
    and bench_serve (``[_ARCH].json``), plus the draft attention cost from bench_kernels
    (Qwen2.5-VL only: the kernel benchmark is not run per family)."""
    names = {"full": "eagle3", "text_window": "sparrow"}
    out = ["| measure | EAGLE-3 (full context) | Sparrow (text only) |", "|---|---|---|"]
    evals = {}
    for r in json.loads(_results("draft_eval", arch).read_text()):
        k = str(max(int(k) for k in r["results"]))
        evals.setdefault(r["visual_tokens"], {})[names[r["attention"]]] = (k, r["results"][k]["tau"])
    for v, m in sorted(evals.items()):
        k = m["sparrow"][0]
        out.append(f"| tau offline (eval-draft, k={k}), {v:,} visual tokens | {m['eagle3'][1]:.2f} | {m['sparrow'][1]:.2f} |")
    d = json.loads(_results("bench_offline", arch).read_text())
    b1 = {m: {r["visual_tokens"]: r for r in rs if r["batch"] == 1} for m, rs in d["methods"].items()}
    for v in sorted(b1["sparrow"]):
        e, sp = b1["eagle3"][v], b1["sparrow"][v]
        out.append(f"| decode speedup vs none, offline batch 1, {v:,} visual tokens | "
                   f"{e['speedup_vs_none']:.2f}x | {sp['speedup_vs_none']:.2f}x |")
    v = max(b1["sparrow"])
    out.append(f"| draft share of decode time, offline batch 1, {v:,} visual tokens | "
               f"{b1['eagle3'][v]['draft_share']:.0%} | {b1['sparrow'][v]['draft_share']:.0%} |")
    d = json.loads(_results("bench_serve", arch).read_text())
    levels = [r["concurrency"] for r in d["methods"]["sparrow"]]
    none = {r["concurrency"]: r for r in d["methods"]["none"]}

    def serve_row(method: str, key: str, fmt) -> str:
        return " / ".join(fmt(r[key]) for r in d["methods"][method])

    out.append(f"| serving throughput vs none, concurrency {' / '.join(map(str, levels))} | "
               f"{serve_row('eagle3', 'throughput_ratio_vs_none', '{:.2f}'.format)} | "
               f"{serve_row('sparrow', 'throughput_ratio_vs_none', '{:.2f}'.format)} |")
    c = levels[0]
    ms = {m: next(r for r in d["methods"][m] if r["concurrency"] == c)["tpot_s_median"] * 1e3 for m in ("eagle3", "sparrow")}
    out.append(f"| serving TPOT median, concurrency {c} (none: {none[c]['tpot_s_median'] * 1e3:.0f} ms) | "
               f"{ms['eagle3']:.0f} ms | {ms['sparrow']:.0f} ms |")
    g = d["greedy_mismatches"]
    out.append("| serving greedy outputs differing from no speculation | "
               + " | ".join(f"{g['mismatches'][m]}/{g['compared'][m]}" for m in ("eagle3", "sparrow")) + " |")
    if arch == DEFAULT_ARCH:
        k = json.loads((RESULTS / "bench_kernels.json").read_text())
        v = 25000 if 25000 in k["config"]["visual_tokens"] else max(k["config"]["visual_tokens"])
        cell = {r["method"]: r["median_ms"] for r in k["results"] if r["batch"] == 1 and r["num_visual"] == v}
        out.append(f"| draft attention per decode step, {v:,} visual tokens, batch 1 | "
                   f"{cell['full_torch']:.2f} ms | {cell['sparrow_torch']:.3f} ms |")
    return "\n".join(out)


def _long_groups(cells: list[dict]) -> dict[tuple, list[dict]]:
    """Batch-1 cells by (target, engine, task, visual tokens, method, draft): their repeats."""
    groups: dict[tuple, list[dict]] = {}
    for c in cells:
        if c["batch"] == 1:
            key = (c["target"], c["engine"], c["task"], c["visual_tokens"], c["method"], c["draft"])
            groups.setdefault(key, []).append(c)
    return groups


def _mean_range(xs: list[float], fmt: str = ".2f", unit: str = "") -> str:
    """``x`` for one value; ``mean (lo-hi)`` over repeats."""
    m = sum(xs) / len(xs)
    if len(xs) == 1:
        return f"{m:{fmt}}{unit}"
    return f"{m:{fmt}}{unit} ({min(xs):{fmt}}-{max(xs):{fmt}}{unit})"


REPEATS_NOTE = "Where a cell ran more than once (`--repeats`): mean (range) over its repeats."


def long(path: str | None = None) -> str:
    """benchmarks/bench_long.py: one row per (task, visual tokens), methods side by side; also
    writes its plot (``<file>.png``: tau and decode speedup vs visual tokens, per task)."""
    path = Path(path) if path else RESULTS / "long_workloads.json"
    d = json.loads(path.read_text())
    groups = _long_groups(d["cells"])
    cells = {key[:5]: g for key, g in groups.items() if key[4] != "sparrow"}  # none, eagle3: one draft each
    drafts = {}  # a row per Sparrow draft measured at a point
    for key, g in groups.items():
        if key[4] == "sparrow":
            drafts.setdefault(key[:4], []).append(g)
    out = ["| target | engine | task | visual tokens | requests / output tokens | none: decode tok/s "
           "| eagle3: tau / speedup | sparrow draft | sparrow: tau / speedup | sparrow vs eagle3 "
           "| greedy mismatches (eagle3 / sparrow) | request latency, median s (none / eagle3 / sparrow) |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    crossed = []

    def ts(g, n):
        if not (g and all(c.get("speedup_vs_none") for c in g)):
            return "-"
        tau = sum(c["tau"] or 1 for c in g) / len(g)
        return f"{tau:.2f} / {_mean_range([c['speedup_vs_none'] for c in g], unit='x')}{_cross_run(g, n, crossed)}"

    for tg, engine, task, v in sorted({key[:4] for key in cells} | set(drafts)):
        n, e = (cells.get((tg, engine, task, v, m)) for m in ("none", "eagle3"))
        for sp in sorted(drafts.get((tg, engine, task, v), [None]), key=lambda g: g and g[0]["draft"]):
            first = (n or e or sp)[0]
            vs = (_mean_range([c["speedup_vs_eagle3"] for c in sp], unit="x") + _cross_run(sp, e, crossed)
                  if sp and all(c.get("speedup_vs_eagle3") for c in sp) else "-")
            mm = " / ".join(str(sum(c["greedy_mismatches"] for c in g)) if g and all("greedy_mismatches" in c for c in g)
                            else "-" for g in (e, sp))
            plain = _mean_range([c["decode_tok_s"] for c in n], ".1f") if n and all(c["decode_tok_s"] for c in n) else "-"
            lat = " / ".join(f"{sum(c['e2e_s_median'] for c in g) / len(g):.2f}" if g else "-" for g in (n, e, sp))
            name = Path(sp[0]["draft"]).name if sp else "-"
            out.append(f"| {Path(tg).name} | {engine} | {task} | {v:,} | {first['requests']} / "
                       f"{first['output_tokens']:,} | {plain} | {ts(e, n)} | {name} | {ts(sp, n)} | {vs} | {mm} | {lat} |")
    if crossed:
        out.append("\n" + CROSS_RUN)
    if any(len(g) > 1 for g in groups.values()):
        out.append("\n" + REPEATS_NOTE)
    hw = d["hardware"]
    out.append(f"\n{hw.get('cpu')}, {hw.get('cores')} cores; {hw.get('note')}; batch 1, greedy; "
               + "; ".join(f"`{c}`" for c in dict.fromkeys(c["command"] for c in d["cells"])) + ".")
    _plot_long(d["cells"], path.with_suffix(".png"))
    return "\n".join(out)


def long_lengths(path: str | None = None) -> str:
    """benchmarks/bench_long.py by video length: one row per (task, method, draft), tau and
    speedup at every length measured, and the longest length's tau over the 1k one."""
    path = Path(path) if path else RESULTS / "long_workloads.json"
    d = json.loads(path.read_text())
    groups = _long_groups(d["cells"])
    none = {key[:4]: g for key, g in groups.items() if key[4] == "none"}
    rows: dict[tuple, dict[int, list[dict]]] = {}
    for (tg, engine, task, v, m, dr), g in groups.items():
        if m != "none":
            rows.setdefault((tg, engine, task, m, dr), {})[v] = g
    out = ["| target | engine | task | method (draft) | visual tokens | tau | decode speedup vs none "
           "| tau, longest / shortest |", "|---|---|---|---|---|---|---|---|"]
    crossed = []
    for (tg, engine, task, m, dr), by_v in sorted(rows.items()):
        vs = sorted(by_v)
        tau = [sum(c["tau"] or 1 for c in by_v[v]) / len(by_v[v]) for v in vs]
        keep = f"{tau[-1] / tau[0]:.2f}" if len(vs) > 1 else "-"
        speed = [_mean_range([c.get("speedup_vs_none") or 0 for c in by_v[v]], unit="x")
                 + _cross_run(by_v[v], none.get((tg, engine, task, v)), crossed) for v in vs]
        out.append(f"| {Path(tg).name} | {engine} | {task} | {m} ({Path(dr).name}) | "
                   + " / ".join(f"{v:,}" for v in vs) + " | " + " / ".join(f"{t:.2f}" for t in tau) + " | "
                   + " / ".join(speed) + f" | {keep} |")
    if crossed:
        out.append("\n" + CROSS_RUN)
    if any(len(g) > 1 for g in groups.values()):
        out.append("\n" + REPEATS_NOTE)
    hw = d["hardware"]
    out.append(f"\n{hw.get('cpu')}, {hw.get('cores')} cores; {hw.get('note')}; batch 1, greedy, k = 5.")
    return "\n".join(out)


CROSS_RUN = ("\\* a ratio across two runs of `bench_long.py` (the cell and the one it is compared with ran "
             "in separate runs): step times move between runs, so it says less than one measured side by side.")


def _cross_run(group: list[dict], ref: list[dict] | None, crossed: list) -> str:
    """``*`` when a cell's ratio to ``ref`` is across runs (not side by side in one run)."""
    if not ref or ref[0]["command"] == group[0]["command"]:
        return ""
    crossed.append(group)
    return "\\*"


def _plot_long(cells: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = sorted({c["task"] for c in cells})
    targets = sorted({c["target"] for c in cells})
    lines = sorted({(c["target"], c["method"], c["draft"]) for c in cells if c["method"] != "none"})
    styles = ["s--", "o-", "^-", "s:", "o-.", "^:"] * len(lines)
    fig, axes = plt.subplots(2, len(tasks), figsize=(4 * len(tasks), 6), squeeze=False)
    for j, task in enumerate(tasks):
        for (tg, m, dr), style in zip(lines, styles):
            by_v: dict[int, list[dict]] = {}  # repeats of a length: their mean
            for c in cells:
                if (c["task"] == task and c["method"] == m and c["batch"] == 1 and c["engine"] == "offline"
                        and c["target"] == tg and c["draft"] == dr):
                    by_v.setdefault(c["visual_tokens"], []).append(c)
            x = sorted(by_v)
            mean = lambda f: [sum(f(c) for c in by_v[v]) / len(by_v[v]) for v in x]  # noqa: E731
            label = f"{m} ({Path(dr).name})" + ("" if len(targets) == 1 else f", {Path(tg).name}")
            axes[0][j].plot(x, mean(lambda c: c["tau"] or 1), style, label=label)
            axes[1][j].plot(x, mean(lambda c: c.get("speedup_vs_none") or 0), style, label=label)
        axes[0][j].set_title(task)
        for ax in axes[:, j]:
            ax.set_xscale("log")
            ax.set_xlabel("visual tokens")
        axes[0][j].set_ylabel("tau (k=5)")
        axes[1][j].set_ylabel("decode speedup vs none")
        axes[1][j].axhline(1.0, color="grey", lw=0.5)
    axes[0][0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def target_long(name: str = "target_quality_long") -> str:
    """eval-target --task narrate/chat/stream (results/<name>.json)."""
    rows = json.loads((RESULTS / f"{name}.json").read_text())
    out = ["| task | visual tokens | samples / turns | exact per turn | event recall | event precision "
           "| output tokens (mean) |", "|---|---|---|---|---|---|---|"]
    f = lambda x: "-" if x is None else f"{x:.2f}"  # noqa: E731
    for r in sorted(rows, key=lambda r: (r["task"], r["visual_tokens"])):
        out.append(f"| {r['task']} | {r['visual_tokens']:,} | {r['n']} / {r['turns']} | {_pct(r['exact_per_turn'])} "
                   f"| {f(r['event_recall'])} | {f(r['event_precision'])} | {r['output_tokens_mean']:.0f} |")
    return "\n".join(out)


def own_data() -> str:
    """benchmarks/bench_own_data.py: a draft trained on a user's own videos against the committed one."""
    d = json.loads((RESULTS / "own_data.json").read_text())
    out = ["| draft | test videos | tau k=5 offline (eval-draft) | tau k=5 in vLLM | acceptance per position (vLLM) |",
           "|---|---|---|---|---|"]
    for name, e in d["evals"].items():
        v = d["through_vllm"][name]
        draft, test = name.split(" on ")
        out.append(f"| {draft.replace('own draft', 'own-video draft')} | {e['samples']} {test} | {e['tau_k5']:.2f} "
                   f"| {v['tau']:.2f} | {', '.join(f'{a:.2f}' for a in v['acceptance_per_position'])} |")
    out.append("")
    out.append(f"Own-video draft / committed draft, each on its own test set: {d['own_vs_committed_k5_through_vllm']:.2f}x "
               f"in vLLM ({d['own_vs_committed_k5']:.2f}x offline). Extraction `--from` through vLLM: "
               f"{d['extraction_min_per_1k_samples']:.0f} min per 1k samples, "
               f"{d['disk_bytes_per_sample'] / 1e3:.0f} KB a sample ({len(d['anchor_layers_stored'])} anchor layers "
               f"of a {d['target']} target, fp16, text positions only); {d['hardware'].get('cpu', 'CPU')}, "
               f"{d['hardware'].get('cores', '?')} cores.")
    return "\n".join(out)


def _workload(c: dict) -> tuple[str, str]:
    """A bench_adaptive_k.py cell's (task, target); a cell written before there were several
    is qa on the embedded target."""
    return c.get("task", "qa"), c.get("target", "embedded")


def _adaptive_workloads(d: dict) -> dict:
    """bench_adaptive_k.py's results by workload (:func:`_workload`: its cells and config; the
    configs are keyed "TASK TARGET"); a file of one workload (``config``) holds qa on the
    embedded target."""
    configs = d.get("configs") or {"qa embedded": d.get("config", {})}
    out = {}
    for c in d["cells"]:
        w = _workload(c)
        out.setdefault(w, {"config": configs.get(" ".join(w), {}), "cells": []})["cells"].append(c)
    return out


def adaptive_k(name: str = "adaptive_k", metric: str = "speedup_vs_none") -> str:
    """benchmarks/bench_adaptive_k.py: speedup vs no speculation per (visual tokens, batch) for
    fixed k = 5, the best fixed k and auto (mean and range over repeats); also writes its plot.
    ``metric``: ``speedup_vs_none`` (decode steps) or ``end_to_end_vs_none`` (prefill in). With
    more than one workload (task, target) in the file, a row names its workload."""
    d = json.loads((RESULTS / f"{name}.json").read_text())
    workloads = _adaptive_workloads(d)
    several = len(workloads) > 1
    head = "| task | target " if several else ""
    k_maxes = {w["config"].get("k_max", 5) for w in workloads.values()}
    k_label = f"fixed k={k_maxes.pop()}" if len(k_maxes) == 1 else "fixed k=k_max"
    out = [f"{head}| visual tokens | batch | requests | {k_label} | best fixed (k) | auto | auto's k per decode step |",
           "|---" * (7 + 2 * several) + "|"]
    for wname, w in sorted(workloads.items()):
        cells, k_max = w["cells"], w["config"].get("k_max", 5)
        points = sorted({(c["visual_tokens"], c["batch"]) for c in cells})

        def at(vt, b, method, k=None):
            return [c for c in cells if c["visual_tokens"] == vt and c["batch"] == b and c["method"] == method
                    and (k is None or c.get("k") == k) and c.get(metric) is not None]

        def fmt(xs):
            if not xs:
                return "-"
            v = [c[metric] for c in xs]
            m = sum(v) / len(v)
            return f"{m:.2f}x" + (f" ({min(v):.2f}-{max(v):.2f})" if len(v) > 1 else "")

        row = "| " + " | ".join(wname) + " " if several else ""
        for vt, b in points:
            best, auto = at(vt, b, "best_fixed"), at(vt, b, "auto")
            ks = sorted({c["k"] for c in best})
            hist = {}
            for c in auto:
                for k, n in (c.get("k_steps") or {}).items():
                    hist[k] = hist.get(k, 0) + n
            total = sum(hist.values()) or 1
            steps = ", ".join(f"k={k}: {100 * n / total:.0f}%" for k, n in sorted(hist.items(), key=lambda x: int(x[0])))
            req = (at(vt, b, "none") or [{}])[0].get("requests", "-")
            out.append(f"{row}| {vt:,} | {b} | {req} | {fmt(at(vt, b, 'fixed', k_max))} | {fmt(best)} "
                       f"({'/'.join(map(str, ks))}) | {fmt(auto)} | {steps or '-'} |")
        if metric == "speedup_vs_none":
            suffix = "" if wname == ("qa", "embedded") else "_" + "_".join(
                Path(x).name for x in wname).replace("-", "_")
            _plot_adaptive(cells, points, k_max, RESULTS / f"{name}{suffix}.png")
    per_point = {}  # the repeats each point ran
    for c in d["cells"]:
        per_point.setdefault((*_workload(c), c["visual_tokens"], c["batch"]), set()).add(c["repeat"])
    reps = sorted({len(r) for r in per_point.values()})
    out.append("")
    what = ("decode tokens/s over no speculation's at the same point" if metric == "speedup_vs_none" else
            "end-to-end tokens/s (prefill included) over no speculation's at the same point")
    said = ("one repeat" if reps == [1] else f"mean (range) of {reps[0]} repeats" if len(reps) == 1 else
            f"mean (range) of the repeats a point ran ({reps[0]}-{reps[-1]})")
    out.append(f"Speedup: {what}, one run, {said}; "
               f"{d['hardware'].get('cpu', 'CPU')}, {d['hardware'].get('cores', '?')} cores, CPU.")
    return "\n".join(out)


def _plot_adaptive(cells, points, k_max, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lengths = sorted({vt for vt, _ in points})
    fig, axes = plt.subplots(1, len(lengths), figsize=(5 * len(lengths), 3.6), squeeze=False)
    for ax, vt in zip(axes[0], lengths):
        batches = sorted(b for v, b in points if v == vt)
        for method, k, style in (("fixed", k_max, "s--"), ("best_fixed", None, "^:"), ("auto", None, "o-")):
            ys = []
            for b in batches:
                v = [c["speedup_vs_none"] for c in cells if c["visual_tokens"] == vt and c["batch"] == b
                     and c["method"] == method and (k is None or c.get("k") == k) and c.get("speedup_vs_none")]
                ys.append(sum(v) / len(v) if v else float("nan"))
            ax.plot(batches, ys, style, label=f"fixed k={k_max}" if method == "fixed" else method.replace("_", " "))
        ax.axhline(1.0, color="grey", lw=0.8)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("batch")
        ax.set_title(f"{vt:,} visual tokens")
    axes[0][0].set_ylabel("speedup vs no speculation")
    axes[0][0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def block_drop(name: str = "adaptive_k") -> str:
    """bench_adaptive_k.py's ``fixed_block_drop`` engine against fixed k of the same k: a Sparrow
    engine reusing each request's last cached KV block (its default) or re-prefilling it
    (vLLM's EAGLE default), end to end and over the decode steps, with tau."""
    d = json.loads((RESULTS / f"{name}.json").read_text())
    cells = d["cells"]
    drops = [c for c in cells if c["method"] == "fixed_block_drop"]
    several = len({_workload(c) for c in drops}) > 1
    out = [("| task | target " if several else "") + "| visual tokens | batch | requests | k | end to end: reused / "
           "re-prefilled | decode: reused / re-prefilled | tau: reused / re-prefilled |", "|---" * (7 + 2 * several) + "|"]
    pairs = {}  # (workload, visual tokens, batch, k) -> [(fixed, block drop)] over the repeats
    for c in drops:
        same = [x for x in cells if x["method"] == "fixed" and x["k"] == c["k"] and x["repeat"] == c["repeat"]
                and x["visual_tokens"] == c["visual_tokens"] and x["batch"] == c["batch"] and _workload(x) == _workload(c)]
        if same:
            pairs.setdefault((_workload(c), c["visual_tokens"], c["batch"], c["k"]), []).append((same[0], c))
    for (workload, vt, batch, k), got in sorted(pairs.items()):
        def col(key, unit="x"):  # mean (range) over the repeats; one figure where they agree
            xs = [[p[i][key] for p in got] for i in (0, 1)]
            return " / ".join(_mean_range(x if len(set(x)) > 1 else x[:1], ".2f", unit) for x in xs)

        out.append(("| " + " | ".join(workload) + " " if several else "")
                   + f"| {vt:,} | {batch} | {got[0][1]['requests']} | {k} | {col('end_to_end_vs_none')} | "
                   f"{col('speedup_vs_none')} | {col('tau', '')} |")
    out.append("")
    out.append("Speedup over no speculation at the same point (the mean of its repeats), the repeats "
               "that ran both engines, one run, mean (range) where several; "
               f"{d['hardware'].get('cpu', 'CPU')}, {d['hardware'].get('cores', '?')} cores, CPU.")
    return "\n".join(out)


def per_request_stop(arch: str = DEFAULT_ARCH) -> str:
    """Would stopping one request's drafts after a bad first round pay? From eval-draft's
    per-sample rounds at k = 5 (results/draft_eval[_ARCH].json, the Sparrow drafts): the drafts
    such a stop saves against the accepted tokens it loses."""
    out = ["| visual tokens | requests | rounds a request | accepted a draft token (all) | requests stopped "
           "| drafts saved | accepted lost | accepted a draft token (stopped requests, later rounds) |",
           "|---|---|---|---|---|---|---|---|"]
    for e in json.loads(_results("draft_eval", arch).read_text()):
        if e["recipe"] != "sparrow" or not e.get("per_sample"):
            continue
        rounds = [p["accepted"]["5"] for p in e["per_sample"] if p["accepted"].get("5")]
        drafted = 5 * sum(len(r) for r in rounds)
        accepted = sum(sum(r) for r in rounds)
        stopped = [r for r in rounds if r[0] <= 1]
        saved = 5 * sum(len(r) - 1 for r in stopped)
        lost = sum(sum(r[1:]) for r in stopped)
        out.append(f"| {e['visual_tokens']:,} | {len(rounds)} | {drafted / 5 / len(rounds):.1f} | {accepted / drafted:.2f} "
                   f"| {len(stopped)} | {saved} of {drafted} | {lost} of {accepted} | "
                   f"{(lost / saved) if saved else float('nan'):.2f} |")
    out.append("")
    out.append("Stop rule: a request whose first round accepted at most 1 of its 5 drafts drafts nothing after it. "
               "It pays only if the stopped requests' later drafts are accepted less often than the average one.")
    return "\n".join(out)


def length_study(name: str = "length_study") -> str:
    """benchmarks/length_study.py: tau of each draft on the same scenes at two lengths, split by
    whether the target answered alike, and the drift of the anchor states (results/NAME.json)."""
    d = json.loads((RESULTS / f"{name}.json").read_text())
    out = ["| draft | data short -> long | visual tokens short -> long | pairs (same answer) | tau all | "
           "tau same answer | tau other answer |", "|---|---|---|---|---|---|---|"]

    def tokens(r, side):
        sim = r.get(f"{side}_simulated")
        return f"{r[f'{side}_visual_tokens']:,}" + (f" (attending as {sim:,})" if sim else "")

    def cell(t):
        if not t or not t["short"]:
            return "-"
        k = max(t["short"], key=int)
        return f"{t['short'][k]['tau']:.2f} -> {t['long'][k]['tau']:.2f}"

    for r in d["rows"]:
        out.append(f"| {r['label']} | {Path(r['short']).name} -> {Path(r['long']).name} | "
                   f"{tokens(r, 'short')} -> {tokens(r, 'long')} | "
                   f"{r['pairs']} ({r['same_answer']}) | {cell(r['tau']['all'])} | {cell(r['tau']['same_answer'])} | "
                   f"{cell(r['tau']['other_answer'])} |")
    out += ["", "Drift of the anchor states at the same text rows (cosine similarity / norm ratio, long over short):", "",
            "| pair of datasets | rows | layer | before the video | prompt after it | answer (same-answer pairs) |",
            "|---|---|---|---|---|---|"]
    seen, segments = set(), ("before_video", "prompt_after_video", "answer")  # length_study.SEGMENTS
    for r in d["rows"]:
        key = (r["short"], r["long"])
        if key in seen:  # the drift depends on the data, not on the draft
            continue
        seen.add(key)
        dr = r["drift"]
        for layer in dr["before_video"]["layers"]:
            cols = [f"{dr[s]['layers'][layer]['cosine']:.3f} / {dr[s]['layers'][layer]['norm_ratio']:.2f}"
                    if s in dr else "-" for s in segments]
            rows = "/".join(str(dr[s]["rows"]) for s in segments if s in dr)
            out.append(f"| {Path(r['short']).name} -> {Path(r['long']).name} | {rows} | {layer} | " + " | ".join(cols) + " |")
    _plot_length_study([r for r in d["rows"] if not r.get("short_simulated") and not r.get("long_simulated")],
                       RESULTS / f"{name}.png")
    out += ["", f"![tau by video length](../benchmarks/results/{name}.png)"]
    return "\n".join(out)


def _plot_length_study(rows: list[dict], path: Path) -> None:
    """tau (k max) of each draft against the video length: the 1k point and each longer set."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    for label in dict.fromkeys(r["label"] for r in rows):
        rs = sorted((r for r in rows if r["label"] == label), key=lambda r: r["long_visual_tokens"])
        k = max(rs[0]["tau"]["all"]["short"], key=int)
        xs = [rs[0]["short_visual_tokens"]] + [r["long_visual_tokens"] for r in rs]
        ys = [rs[0]["tau"]["all"]["short"][k]["tau"]] + [r["tau"]["all"]["long"][k]["tau"] for r in rs]
        ax.plot(xs, ys, "o-", label=f"{label} (k={k})")
    ax.set_xscale("log")
    ax.set_ylim(1, None)
    ax.set_xlabel("visual tokens per video (same scenes and questions)")
    ax.set_ylabel("mean accepted length tau")
    ax.set_title("trained short, served long (sparrow eval-draft, CPU)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    tables = {"kernels": kernels, "target": target, "drafts": drafts, "study": study, "tau": tau, "offline": offline,
              "serve": serve, "reliability": reliability, "per_video": per_video, "summary": summary,
              "compiled": compiled, "long": long, "long_lengths": long_lengths, "target_long": target_long, "own_data": own_data,
              "adaptive_k": adaptive_k, "per_request_stop": per_request_stop, "block_drop": block_drop,
              "length_study": length_study, "window": window}
    if len(sys.argv) < 2 or sys.argv[1] not in tables:
        sys.exit(f"usage: python benchmarks/report.py {{{'|'.join(tables)}}} [ARGS]\n{__doc__.strip().splitlines()[0]}")
    print(tables[sys.argv[1]](*sys.argv[2:]))
