"""Command line: ``vitfiqa score | evaluate | reproduce | inspect | demo | train-demo``. Errors are one line, exit 2."""
from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from .loader import IMAGE_EXTENSIONS, is_image_file
from .options import DEFAULT_BATCH_SIZE, DEFAULT_MAX_PIXELS, ModelOptions, RunOptions
from .preprocess import CHANNEL_ORDERS, DEFAULT_CHANNEL_ORDER

log = logging.getLogger("vitfiqa")


DEFAULT_TRAIN_OUT = "vitfiqa-demo-models"
"""Where ``vitfiqa train-demo`` writes its two models unless ``--out-dir`` or ``--install`` says otherwise."""


class CLIError(Exception):
    pass


def _image_list(spec: str) -> list[str]:
    """Absolute image paths (so a table started here can be resumed from another folder, or on Ray)."""
    p = Path(spec).absolute()
    if p.is_dir():
        files = sorted(str(f) for f in p.rglob("*") if is_image_file(f))
        if not files:
            raise CLIError(f"no images ({', '.join(sorted(IMAGE_EXTENSIONS))}) found in {p}")
        return files
    if p.is_file():
        base = p.parent
        files = [ln.strip() for ln in p.read_text().splitlines() if ln.strip() and not ln.startswith("#")]
        if not files:
            raise CLIError(f"image list {p} is empty")
        other = [f for f in files if not is_image_file(f)]
        if other:  # a folder and a list take the same image types (loader.IMAGE_EXTENSIONS)
            raise CLIError(f"image list {p}: {len(other)} entr{'y is' if len(other) == 1 else 'ies are'} not an image "
                           f"file ({', '.join(sorted(IMAGE_EXTENSIONS))}), e.g. {other[0]}")
        return [f if os.path.isabs(f) else str(base / f) for f in files]
    raise CLIError(f"--images: {spec} is neither a folder nor a list file")


def _read_config_file(path: str) -> dict:
    """``--config FILE``: a score config as TOML (``methods = [...]`` and ``[attn]``, ``[vitnt]``, ...
    tables) or JSON (the same nesting, as ``ScoreConfig.to_dict()`` writes it)."""
    import json

    p = Path(path)
    if not p.is_file():
        raise CLIError(f"--config: file not found: {p}")
    try:
        if p.suffix.lower() == ".json":
            data = json.loads(p.read_text())
        else:
            try:
                import tomllib
            except ImportError:  # Python 3.10
                raise CLIError("--config: reading TOML needs Python 3.11 (tomllib); give a .json file") from None
            data = tomllib.loads(p.read_text())
    except (ValueError, UnicodeDecodeError) as exc:  # JSONDecodeError and TOMLDecodeError are ValueErrors
        raise CLIError(f"--config {p}: not valid {'JSON' if p.suffix.lower() == '.json' else 'TOML'}: {exc}") from None
    if not isinstance(data, dict):
        raise CLIError(f"--config {p}: the file must hold a table of config fields")
    return data


def _score_config(args, heatmaps: bool = False):
    """The score config of a run: ``--config FILE``, then the shorthand flags (``--methods``; ``--heatmaps DIR``
    turns heatmaps on), then each ``--set section.field=value`` in order. Checked before any image is read."""
    from . import _core
    from .config import ScoreConfig

    cfg = ScoreConfig()
    if args.config:
        try:
            cfg = ScoreConfig.from_dict(_read_config_file(args.config))
        except ValueError as exc:
            raise CLIError(f"--config {args.config}: {exc}") from None
    try:
        if args.methods is not None:
            cfg.methods = args.methods
    except ValueError as exc:
        raise CLIError(f"--methods: {exc}") from None
    if heatmaps:
        cfg.heatmaps = True
    for item in args.set or []:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise CLIError(f"--set {item}: expected section.field=value, e.g. vitnt.blocks=0:20")
        try:
            cfg.set(name.strip(), value)
        except ValueError as exc:
            raise CLIError(f"--set {item}: {exc}") from None
    try:
        _core.check_config(cfg)
    except ValueError as exc:
        raise CLIError(f"score config: {exc}") from None
    return cfg


