"""Dump scores, heatmaps, captures and rewritten graphs of the test model families, to compare two builds bit for bit.

    python benchmarks/dump_scores.py models DIR            # export the models once (TorchScript files)
    python benchmarks/dump_scores.py dump DIR OUT.pt       # score them with the vitfiqa on sys.path
    python benchmarks/dump_scores.py compare A.pt B.pt     # every tensor torch.equal, every graph string equal

Run ``dump`` once per build (e.g. PYTHONPATH pointing at a copy of main's package and _core), then ``compare``.
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(1, str(ROOT))  # tests.conftest: the model families (after the vitfiqa under test)

CONFIGS = {
    "default": dict(methods=["attn", "vitnt"], heatmaps=True, return_captures=True),
    "patches": dict(methods=["attn", "vitnt"], attn_tokens="patches", attn_block=-2, vitnt_blocks=[0, 2],
                    vitnt_scale=3.0, heatmaps=True, heatmap_normalize="global"),
    "weighted": dict(methods=["vitnt"], vitnt_weighting="attention", vitnt_attention_blocks="all", heatmaps=True,
                     heatmap_normalize="none", heatmap_size=[20, 24]),
    "full_logits": dict(methods=["attn"], attn_logits="full", heatmaps=True),
}
QUALITY_CONFIGS = {
    "exfiqa": dict(methods=["vitfiqa", "exfiqa"], exits=[0, 2], exit_normalization="none"),
    "exfiqa_z": dict(methods=["exfiqa"], exit_normalization="zscore", quality_output=-1),
}


def export_models(out: Path) -> None:
    from tests.conftest import FAMILIES, export, spread

    out.mkdir(parents=True, exist_ok=True)
    for i, (name, (factory, size, *_)) in enumerate(FAMILIES.items()):
        torch.manual_seed(i)
        eager = spread(factory(), seed=i)
        example = torch.randn(2, 3, size, size)
        for how in ("script", "trace"):
            export(eager, how, example, str(out / f"{name}-{how}.pt"))
        (out / f"{name}.size").write_text(str(size))


def dump(models: Path, out: Path) -> None:
    import vitfiqa

    result = {"_vitfiqa": vitfiqa.__file__}
    for path in sorted(models.glob("*.pt")):
        size = int((models / (path.stem.rsplit("-", 1)[0] + ".size")).read_text())
        m = vitfiqa.load(path, image_size=size)
        x = torch.randn(3, 3, size, size, generator=torch.Generator().manual_seed(1))
        configs = dict(CONFIGS)
        if path.stem.startswith("vitfiqa_"):
            configs.update(QUALITY_CONFIGS)
        for cname, cfg in configs.items():
            try:
                r = m.score(x, **cfg)
                out_r = {"scores": r.scores, "heatmaps": r.heatmaps, "grids": r.heatmap_grids, "exits": r.exits,
                         "captures": r.captures}
            except Exception as e:  # the same error on both builds is the same behaviour
                out_r = {"error": f"{type(e).__name__}: {e}"}
            result[f"{path.stem}/{cname}"] = out_r
        L = m.num_blocks
        cap = m.capture(x, attention_blocks=[-1], probs_blocks=[0], token_blocks=[0], exit_blocks=[L - 1],
                        model_output=True, distance_blocks=[0, L - 1])
        result[f"{path.stem}/capture"] = cap
        result[f"{path.stem}/graph"] = [m.graph(logits_blocks=[1]), m.graph(token_blocks=[0], final_norm=False),
                                        m.graph(distance_blocks=[0, 1], exit_blocks=[1])]
    torch.save(result, out)


def same(a, b, where: str, diffs: list) -> None:
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        if not (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.dtype == b.dtype
                and a.shape == b.shape and torch.equal(a, b)):
            diffs.append(where)
    elif isinstance(a, dict) and isinstance(b, dict):
        if list(a) != list(b):
            diffs.append(f"{where}: keys {list(a)} != {list(b)}")
        for k in a:
            if k in b:
                same(a[k], b[k], f"{where}/{k}", diffs)
    elif isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        if len(a) != len(b):
            diffs.append(f"{where}: length")
        for i, (x, y) in enumerate(zip(a, b)):
            same(x, y, f"{where}[{i}]", diffs)
    elif a != b:
        diffs.append(f"{where}: {a!r} != {b!r}"[:300])


def compare(a_path: Path, b_path: Path) -> int:
    a, b = torch.load(a_path, weights_only=True), torch.load(b_path, weights_only=True)
    print("A:", a.pop("_vitfiqa"), "\nB:", b.pop("_vitfiqa"))
    diffs: list = []
    same(a, b, "", diffs)
    n = sum(1 for _ in a)
    print(f"{n} entries compared; {len(diffs)} differences")
    for d in diffs[:50]:
        print(" ", d)
    return 1 if diffs else 0


if __name__ == "__main__":
    cmd, *args = sys.argv[1:]
    if cmd == "models":
        export_models(Path(args[0]))
    elif cmd == "dump":
        dump(Path(args[0]), Path(args[1]))
    elif cmd == "compare":
        sys.exit(compare(Path(args[0]), Path(args[1])))
    else:
        sys.exit(__doc__)
