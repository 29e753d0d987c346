"""``bench train``'s figures as the tables of ``docs/performance.md`` (``--markdown``): the
linear grid's ways side by side, and the end-to-end steps per method."""

from __future__ import annotations

from bench.harness import format_ratio
from bench.markdown import Table

WAY_NAMES = {"papers": "papers, one by one", "runs": "wsml runs, one by one", "sweep": "`--sweep`"}


def linear_tables(r: dict) -> list[Table]:
    """One row per method: each way's seconds for the whole grid (train + scoring, medians of
    the alternating rounds), each way's time over the sweep's (median of the rounds' ratios,
    range), the peak RSS."""
    ways = r["ways"]
    ratios = [w for w in ways if w != "sweep"] if "sweep" in ways else []
    head = ("method", *(WAY_NAMES[w] for w in ways), *(f"{w} / sweep" for w in ratios),
            "peak RSS")  # fmt: skip
    rows = []
    for method, m in r["methods"].items():
        times = [f"{m[w + '_total']:.1f} ({m[w + '_train']:.1f} + {m[w + '_eval']:.1f})"
                 for w in ways]  # fmt: skip
        shown = [format_ratio(m["ratios"][f"{w}/sweep"]) for w in ratios]
        if shown and ratios[0] == "papers":
            first, _, rest = shown[0].partition(" ")
            shown[0] = f"**{first}** {rest}".strip()
        rows.append((f"`{method}`", *times, *shown, f"{m['peak_rss_gb']:.2f} GB"))
    tables = [Table(head, tuple(rows), _linear_caption(r))]
    profiled = {m: x["profile"] for m, x in r["methods"].items() if "profile" in x}
    if profiled:
        tables.append(profile_table(profiled))
    return tables


def profile_table(profiled: dict[str, list[dict]]) -> Table:
    """Each part's share of a sweep step, per method and group, and the step's thread CPU."""
    from bench.train_profile import PARTS

    columns = [(m, g) for m, groups in profiled.items() for g in groups]
    head = ("part of a sweep step (thread CPU time)",
            *(f"`{m}`, batch {g['batch_size']} × {g['members']}" for m, g in columns))  # fmt: skip
    rows = [
        (part, *(f"{100 * g[part] / sum(g[p] for p in PARTS):.0f} %" for _, g in columns))
        for part in PARTS
    ]
    rows.append(("ms a step", *(f"{g['ms_per_step']:.2f}" for _, g in columns)))
    return Table(head, tuple(rows))


def _linear_caption(r: dict) -> str:
    rows, grid = r["rows"], len(r["batches"]) * len(r["lrs"])
    shape = (
        f"{r['annotations']:,} annotations over {r['classes']:,} classes (Open Images-shaped, "
        f"ragged), features memory-mapped ({r['feature_mb']:,.0f} MB an epoch touches)"
        if r["annotations"]
        else f"{r['classes']} classes"
    )
    batches = ", ".join(map(str, r["batches"]))
    lrs = ", ".join(f"{x:g}" for x in r["lrs"])
    return (
        f"One epoch of {rows['train']:,} × {r['dim']:,} features, {shape}; val {rows['val']:,} "
        f"and test {rows['test']:,} rows scored after it. Grid batch {{{batches}}} × lr "
        f"{{{lrs}}} = {grid} configuration{'s' if grid > 1 else ''} on {r['device']}. Seconds "
        f"for the whole grid (train + scoring), median of {r['repeats']} alternating rounds; "
        "ratios: median of each round's ratio (range)."
    )


def e2e_tables(r: dict) -> list[Table]:
    """One row per method: images/s, ms per step, the data-wait share and the label join."""
    head = ("method", "backbone", "input", "images/s", "ms/step", "data wait",
            "label join per batch", "join share of a step")  # fmt: skip
    rows = tuple(
        (f"`{method}`", m["backbone"], m["input"], f"{m['images_per_s']:.1f}",
         f"{m['ms_per_step']:,.0f}", f"{100 * m['data_wait']:.1f} %", f"{m['join_ms']:.2f} ms",
         f"{100 * m['join_ms'] / m['ms_per_step']:.2f} %")
        for method, m in r["methods"].items()
    )  # fmt: skip
    caption = (
        f"{r['images']} generated photos ({r['classes']:,} classes), batch {r['batch_size']}, "
        f"{r['steps']} timed steps after {r['warmup']}, random weights, device {r['device']}"
        f"{', compiled' if r['compile'] else ''}."
    )
    return [Table(head, rows, caption)]