TABLE_FORMATS = (".csv", ".parquet")
"""``--out`` file endings exported as a table; a folder name has no ending or ``.table``."""


def _out_paths(spec: str) -> tuple[Path, Path | None]:
    """``--out``: ``scores.csv`` / ``scores.parquet`` -> the results table ``scores.csv.table/`` (what a re-run
    resumes) plus that file, exported atomically once every image is done; a folder name (no extension, or
    ``.table``, or an existing folder) is the table folder itself, with no export; any other extension is refused
    (``e8.txt`` would otherwise silently become a folder). The same with or without --ray."""
    out = Path(spec)
    if out.suffix.lower() in TABLE_FORMATS and out.suffix not in TABLE_FORMATS:
        raise CLIError(f"--out {out}: write the extension in lower case ({', '.join(TABLE_FORMATS)})")
    if out.suffix in TABLE_FORMATS:
        if out.is_dir():
            raise CLIError(f"--out {out} is a folder; an export file must not be one")
        if out.suffix == ".parquet":
            try:
                import pyarrow  # noqa: F401
            except ImportError:
                raise CLIError("writing .parquet needs pyarrow: pip install 'vitfiqa[parquet]'") from None
        return out.with_name(out.name + ".table"), out
    if out.exists() and not out.is_dir():
        raise CLIError(f"--out {out} exists and is not a folder: give a results-table folder or a .csv/.parquet "
                       "file name")
    if out.suffix and out.suffix != ".table" and not out.is_dir():
        raise CLIError(f"--out {out}: {out.suffix} is not a table format; give scores.csv or scores.parquet (an "
                       "export), or a folder name without extension or ending in .table (the results table alone)")
    return out, None


def _model_options(args, device: str | None = "cpu") -> ModelOptions:
    """The model options a command's flags give (``--device``, ``--dtype``, ``--image-size``,
    ``--channel-order``, ``--final-norm``; the ones a command lacks keep their defaults)."""
    given = {k: getattr(args, k, None) for k in ("dtype", "image_size", "channel_order", "final_norm")}
    return ModelOptions(device=getattr(args, "device", None) or device,
                        **{k: v for k, v in given.items() if v is not None})


def _run_options(args) -> RunOptions:
    """The run options of ``vitfiqa score``'s flags, checked before any image is read."""
    from .options import check_batch_size

    check_batch_size(args.batch_size)
    if args.workers is not None and args.workers < 1:
        raise CLIError("--workers must be at least 1")
    return RunOptions(batch_size=args.batch_size, workers=args.workers, max_pixels=_max_pixels(args),
                      overwrite=args.overwrite, heatmap_dir=args.heatmaps or None,
                      heatmap_format=args.heatmap_format, **_face_options(args))


def _model_argument(args):
    """``--model FILE`` or ``--preset NAME`` (with ``--checkpoint FILE``) of a ViT run; None: the embedded
    stand-in."""
    if args.preset and args.model:
        raise CLIError("give --model FILE or --preset NAME --checkpoint FILE, not both")
    model = args.preset or args.model
    if args.checkpoint and not model:
        raise CLIError("--checkpoint goes with --preset NAME (the architecture it fits), e.g. --preset cvlface_vit_b "
                       "--checkpoint model.pt")
    return model


def cmd_score(args) -> int:
    run = _run_options(args)
    if _baseline_methods(args):
        return _score_baselines(args, run)
    config = _score_config(args, heatmaps=bool(args.heatmaps))
    table_dir, export = _out_paths(args.out)
    if args.ray is not None:
        table = _score_ray(args, config, run, table_dir)
    else:
        table = _score_local(args, config, run, table_dir)
    with table:
        bad = sum(1 for e in table.columns_dict()["error"] if e)
        if export is not None:
            table.export(export)
    log.info("scored %d images (%d skipped, reasons in the error column) into %s", table.n_images - bad, bad,
             export or table_dir)
    return 0


