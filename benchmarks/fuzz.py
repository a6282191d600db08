"""Coverage-guided fuzzing (atheris / libFuzzer) of everything that reads files a user may get from elsewhere.

    pip install 'vitfiqa[fuzz]'
    python benchmarks/fuzz.py --seconds 120                 # every target, 120 s each, one process per target
    python benchmarks/fuzz.py --target image --seconds 600  # one target

Targets and the only exceptions each may raise (anything else, or a hard crash, is a finding):

- ``bin``: ``vitfiqa.eval.load_bin`` on a fuzzed insightface ``.bin`` -> CorruptEntry (UnsafeBinFile included)
- ``pairs``: ``load_pair_list`` (image list + ``i j label`` pairs) and ``load_lfw_pairs`` -> CorruptEntry,
  ValueError (pair indices outside the image list)
- ``ijbc``: ``load_ijbc_meta`` on fuzzed face/template and template-pair files -> CorruptEntry
- ``image``: ``vitfiqa.preprocess.read_image`` on fuzzed image bytes (seeds: PNG 8/16 bit, JPEG, TIFF I/F,
  BMP, GIF, WebP) -> ValueError
- ``model``: ``vitfiqa.load`` on a small TorchScript file truncated, overwritten at fuzzed offsets, or replaced
  by fuzzed bytes, then scoring one image if it loads -> ValueError, RuntimeError (a model whose graph the
  capture refuses)

An unexpected exception is recorded (first input per distinct type + location saved under
``benchmarks/results/fuzz/<target>/``, with the full logs; not kept in git) and fuzzing goes on, so one run
reports every distinct finding; a hard crash ends the target's run and libFuzzer writes its input there too.
The summary (executions, coverage, findings per target) goes to ``benchmarks/results/fuzz.md`` (one target:
``fuzz_<target>.md``). Not part of CI.
"""
from __future__ import annotations

import argparse
import hashlib
import io
import os
import re
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
TARGETS = ("bin", "pairs", "ijbc", "image", "model")


# -- seeds: valid inputs of each kind, written here ------------------------------------------------------------
def _tiny_images() -> dict[str, bytes]:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    out = {}
    for fmt, kwargs in (("PNG", {}), ("JPEG", {"quality": 80}), ("BMP", {}), ("GIF", {}), ("WEBP", {}),
                        ("TIFF", {})):
        buf = io.BytesIO()
        Image.fromarray(rgb).save(buf, format=fmt, **kwargs)
        out[fmt.lower()] = buf.getvalue()
    for name, im in (("png16", Image.fromarray((rng.integers(0, 65536, (8, 8))).astype(np.uint16))),
                     ("tiff_i", Image.fromarray(rng.integers(-5, 70000, (8, 8)).astype(np.int32), mode="I")),
                     ("tiff_f", Image.fromarray(rng.random((8, 8)).astype(np.float32), mode="F")),
                     ("png_la", Image.fromarray(rng.integers(0, 256, (8, 8, 2), dtype=np.uint8), mode="LA")),
                     ("png_p", Image.fromarray(rgb).convert("P"))):
        buf = io.BytesIO()
        im.save(buf, format="TIFF" if name.startswith("tiff") else "PNG")
        out[name] = buf.getvalue()
    return out


def _seeds(target: str) -> list[bytes]:
    import pickle

    import numpy as np

    imgs = _tiny_images()
    if target == "bin":
        pics = [imgs["png"], imgs["jpeg"]] * 2
        return [pickle.dumps((pics, [True, False]), protocol=p) for p in (2, 4, 5)] + \
               [pickle.dumps((tuple(pics), np.array([True, False])), protocol=p) for p in (2, 5)]
    if target == "pairs":
        return [b"a.png\nb.png\nc.png\n\x00" + b"0 1 1\n1 2 0\n", b"3\nAnn 1 2\nAnn 1 Bob 1\n\x01a\x00"]
    if target == "ijbc":
        return [b"1.jpg 10 100\n2.jpg 10 100\n3.jpg 20 200\n\x0010 20 0\n10 10 1\n"]
    if target == "image":
        return list(imgs.values())
    if target == "model":
        return [b"\x00\x00\x00\x00", b"\x01\x00\x00\x10\x00\x00", b"\x02PK\x03\x04"]
    raise ValueError(target)


def _model_bytes() -> bytes:
    import warnings

    import torch

    from vitfiqa.models import FaceViT

    torch.manual_seed(0)
    m = FaceViT(img_size=16, patch_size=8, embed_dim=16, depth=2, num_heads=2, mlp_ratio=1.0, num_features=8).eval()
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.script(m), buf)
    return buf.getvalue()


