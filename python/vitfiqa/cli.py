"""Command line: ``vitfiqa score | evaluate | reproduce | inspect | demo | train-demo``. Errors are one line, exit 2."""
from __future__ import annotations

import argparse
import csv
import logging
import os
import sys
from pathlib import Path

log = logging.getLogger("vitfiqa")
IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}


class CLIError(Exception):
    pass


def _image_list(spec: str) -> list[str]:
    p = Path(spec)
    if p.is_dir():
        files = sorted(str(f) for f in p.rglob("*") if f.suffix.lower() in IMAGE_EXTS)
        if not files:
            raise CLIError(f"no images ({', '.join(sorted(IMAGE_EXTS))}) found in {p}")
        return files
    if p.is_file():
        base = p.parent
        files = [ln.strip() for ln in p.read_text().splitlines() if ln.strip() and not ln.startswith("#")]
        if not files:
            raise CLIError(f"image list {p} is empty")
        return [f if os.path.isabs(f) else str(base / f) for f in files]
    raise CLIError(f"--images: {spec} is neither a folder nor a list file")


def _methods(spec: str) -> list[str]:
    from .pipeline import _methods_list, score_keys

    methods = _methods_list(spec)
    try:
        score_keys(methods)  # the one method-name check, shared with the Python API
    except ValueError as exc:
        raise CLIError(f"--methods: {exc}") from None
    return methods


def cmd_score(args) -> int:
    if args.batch_size <= 0:
        raise CLIError("--batch-size must be positive")
    if args.workers is not None and args.workers < 1:
        raise CLIError("--workers must be at least 1")
    methods = _methods(args.methods)
    if args.ray is not None:
        return _score_ray(args, methods)
    import numpy as np
    from tqdm.auto import tqdm

    import vitfiqa
    from vitfiqa.pipeline import score_files, score_keys

    out = Path(args.out)
    if out.suffix not in (".csv", ".parquet"):
        raise CLIError("--out must end in .csv or .parquet")
    model = vitfiqa.load(args.model, device=args.device or "cpu", dtype=args.dtype,
                         image_size=(args.image_size, args.image_size))
    files = _image_list(args.images)
    # Results go to a CSV as each batch finishes; a re-run skips images already in it.
    partial = out if out.suffix == ".csv" else out.with_suffix(".partial.csv")
    done: set[str] = set()
    if partial.exists() and not args.overwrite:
        with open(partial, newline="") as f:
            done = {row["path"] for row in csv.DictReader(f)}
    elif partial.exists():
        partial.unlink()
    todo = [f for f in files if f not in done]
    if done:
        log.info("resuming: %d of %d images already scored in %s", len(done), len(files), partial)
    heat_dir = Path(args.heatmaps) if args.heatmaps else None
    if heat_dir:
        heat_dir.mkdir(parents=True, exist_ok=True)
    keys = score_keys(methods, model.exit_depths() if "exfiqa" in methods else ())
    columns = ["path"] + keys + ["error"]
    if partial.exists() and not args.overwrite:
        with open(partial, newline="") as f:
            header = next(csv.reader(f), None)
        if header and header != columns:
            raise CLIError(f"{partial} has columns {header}, not {columns}: use --overwrite or another --out")
    new_file = not partial.exists() or partial.stat().st_size == 0
    bar = tqdm(total=len(files), initial=len(done), desc="scoring", disable=args.quiet)
    with open(partial, "a", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns, restval="")
        if new_file:
            writer.writeheader()
        batches = score_files(model, todo, methods, batch_size=args.batch_size, workers=args.workers,
                              heatmaps=heat_dir is not None) if todo else []
        for sb in batches:
            for pos, err in sb.batch.errors.items():
                log.warning("skipping %s: %s", sb.batch.paths[pos], err)
            cols = sb.columns()
            rows = [{k: cols[k][i] for k in columns} for i in range(len(sb.batch.paths))]
            for row in rows:  # unreadable images get empty score cells, not "nan"
                if row["error"]:
                    row.update({k: "" for k in keys})
            if heat_dir and sb.result is not None:
                for meth, hm in sb.result.heatmaps.items():
                    for j, pos in enumerate(sb.batch.ok):
                        np.save(heat_dir / f"{Path(sb.batch.paths[pos]).stem}.{meth}.npy", hm[j].float().cpu().numpy())
            writer.writerows(rows)
            fh.flush()  # a crash loses at most the batch in flight
            bar.update(len(rows))
    bar.close()
    if out.suffix == ".parquet":
        import pandas as pd

        try:
            pd.read_csv(partial).to_parquet(out, index=False)
        except ImportError:
            raise CLIError("writing .parquet needs pyarrow: pip install 'vitfiqa[parquet]'") from None
        partial.unlink()
    log.info("wrote %s", out)
    return 0