def _baseline_methods(args) -> list[str]:
    """The baselines named by --methods (none: a ViT run); mixing them with ViT methods is refused."""
    if not args.methods:
        return []
    from .baselines import source_of

    names = [n.strip() for n in args.methods.split(",") if n.strip()]
    try:
        kinds = {n: source_of(n)[0] for n in names}
    except ValueError as exc:
        raise CLIError(f"--methods: {exc}") from None
    if "baseline" not in kinds.values():
        return []
    if "vit" in kinds.values():
        raise CLIError("--methods mixes ViT methods and baselines; score them in separate runs (the baselines run on "
                       "--preset/--model recognisers, the ViT methods on a ViT)")
    return names


def _baseline_options(args, methods: list[str]) -> dict:
    """``--set <baseline>.<option>=value`` (e.g. serfiq.T=100, serfiq.seed=3): values read as JSON, else text."""
    import json

    from .baselines import source_of

    opts: dict = {}
    for item in args.set or []:
        name, sep, value = item.partition("=")
        section, dot, field = name.strip().partition(".")
        if not sep or not dot or not field:
            raise CLIError(f"--set {item}: expected method.option=value, e.g. serfiq.T=100")
        try:
            kind, method = source_of(section)
        except ValueError as exc:
            raise CLIError(f"--set {item}: {exc}") from None
        if kind != "baseline":
            raise CLIError(f"--set {item}: {section} is not one of the baselines scored")
        try:
            parsed = json.loads(value)
        except ValueError:
            parsed = value
        opts.setdefault(method, {})[field] = parsed
    return opts


def _score_baselines(args, run: RunOptions) -> int:
    from tqdm.auto import tqdm

    from .baselines import PRESETS, REGISTRY, load
    from .baselines.files import resolve, score_files
    from .results import ScoreTable

    methods = _baseline_methods(args)
    if args.ray is not None or args.heatmaps:
        raise CLIError("the baselines run locally and have no heatmaps: drop --ray / --heatmaps")
    if args.dtype != "float32":
        raise CLIError("the baselines run in float32")
    options = _baseline_options(args, methods)
    try:
        ms, _, _ = resolve(methods, options)
    except (TypeError, ValueError) as exc:
        raise CLIError(f"--set: {exc}") from None
    if args.preset and args.model:
        raise CLIError("give --preset (with --checkpoint) or --model (a TorchScript file), not both")
    network = args.preset or args.model
    if network is None:
        defaults = {REGISTRY[m].default_preset for m in ms}
        raise CLIError(f"--method {','.join(methods)} needs its network: --preset {' / '.join(sorted(defaults))} "
                       "--checkpoint FILE (the official weights), or --model FILE (TorchScript)")
    if args.preset and args.preset not in PRESETS:
        raise CLIError(f"--preset must be one of {sorted(PRESETS)}, got {args.preset!r}")
    if args.checkpoint and not args.preset:
        raise CLIError("--checkpoint goes with --preset (the official checkpoint layouts)")
    if args.preset and not args.checkpoint:
        raise CLIError(f"--preset {args.preset} needs --checkpoint FILE (its official weights)")
    model = load(network, _model_options(args).replace(final_norm=None), checkpoint=args.checkpoint)
    files = _image_list(args.images)
    table_dir, export = _out_paths(args.out)
    bar = tqdm(total=len(files), desc="scoring", disable=args.quiet)
    for cols in score_files(ms, model, files, out=table_dir, options=options, run=run):
        for path, err in zip(cols["path"], cols["error"]):
            if err:
                log.warning("skipping %s: %s", path, err)
        bar.update(len(cols["path"]))
    bar.close()
    with ScoreTable.open(table_dir) as table:
        bad = sum(1 for e in table.columns_dict()["error"] if e)
        if export is not None:
            table.export(export)
        log.info("scored %d images with %s (%d skipped, reasons in the error column) into %s", table.n_images - bad,
                 ", ".join(ms), bad, export or table_dir)
    return 0