# -- harnesses ------------------------------------------------------------------------------------------------
class Findings:
    def __init__(self, target: str):
        self.dir = RESULTS / "fuzz" / target
        self.seen: dict[str, int] = {}

    def record(self, data: bytes, exc: BaseException) -> None:
        tb = traceback.extract_tb(exc.__traceback__)
        where = f"{Path(tb[-1].filename).name}:{tb[-1].lineno}" if tb else "?"
        sig = f"{type(exc).__name__} at {where}"
        self.seen[sig] = self.seen.get(sig, 0) + 1
        if self.seen[sig] == 1:
            self.dir.mkdir(parents=True, exist_ok=True)
            name = hashlib.sha1(data).hexdigest()[:12]
            (self.dir / f"finding-{name}.bin").write_bytes(data)
            (self.dir / f"finding-{name}.txt").write_text(f"{sig}\n\n" + "".join(traceback.format_exception(exc)))
            print(f"FINDING {sig}: {str(exc)[:200]!r} -> {self.dir / ('finding-' + name)}.bin", flush=True)


def _instrument(atheris, prefixes: tuple[str, ...]) -> int:
    """Coverage instrumentation of every function of the loaded modules under ``prefixes`` (and their classes'
    methods). Done by hand: atheris.instrument_imports skips modules imported by a custom loader, which is how
    an editable install imports vitfiqa."""
    import inspect
    import types

    done = set()

    def visit(fn) -> None:
        if isinstance(fn, (staticmethod, classmethod)):
            fn = fn.__func__
        if isinstance(fn, property):
            for f in (fn.fget, fn.fset, fn.fdel):
                if f is not None:
                    visit(f)
            return
        if isinstance(fn, types.FunctionType) and id(fn) not in done:
            done.add(id(fn))
            try:
                atheris.instrument_func(fn)
            except Exception:  # a function atheris cannot rewrite stays uninstrumented
                pass

    for name, mod in list(sys.modules.items()):
        if mod is None or not name.split(".")[0] in prefixes:
            continue
        for obj in list(vars(mod).values()):
            if getattr(obj, "__module__", None) != name:
                continue
            if inspect.isclass(obj):
                for member in list(vars(obj).values()):
                    visit(member)
            else:
                visit(obj)
    return len(done)


def make_harness(target: str, workdir: Path):
    import atheris

    import PIL.Image
    import PIL.ImageFile  # noqa: F401

    import vitfiqa
    from vitfiqa.eval import CorruptEntry, load_bin, load_ijbc_meta, load_lfw_pairs, load_pair_list
    from vitfiqa.preprocess import read_image

    PIL.Image.init()  # import every format plugin now, so that it is instrumented below
    _instrument(atheris, ("vitfiqa", "PIL"))

    findings = Findings(target)
    split = lambda data: data.split(b"\x00", 1) if b"\x00" in data else (data, b"")  # noqa: E731

    if target == "bin":
        path = workdir / "x.bin"

        def run(data: bytes):
            path.write_bytes(data)
            try:
                ds = load_bin(path)
                for i in range(min(len(ds), 2)):
                    try:
                        ds.load(i)
                    except CorruptEntry:
                        pass
            except CorruptEntry:
                pass
    elif target == "pairs":
        def run(data: bytes):
            images, pairs = split(data)
            (workdir / "image_path_list.txt").write_bytes(images)
            (workdir / "pair_list.txt").write_bytes(pairs)
            for call in (lambda: load_pair_list(workdir), lambda: load_lfw_pairs(workdir, workdir / "pair_list.txt")):
                try:
                    call()
                except (CorruptEntry, ValueError) as exc:
                    if type(exc) not in (CorruptEntry, ValueError):
                        raise
    elif target == "ijbc":
        def run(data: bytes):
            faces, pairs = split(data)
            (workdir / "ijbc_face_tid_mid.txt").write_bytes(faces)
            (workdir / "ijbc_template_pair_label.txt").write_bytes(pairs)
            try:
                load_ijbc_meta(workdir)
            except CorruptEntry:
                pass
    elif target == "image":
        def run(data: bytes):
            try:
                out = read_image(data)
                assert out.dtype.name == "uint8" and out.ndim == 3 and out.shape[2] == 3, out.shape
            except ValueError as exc:
                if type(exc) is not ValueError:
                    raise
    elif target == "model":
        import torch

        seed = _model_bytes()
        x = torch.zeros(1, 3, 16, 16)

        def run(data: bytes):
            fdp = atheris.FuzzedDataProvider(data)
            mode = fdp.ConsumeIntInRange(0, 2)
            if mode == 0:  # truncated at any byte
                blob = seed[:fdp.ConsumeIntInRange(0, len(seed) - 1)]
            elif mode == 1:  # a few bytes overwritten anywhere
                blob = bytearray(seed)
                for _ in range(fdp.ConsumeIntInRange(1, 8)):
                    pos = fdp.ConsumeIntInRange(0, len(seed) - 1)
                    blob[pos] = fdp.ConsumeIntInRange(0, 255)
                blob = bytes(blob)
            else:
                blob = fdp.ConsumeBytes(fdp.remaining_bytes())
            try:
                m = vitfiqa.load(blob, vitfiqa.ModelOptions(image_size=(16, 16)))
                m.score(x, methods=("attn", "vitnt"), preprocess=False)
            except (ValueError, RuntimeError) as exc:
                if type(exc) not in (ValueError, RuntimeError):
                    raise
    else:
        raise ValueError(target)

    def test_one(data: bytes):
        try:
            run(data)
        except Exception as exc:  # a finding: recorded, and fuzzing goes on
            findings.record(data, exc)

    return test_one