def _score_ray(args, methods: list[str]) -> int:
    from vitfiqa.distributed import score_with_ray

    out = Path(args.out)
    if out.suffix == ".csv":
        raise CLIError("with --ray, --out is a folder of Parquet shards (e.g. scores.parquet or scores/), not a .csv")
    if args.heatmaps:
        raise CLIError("--heatmaps is not supported with --ray (heatmaps stay local); score without --ray")
    files = _image_list(args.images)
    frame = score_with_ray(args.model, files, str(out), methods=methods, address=args.ray or None,
                           batch_size=args.batch_size, device=args.device,
                           dtype=args.dtype, image_size=(args.image_size, args.image_size),
                           workers=args.workers, num_actors=args.actors, overwrite=args.overwrite,
                           progress=not args.quiet)
    bad = int((frame["error"] != "").sum())
    log.info("scored %d images (%d unreadable) into %s", len(frame) - bad, bad, out)
    return 0


def cmd_evaluate(args) -> int:
    import numpy as np

    import vitfiqa
    from vitfiqa.eval import comparison_scores, evaluate, load_bin, plot_edc, score_image_set, to_latex, to_markdown
    from vitfiqa.recognizer import Recognizer

    methods = _methods(args.methods)
    fmrs = [float(f) for f in args.fmr.split(",")]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    size = (args.image_size, args.image_size)
    qm = vitfiqa.load(args.model, device=args.device, image_size=size)
    # The recognizer may be any TorchScript model (a CNN such as iResNet-100, or a ViT): embeddings only.
    fr = Recognizer(args.fr_model or args.model, device=args.device, image_size=size,
                    channel_order=args.channel_order, flip=args.flip)
    ds = load_bin(args.bin, image_size=size)
    quality = score_image_set(qm, ds, methods=methods, batch_size=args.batch_size, progress=not args.quiet)
    emb, ok = None, np.zeros(len(ds), bool)
    for idx, imgs in ds.batches(args.batch_size):
        e = fr.embed(imgs)
        if emb is None:
            emb = np.ones((len(ds), e.shape[1]), dtype=np.float32)
        emb[idx], ok[idx] = e, True
    if emb is None:
        raise CLIError(f"no image of {args.bin} could be read")
    sims = comparison_scores(emb, ds.pairs)
    sims[~(ok[ds.pairs.a] & ok[ds.pairs.b])] = np.nan
    df = evaluate(quality, sims, ds.pairs, benchmark=ds.name, fr_model=Path(args.fr_model or args.model).stem,
                  fmrs=fmrs, variant=args.variant, limit=args.limit)
    df.drop(columns="curve").to_csv(out / "pauc.csv", index=False)
    (out / "table.md").write_text(to_markdown(df))
    (out / "table.tex").write_text(to_latex(df, caption=f"pAUC-EDC x 10^3 on {ds.name}"))
    for fmr in fmrs:
        plot_edc(df, str(out / f"edc_{ds.name}_fmr{fmr:g}.png"), fmr=fmr)
    print(to_markdown(df))
    return 0


def cmd_reproduce(args) -> int:
    from vitfiqa.eval.reproduce import reproduce

    result = reproduce(args.config, out=args.out, progress=not args.quiet)
    print(result.markdown)
    for name, reason in result.skipped.items():
        print(f"vitfiqa: benchmark {name} skipped: {reason}", file=sys.stderr)
    return 0


def cmd_inspect(args) -> int:
    import vitfiqa

    m = vitfiqa.load(args.model, device=args.device)
    for k, v in m.info.items():
        print(f"{k}: {v}")
    return 0


def cmd_demo(args) -> int:
    from .demo.study import run_demo

    run_demo(args.out, n_images=args.images, model_path=args.model)
    return 0