def _max_pixels(args) -> int | None:
    if args.max_pixels < 0:
        raise CLIError("--max-pixels must be positive (0: no limit)")
    return args.max_pixels or None


def _score_local(args, config, run: RunOptions, table_dir: Path):
    from tqdm.auto import tqdm

    import vitfiqa
    from vitfiqa.pipeline import check_sources, open_table, score_files, with_faces

    model = vitfiqa.load(_model_argument(args), _model_options(args), checkpoint=args.checkpoint)
    files = _image_list(args.images)
    if args.heatmaps and Path(args.images).is_dir() and Path(args.heatmaps).absolute().is_relative_to(
            Path(args.images).absolute()):
        raise CLIError("--heatmaps must not be inside the --images folder (the heatmaps would be scored as images "
                       "on the next run)")
    ids = None
    if run.detect or run.landmarks is not None:  # the face stage once, here: an all-faces run detects first
        files, ids, _, _ = with_faces(*check_sources(files), run, workers=run.workers, max_pixels=run.max_pixels)
    table = open_table(model, files, None, table_dir, ids=ids, config=config, run=run)
    if table.n_done:
        log.info("resuming: %d of %d images already scored in %s", table.n_done, len(files), table_dir)
    from tqdm.contrib.logging import logging_redirect_tqdm

    # Log lines (skips) go above the bar, and the bar is closed before any error is printed (main()).
    with tqdm(total=len(files), initial=table.n_done, desc="scoring", disable=args.quiet) as bar, \
            logging_redirect_tqdm([logging.getLogger()]):
        for sb in score_files(model, files, ids=ids, config=config, run=run, out=table):
            for pos, err in sb.batch.errors.items():
                log.warning("skipping %s: %s", sb.batch.ids[pos], err)
            bar.update(len(sb.batch.ids))
    return table


def _face_options(args) -> dict:
    """The face stage asked for on the command line (--detect, --all-faces, --landmarks): RunOptions fields."""
    if args.all_faces and not args.detect:
        raise CLIError("--all-faces needs --detect")
    if args.landmarks and args.detect:
        raise CLIError("--landmarks aligns from the file without a detector: give --landmarks or --detect, not both")
    if args.landmarks and not Path(args.landmarks).is_file():
        raise CLIError(f"--landmarks file not found: {args.landmarks}")
    return dict(detect=bool(args.detect), all_faces=bool(args.all_faces), landmarks=args.landmarks or None)


def _score_ray(args, config, run: RunOptions, table_dir: Path):
    from vitfiqa.distributed import score_with_ray
    from vitfiqa.results import ScoreTable

    if args.heatmaps:
        raise CLIError("--heatmaps is not supported with --ray (heatmaps stay local); score without --ray")
    files = _image_list(args.images)
    from .demo import RECOGNIZER

    score_with_ray(_model_argument(args) or RECOGNIZER, files, str(table_dir), checkpoint=args.checkpoint,
                   config=config, run=run, model_options=_model_options(args, device="auto"), address=args.ray or None,
                   num_actors=args.actors, progress=not args.quiet)
    return ScoreTable.open(table_dir)


