"""Search fine-tuning recipes on a pretraining run, with the same grid for the scratch baseline.

Each trial is one ``simclr.eval.finetune.finetune`` call at a fixed budget of optimizer steps; the data is
loaded once. Prints one line per trial and appends it to ``--jsonl``. Example (docs/results.md):

    .venv/bin/python scripts/finetune_search.py RUN --labels 1% --steps 150 \
        --grid 'lr=0.02,0.05,0.1' --grid 'probe_init=0,1' --init pretrained --jsonl /tmp/search.jsonl
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import time

from simclr.checkpoint import load_pretrained
from simclr.eval.features import load_eval_data, scaled_batch_size
from simclr.eval.finetune import FinetuneOptions, finetune
from simclr.eval.subsets import select_labels


def _value(text: str):
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return {"true": True, "false": False, "none": None}.get(text.lower(), text)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run")
    ap.add_argument("--labels", default="1%")
    ap.add_argument("--init", choices=("pretrained", "scratch", "both"), default="both")
    ap.add_argument("--steps", type=int, default=150, help="optimizer steps per trial (epochs rounded up)")
    ap.add_argument("--batch", type=int, default=256, help="largest batch (scaled down to 5 steps per epoch)")
    ap.add_argument("--grid", action="append", default=[], help="field=v1,v2,... (FinetuneOptions fields)")
    ap.add_argument("--set", action="append", default=[], help="field=value fixed for every trial")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--jsonl", default=None)
    a = ap.parse_args()

    pre = load_pretrained(a.run, "cpu")
    train, test, name = load_eval_data(pre.config)
    n = len(select_labels(train.labels, a.labels, a.seed, train.names))
    batch = scaled_batch_size(n, a.batch)
    epochs = max(1, math.ceil(a.steps / max(1, n // batch)))
    fixed = {k: _value(v) for k, v in (s.split("=", 1) for s in a.set)}
    keys = [g.split("=", 1)[0] for g in a.grid]
    values = [[_value(v) for v in g.split("=", 1)[1].split(",")] for g in a.grid]
    inits = ["pretrained", "scratch"] if a.init == "both" else [a.init]
    for init in inits:
        for combo in itertools.product(*values) if values else [()]:
            trial = {**fixed, **dict(zip(keys, combo, strict=True))}
            if "epochs" not in trial:
                trial["epochs"] = epochs
            o = FinetuneOptions(labels=a.labels, batch_size=batch, seed=a.seed, eval_every=10**6, **trial)
            t0 = time.perf_counter()
            r = finetune(pre if init == "pretrained" else None, train, test, o, config=pre.config, dataset=name)
            line = {"labels": a.labels, "init": init, **trial, "batch": batch, "steps": r["steps"],
                    "lr_used": round(r["lr"], 5), "wd_used": r["weight_decay"], "top1": round(r["top1"], 2),
                    "seconds": round(time.perf_counter() - t0, 1), "run": a.run, "seed": a.seed}  # fmt: skip
            print(json.dumps(line), flush=True)
            if a.jsonl:
                with open(a.jsonl, "a") as f:
                    f.write(json.dumps(line) + "\n")


if __name__ == "__main__":
    main()