def cmd_train_demo(args) -> int:
    from .demo.train import ASSET, train

    train(args.epochs, out=Path(args.out) if args.out else ASSET)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vitfiqa", description="Face image quality from a ViT's own attention and tokens")
    p.add_argument("-q", "--quiet", action="store_true")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("score", help="score a folder or list of images")
    s.add_argument("--model", required=True)
    s.add_argument("--images", required=True, help="folder (searched recursively) or text file of paths")
    s.add_argument("--methods", default="attn,vitnt")
    s.add_argument("--out", required=True, help="scores.csv or scores.parquet")
    s.add_argument("--heatmaps", help="folder for per-image heatmaps (.npy)")
    s.add_argument("--device", help="cpu (default), cuda, cuda:N; with --ray the default uses GPUs when the cluster has them")
    s.add_argument("--dtype", default="float32", choices=("float32", "float16", "bfloat16"),
                   help="model precision (float16 for GPUs)")
    s.add_argument("--batch-size", type=int, default=64)
    s.add_argument("--workers", type=int, help="image decoding threads (default: min(8, cores))")
    s.add_argument("--image-size", type=int, default=112)
    s.add_argument("--overwrite", action="store_true", help="start again instead of resuming")
    s.add_argument("--ray", nargs="?", const="", metavar="ADDRESS",
                   help="score on Ray: a new local cluster, or the cluster at ADDRESS ('auto', 'ray://host:10001'); "
                        "--out becomes a folder of Parquet shards")
    s.add_argument("--actors", type=int, help="with --ray: scoring actors (default: one per GPU, else per 2 CPUs)")
    s.set_defaults(fn=cmd_score)

    e = sub.add_parser("evaluate", help="pAUC-EDC tables and plots on an insightface .bin benchmark")
    e.add_argument("--model", required=True, help="quality (ViT) model")
    e.add_argument("--fr-model", help="comparison (FR) model, any TorchScript CNN or ViT; default: the quality model")
    e.add_argument("--flip", choices=("concat", "sum", "none"), default="concat",
                   help="flip test: concat (CR-FIQA: [normalised original, normalised flip]), sum, none")
    e.add_argument("--channel-order", choices=("rgb", "bgr"), default="rgb",
                   help="the FR model's input channel order (the CR-FIQA evaluation feeds BGR)")
    e.add_argument("--bin", required=True)
    e.add_argument("--methods", default="attn,vitnt")
    e.add_argument("--fmr", default="1e-3,1e-4")
    e.add_argument("--variant", default="refit", help="EDC variant (refit, iso, ...: see vitfiqa.eval.edc_curve)")
    e.add_argument("--limit", type=float, default=0.3)
    e.add_argument("--out", default="vitfiqa-eval")
    e.add_argument("--device", default="cpu")
    e.add_argument("--batch-size", type=int, default=64)
    e.add_argument("--image-size", type=int, default=112)
    e.set_defaults(fn=cmd_evaluate)

    r = sub.add_parser("reproduce", help="a paper's pAUC-EDC table from a TOML config: benchmarks x recognizers x "
                                         "quality methods (cached, resumable)")
    r.add_argument("config", help="TOML config (see vitfiqa.eval.reproduce)")
    r.add_argument("--out", help="output folder (default: the config's out)")
    r.set_defaults(fn=cmd_reproduce)

    i = sub.add_parser("inspect", help="what the capture found in a model")
    i.add_argument("--model", required=True)
    i.add_argument("--device", default="cpu")
    i.set_defaults(fn=cmd_inspect)

    d = sub.add_parser("demo", help="controlled-degradation study with the embedded demo model")
    d.add_argument("--out", default="vitfiqa-demo")
    d.add_argument("--images", type=int, default=300)
    d.add_argument("--model", help="default: the shipped demo ViT")
    d.set_defaults(fn=cmd_demo)

    t = sub.add_parser("train-demo", help="retrain the demo recognizer on Fashion-MNIST")
    t.add_argument("--epochs", type=int, default=3)
    t.add_argument("--out")
    t.set_defaults(fn=cmd_train_demo)
    return p


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="vitfiqa: %(message)s")
    try:
        return args.fn(args)
    except (CLIError, FileNotFoundError, ValueError, TypeError, IndexError, RuntimeError, ImportError) as exc:
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(f"vitfiqa: error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("vitfiqa: interrupted (re-run the same command to resume)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