def cmd_evaluate(args) -> int:
    import numpy as np

    import vitfiqa
    from vitfiqa.eval import (evaluate, extract_embeddings, masked_comparison_scores, load_bin, plot_edc, score_image_set,
                              to_latex, to_markdown)
    from vitfiqa.recognizer import Recognizer

    config = _score_config(args)
    fmrs = [float(f) for f in args.fmr.split(",")]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    options = _model_options(args)
    qm = vitfiqa.load(args.model, options)
    # The recognizer may be any TorchScript model (a CNN such as iResNet-100, or a ViT): embeddings only; its
    # input comes from its own contract unless --image-size / --channel-order say otherwise.
    fr = Recognizer(args.fr_model or args.model, options.replace(final_norm=None), flip=args.flip)
    if fr.image_size != qm.image_size:
        raise CLIError(f"the quality model takes {qm.image_size} images and the FR model {fr.image_size}; "
                       "pass --image-size to use one size for both")
    ds = load_bin(args.bin, image_size=qm.image_size)
    quality = score_image_set(qm, ds, config=config, batch_size=args.batch_size, progress=not args.quiet)
    emb, ok = None, np.zeros(len(ds), bool)
    for batch, e in extract_embeddings(fr, ds, args.batch_size):
        if e is None:
            continue
        if emb is None:
            emb = np.ones((len(ds), e.shape[1]), dtype=np.float32)
        emb[batch.ok], ok[batch.ok] = e, True
    if emb is None:
        raise CLIError(f"no image of {args.bin} could be read")
    sims = masked_comparison_scores(emb, ds.pairs, valid=ok)
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
    from vitfiqa.eval.reproduction import reproduce

    result = reproduce(args.config, out=args.out, progress=not args.quiet)
    print(result.markdown)
    for name, reason in result.skipped.items():
        print(f"vitfiqa: benchmark {name} skipped: {reason}", file=sys.stderr)
    return 0


def cmd_inspect(args) -> int:
    import vitfiqa

    m = vitfiqa.load(args.model, _model_options(args))
    for k, v in m.info.items():
        print(f"{k}: {v}")
    try:
        print(f"input_contract: {m.input_contract}")
    except ValueError as exc:
        print(f"input_contract: unknown ({exc})")
    return 0


def cmd_demo(args) -> int:
    from .demo.study import run_demo

    run_demo(args.out, identities=args.identities, samples=args.samples, recognizer=args.recognizer,
             quality_model=args.quality_model)
    return 0


def cmd_train_demo(args) -> int:
    from dataclasses import fields

    from .demo import DemoConfig
    from .demo.train import train

    cfg = DemoConfig(**{f.name: getattr(args, f.name) for f in fields(DemoConfig) if getattr(args, f.name) is not None})
    if args.install:  # the package's own assets: only when asked for
        train(cfg, args.work_dir, threads=args.threads)
        return 0
    out = Path(args.out_dir or DEFAULT_TRAIN_OUT)
    if out.exists() and not out.is_dir():
        raise CLIError(f"--out-dir {out} exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    train(cfg, args.work_dir, threads=args.threads, recognizer_out=out / "demo_recognizer.pt",
          quality_out=out / "demo_vitfiqa.pt")
    log.info("models written to %s; use them with: vitfiqa demo --recognizer %s --quality-model %s", out,
             out / "demo_recognizer.pt", out / "demo_vitfiqa.pt")
    return 0


def _final_norm_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--final-norm", metavar="MODULE",
                        help="module path of the model's final LayerNorm (e.g. norm) when its forward does not "
                             "apply it to the tokens; default: found in the forward graph")


def _config_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--methods", "--method", dest="methods",
                        help="comma-separated quality methods (default: ScoreConfig's); shorthand for --set "
                             "methods=...; for score also the baselines (magface, serfiq, crfiqa, grafiqs, sddfiqa, "
                             "ediffiqa, or a column such as serfiq_released), whose options are set with --set "
                             "serfiq.T=100")
    parser.add_argument("--config", metavar="FILE", help="score config file: TOML (methods = [...], [attn], [vitnt], "
                                                         "[exfiqa], [heatmap] tables) or JSON of the same shape")
    parser.add_argument("--set", action="append", metavar="SECTION.FIELD=VALUE",
                        help="set one score config field, after --config and the shorthands; repeatable, e.g. "
                             "--set vitnt.blocks=0:20 --set attn.logits=full (fields: python -c 'import vitfiqa; "
                             "print(vitfiqa.ScoreConfig.fields())')")