def fuzz_one(target: str, seconds: int) -> None:
    """Runs in its own process (libFuzzer exits when its time is up)."""
    import atheris

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        work = tmp / "work"
        work.mkdir()
        test_one = make_harness(target, work)  # first: vitfiqa and Pillow must be imported under instrumentation
        corpus = tmp / "corpus"
        corpus.mkdir()
        for i, seed in enumerate(_seeds(target)):
            (corpus / f"seed{i}").write_bytes(seed)
        artifacts = RESULTS / "fuzz" / target
        artifacts.mkdir(parents=True, exist_ok=True)
        max_len = max(len(s) for s in _seeds(target)) * 2 + 64
        atheris.Setup([sys.argv[0], f"-max_total_time={seconds}", f"-max_len={max_len}", "-print_final_stats=1",
                       f"-artifact_prefix={artifacts}/", "-rss_limit_mb=4096", "-timeout=60", str(corpus)], test_one)
        atheris.Fuzz()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--target", choices=TARGETS + ("all",), default="all")
    p.add_argument("--seconds", type=int, default=120, help="fuzzing time per target")
    p.add_argument("--in-process", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.in_process:
        fuzz_one(args.target, args.seconds)
        return 0
    rows = []
    for target in (TARGETS if args.target == "all" else (args.target,)):
        t0 = time.time()
        proc = subprocess.run([sys.executable, __file__, "--in-process", "--target", target,
                               "--seconds", str(args.seconds)], capture_output=True, text=True)
        log = proc.stdout + proc.stderr
        (RESULTS / "fuzz").mkdir(parents=True, exist_ok=True)
        (RESULTS / "fuzz" / f"{target}.log").write_text(log)
        runs = re.findall(r"stat::number_of_executed_units:\s*(\d+)", log)
        cov = re.findall(r"\bcov: (\d+)", log)
        findings = sorted(set(re.findall(r"^FINDING (.+?):", log, flags=re.M)))
        hard = "==ERROR" in log or "deadly signal" in log or (proc.returncode not in (0,) and not runs)
        rows.append((target, int(runs[-1]) if runs else 0, int(cov[-1]) if cov else 0, time.time() - t0, findings,
                     hard, proc.returncode))
        print(f"{target}: {rows[-1][1]} executions, coverage {rows[-1][2]}, {len(findings)} finding(s)"
              f"{', HARD CRASH' if hard else ''}", flush=True)
        for f in findings:
            print(f"   {f}")
    lines = [f"#### Fuzzing ({args.seconds} s per target, atheris {_version('atheris')}, Pillow {_version('pillow')}, "
             f"torch {_version('torch')})", "",
             "| target | executions | coverage (edges) | distinct findings | hard crash |", "|---|---|---|---|---|"]
    for target, runs, cov, secs, findings, hard, rc in rows:
        lines.append(f"| {target} | {runs:,} | {cov} | {'; '.join(findings) or 'none'} | {'yes' if hard else 'no'} |")
    text = "\n".join(lines) + "\n"
    print(text)
    (RESULTS / ("fuzz.md" if args.target == "all" else f"fuzz_{args.target}.md")).write_text(text)
    return 1 if any(r[4] or r[5] for r in rows) else 0


def _version(dist: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return "?"


if __name__ == "__main__":
    sys.exit(main())