EXAMPLES = {
    "score": """examples:
  vitfiqa score --images photos/ --out scores.csv                       # embedded demo model, ATTN + ViTNT
  vitfiqa score --model vit_b_face.pt --images list.txt --methods vitnt \\
                --set vitnt.blocks=0:20 --set vitnt.weighting=attention --out scores.parquet
  vitfiqa score --model vit.pt --images photos/ --out scores.csv --heatmaps heat/ --channel-order bgr
  vitfiqa score --model vit.pt --images /shared/photos --out scores.table --ray auto   # on a Ray cluster
Re-running the same command resumes an interrupted run.""",
    "evaluate": """examples:
  vitfiqa evaluate --model vitfiqa_token.pt --methods vitfiqa,exfiqa --bin lfw.bin --out eval/
  vitfiqa evaluate --model vit_s_face.pt --fr-model arcface_r100.pt --channel-order bgr \\
                   --bin cfp_fp.bin --fmr 1e-3,1e-4 --variant crfiqa --out eval-crfiqa/""",
    "reproduce": """example:
  vitfiqa reproduce table.toml --out table/      # see docs/reproduce.md for the config""",
    "inspect": """examples:
  vitfiqa inspect                                # the embedded demo recogniser
  vitfiqa inspect --model vit.pt --final-norm norm""",
    "demo": """examples:
  vitfiqa demo                                   # report in vitfiqa-demo/report.html
  vitfiqa demo --out demo-small --identities 40 --samples 2""",
    "train-demo": """examples:
  vitfiqa train-demo --out-dir my-demo-models    # then: vitfiqa demo --recognizer my-demo-models/demo_recognizer.pt \\
                                                 #   --quality-model my-demo-models/demo_vitfiqa.pt
  vitfiqa train-demo --install                   # replace the models shipped inside the package""",
}


def _subparser(sub, name: str, help: str, description: str | None = None) -> argparse.ArgumentParser:
    return sub.add_parser(name, help=help, description=description or help, epilog=EXAMPLES[name],
                          formatter_class=argparse.RawDescriptionHelpFormatter)


def _device_argument(parser: argparse.ArgumentParser, default: str | None = "cpu") -> None:
    parser.add_argument("--device", default=default,
                        help="cpu (default), cuda or cuda:N" if default else
                             "cpu (default), cuda, cuda:N; with --ray the default uses GPUs when the cluster has them")


def _input_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--image-size", type=int, metavar="PIXELS",
                        help="input side in pixels (default: the model's recorded input contract, else its patch grid)")
    parser.add_argument("--channel-order", choices=CHANNEL_ORDERS,
                        help=f"channel order the model expects (default: its recorded input contract, else "
                             f"{DEFAULT_CHANNEL_ORDER}; the official FIQA scripts feed bgr)")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vitfiqa", description="Face image quality from a ViT's own attention and tokens",
                                epilog="examples:\n  vitfiqa demo\n  vitfiqa score --images photos/ --out scores.csv\n"
                                       "  vitfiqa score --help",
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-q", "--quiet", action="store_true",
                   help="no progress bars or progress messages; warnings and errors only (goes before the command)")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = _subparser(sub, "score", "score a folder or list of images (resumable results table)")
    s.add_argument("--model", metavar="MODEL.pt",
                   help="TorchScript ViT (default: the embedded stand-in, trained on synthetic faces: its scores of "
                        "real photos are not meaningful); for a baseline, its recogniser as a TorchScript file")
    from .sources import preset_names

    s.add_argument("--preset", help=f"an official ViT architecture ({', '.join(preset_names())}), or for a baseline "
                                    "its published network (vitfiqa.baselines.PRESETS, e.g. crfiqa_l, magface_r100); "
                                    "with --checkpoint")
    s.add_argument("--checkpoint", metavar="FILE",
                   help="with --preset: the official checkpoint file (read as weights only)")
    s.add_argument("--images", required=True, metavar="DIR|LIST",
                   help=f"folder (searched recursively) or text file of image paths, one a line (relative to the "
                        f"file's folder); image types: {' '.join(sorted(IMAGE_EXTENSIONS))}")
    _config_arguments(s)
    s.add_argument("--out", required=True, metavar="FILE|DIR",
                   help="results: scores.csv or scores.parquet (resumable table kept in scores.csv.table/, the file "
                        "written when all images are done), or a folder without extension or ending in .table "
                        "(the table alone); same with --ray")
    s.add_argument("--heatmaps", metavar="DIR", help="write per-image heatmaps here, named after each image's path "
                                                     "relative to the folder all images share")
    s.add_argument("--heatmap-format", choices=("png", "npy"), default="png",
                   help="png: overlay on the model-input image (default); npy: raw float32 heatmap")
    _device_argument(s, default=None)
    s.add_argument("--dtype", default="float32", choices=("float32", "float16", "bfloat16"),
                   help="model precision (default float32; float16 for GPUs)")
    s.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE,
                   help=f"images per batch (default {DEFAULT_BATCH_SIZE})")
    s.add_argument("--workers", type=int, help="image decoding threads (default: min(8, cores))")
    _input_arguments(s)
    s.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS,
                   help=f"skip (with the reason in the table) images larger than this many pixels, read from the "
                        f"header before decoding (default {DEFAULT_MAX_PIXELS:,}; 0: no limit at all, Pillow's "
                        f"included)")
    s.add_argument("--overwrite", action="store_true", help="start again instead of resuming")
    s.add_argument("--detect", action="store_true",
                   help="raw photos: find faces with the bundled YuNet detector, align each photo's primary face (the "
                        "confident one nearest the centre) to the 112x112 ArcFace template, then score; the table "
                        "gets the box, landmarks, confidence and inter-eye distance (see docs/photos.md)")
    s.add_argument("--all-faces", action="store_true",
                   help="with --detect: score every confident face, one row each named <image>#<k>")
    s.add_argument("--landmarks", metavar="FILE",
                   help="align by this landmark file instead of detecting (lines 'name x1 y1 ... x5 y5 score', the "
                        "IJB-C layout; name: the image's path relative to --images, or its file name)")
    s.add_argument("--ray", nargs="?", const="", metavar="ADDRESS",
                   help="score on Ray: a new local cluster, or the cluster at ADDRESS ('auto', 'ray://host:10001')")
    s.add_argument("--actors", type=int, help="with --ray: scoring actors (default: one per GPU, else per 2 CPUs)")
    _final_norm_argument(s)
    s.set_defaults(fn=cmd_score)

    e = _subparser(sub, "evaluate", "pAUC-EDC tables and plots on an insightface .bin benchmark")
    e.add_argument("--model", required=True, metavar="MODEL.pt", help="quality model: a TorchScript ViT")
    e.add_argument("--fr-model", metavar="FR.pt",
                   help="comparison (FR) model, any TorchScript CNN or ViT; default: the quality model")
    e.add_argument("--flip", choices=("concat", "sum", "none"), default="concat",
                   help="flip test: concat (CR-FIQA: [normalised original, normalised flip]; default), sum, none")
    e.add_argument("--bin", required=True, metavar="FILE.bin",
                   help="insightface verification benchmark (.bin: images and pair labels), e.g. lfw.bin")
    _config_arguments(e)
    e.add_argument("--fmr", default="1e-3,1e-4", metavar="LIST",
                   help="comma-separated false-match rates at which the EDC is computed (default 1e-3,1e-4)")
    e.add_argument("--variant", choices=("refit", "crfiqa", "iso"), default="refit",
                   help="EDC variant: refit (CR-FIQA style; default), crfiqa (the CR-FIQA ERC code exactly), iso "
                        "(ISO/IEC 29794-1)")
    e.add_argument("--limit", type=float, default=0.3, metavar="FRACTION",
                   help="pAUC up to this discard fraction (default 0.3)")
    e.add_argument("--out", default="vitfiqa-eval", metavar="DIR",
                   help="output folder for pauc.csv, table.md, table.tex and the EDC plots (default vitfiqa-eval)")
    _device_argument(e)
    e.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE,
                   help=f"images per batch (default {DEFAULT_BATCH_SIZE})")
    _input_arguments(e)
    _final_norm_argument(e)
    e.set_defaults(fn=cmd_evaluate)

    r = _subparser(sub, "reproduce", "a paper's pAUC-EDC table from a TOML config: benchmarks x recognizers x "
                                     "quality methods (cached, resumable)")
    r.add_argument("config", help="TOML config (see docs/reproduce.md and vitfiqa.eval.reproduction)")
    r.add_argument("--out", metavar="DIR", help="output folder (default: the config's out)")
    r.set_defaults(fn=cmd_reproduce)

    i = _subparser(sub, "inspect", "what the capture found in a model: blocks, attention kind, final norm, input "
                                   "contract")
    i.add_argument("--model", metavar="MODEL.pt", help="TorchScript ViT (default: the embedded demo recogniser)")
    _device_argument(i)
    _final_norm_argument(i)
    i.set_defaults(fn=cmd_inspect)

    d = _subparser(sub, "demo", "controlled-degradation study with the embedded demo models (HTML + Markdown report)")
    d.add_argument("--out", default="vitfiqa-demo", metavar="DIR", help="report folder (default vitfiqa-demo)")
    d.add_argument("--identities", type=int, default=150, help="held-out synthetic identities (default 150)")
    d.add_argument("--samples", type=int, default=4, help="renders per identity (default 4)")
    d.add_argument("--recognizer", metavar="MODEL.pt", help="recogniser (default: the embedded demo recogniser)")
    d.add_argument("--quality-model", metavar="MODEL.pt",
                   help="ViT-FIQA quality model (default: the embedded demo ViT-FIQA model)")
    d.set_defaults(fn=cmd_demo)

    t = _subparser(sub, "train-demo", "retrain the two demo models on synthetic faces (resumable)")
    t.add_argument("--work-dir", default="vitfiqa-train-demo", metavar="DIR",
                   help="checkpoints and renders (default vitfiqa-train-demo); re-run to resume")
    where = t.add_mutually_exclusive_group()
    where.add_argument("--out-dir", "--out", dest="out_dir", default=None, metavar="DIR",
                       help=f"folder for the two exported models (default {DEFAULT_TRAIN_OUT})")
    where.add_argument("--install", action="store_true",
                       help="write the models over the ones installed inside the package (what vitfiqa demo and "
                            "score use by default)")
    t.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    from .demo import DemoConfig

    for name, value in DemoConfig().__dict__.items():
        t.add_argument("--" + name.replace("_", "-"), type=type(value), help=f"DemoConfig.{name} (default {value})")
    t.set_defaults(fn=cmd_train_demo)
    return p


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"vitfiqa: warning: {message}", file=sys.stderr)


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="vitfiqa: %(message)s")
    if args.command in ("score", "evaluate", "reproduce", "demo", "train-demo"):
        from .malloc import keep_freed_memory

        keep_freed_memory()
    import warnings

    try:
        with warnings.catch_warnings():
            warnings.showwarning = _show_warning
            return args.fn(args)
    except (CLIError, FileNotFoundError, ValueError, TypeError, IndexError, RuntimeError, ImportError) as exc:
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        _close_progress_bars()
        print(f"vitfiqa: error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        _close_progress_bars()
        print("vitfiqa: interrupted (re-run the same command to resume)", file=sys.stderr)
        return 130


def _close_progress_bars() -> None:
    """Close every progress bar still drawn (a stage that raised left it open), so that an error message starts
    on a line of its own instead of sharing the bar's."""
    try:
        from tqdm.std import tqdm
    except ImportError:
        return
    for bar in list(getattr(tqdm, "_instances", ())):
        try:
            bar.close()
        except Exception:  # a bar of a broken stream: nothing left to tidy
            pass


if __name__ == "__main__":
    sys.exit(main())
